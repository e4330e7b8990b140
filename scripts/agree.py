"""Rule agree: classifier vs human (or oracle) labels for one category.

Inputs: ``human`` (labels file), ``model`` (classified/{category}.json). Params: ``agreement``
({n_boot, seed}). Outputs: ``json`` (labels/agreement/{category}.json), ``csv`` (merged table).
"""

from saeflow.core.runtime import rule_main


def body(smk) -> None:
    from saeflow.labels.agreement import agreement, write_merged_csv
    from saeflow.core.io import write_json

    cfg = smk.params.agreement
    metrics, merged = agreement(smk.input.human, smk.input.model, cfg["n_boot"], cfg["seed"])
    write_merged_csv(smk.output.csv, merged)
    write_json(smk.output.json, metrics, cfg)


rule_main(body, snakemake)  # noqa: F821
