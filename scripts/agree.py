"""Rule agree: classifier vs human (or oracle) labels for one category.

Inputs: ``human`` (labels file), ``model`` (classified/{category}.json). Params: ``agreement``
({n_boot, seed}). Outputs: ``json`` (labels/agreement/{category}.json), ``csv`` (merged table).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.agreement import agree_stage

    agree_stage(
        snakemake.input.human,
        snakemake.input.model,
        snakemake.params.agreement,
        snakemake.output.json,
        snakemake.output.csv,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
