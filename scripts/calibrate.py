"""Rule calibrate: the false-positive rate or coverage of every p-value and interval saeflow
reports, on null or planted data.

Params: ``calibration`` (config["calibration"]: scale, seed). Outputs: ``summary``
(results/{experiment}/calibration/summary.json), ``table`` (its Markdown, table.md, the
table docs/validation.md quotes).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.calibration import calibrate_stage

    calibrate_stage(
        snakemake.params.calibration,
        snakemake.output.summary,
        snakemake.output.table,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
