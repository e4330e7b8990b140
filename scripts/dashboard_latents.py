"""Rule dashboard_latents: the latents that get a dashboard page, each with why.

Inputs (each where the study runs its stage and dashboards.from names it): ``circuit``
(patch/circuit.json), ``effects`` (probe/effects/*/*.json), ``classified``
(labels/classified/*.json). Params: ``dashboards`` (config dashboards), ``hooks`` (the SAE
hooks), ``label_hook`` (labels.hook, or None). Output: ``latents``
(results/{experiment}/dashboards/latents.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.latents.selection import dashboard_latents_stage

    dashboard_latents_stage(
        snakemake.params.dashboards,
        dict(snakemake.input.items()),
        snakemake.params.hooks,
        snakemake.params.label_hook,
        snakemake.output.latents,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
