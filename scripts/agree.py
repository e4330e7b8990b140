"""Rule agree: classifier vs human (or oracle) labels for one category.

Inputs: ``human`` (labels file), ``model`` (classified/{category}.json). Params: ``agreement``
({n_boot, seed}). Outputs: ``json`` (labels/agreement/{category}.json), ``csv`` (merged table).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.labels.agreement import agreement, write_merged_csv
    from saeflow.core.io import write_json

    cfg = snakemake.params.agreement
    metrics, merged = agreement(
        snakemake.input.human, snakemake.input.model, cfg["n_boot"], cfg["seed"]
    )
    write_merged_csv(snakemake.output.csv, merged)
    write_json(snakemake.output.json, metrics, cfg)


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
