"""Rule dashboard_pages: one SAE's latent pages (HTML + JSON) and its index.

Inputs: ``latents`` (dashboards/latents.json), ``codes`` and ``activations`` of the
dashboards' prompt set, ``model`` (toy) and ``saes`` (the hook's SAE; none for pretrained),
and for the labelled SAE ``descriptions`` and ``classified``. Params: ``model``, ``sae``,
``hooks`` (the one hook), ``dashboards``, ``prompt_set``, ``label_hook``. Output: ``pages``
(results/{experiment}/dashboards/{hook}/).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.core.bundle import ModelSAEs
    from saeflow.latents.stage import dashboard_pages_stage

    dashboard_pages_stage(
        ModelSAEs.from_rule(snakemake),
        dict(snakemake.input.items()),
        snakemake.params.dashboards,
        snakemake.params.prompt_set,
        snakemake.output.pages,
        snakemake.params.label_hook,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
