"""Rule dashboard_index: the dashboards' front page, each SAE's index and the circuit.

Inputs: ``pages`` (every SAE's dashboards/{hook}/ folder), ``circuit`` (patch/circuit.json,
where the study runs patching). Params: ``dashboards``. Output: ``index``
(results/{experiment}/dashboards/index.html).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.latents.stage import dashboard_index_stage

    dashboard_index_stage(
        list(snakemake.input.pages),
        snakemake.output.index,
        getattr(snakemake.input, "circuit", None),
        {"dashboards": snakemake.params.dashboards},
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
