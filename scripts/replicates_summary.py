"""Rule replicates_summary (toy only): every headline number as mean, SD and range over the
replicates.

Inputs: ``headlines`` (replicates/rep{i}/headline.json, in replicate order). Outputs:
``summary`` (results/{experiment}/replicates/summary.json), ``table`` (its Markdown,
replicates/table.md, the table docs/validation.md quotes).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.toy.replicates import replicates_summary_stage

    replicates_summary_stage(
        list(snakemake.input.headlines),
        snakemake.output.summary,
        snakemake.output.table,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
