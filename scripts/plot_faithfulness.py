"""Rule plot_faithfulness: figure faithfulness.png, faithfulness and completeness against circuit
size.
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.patch.plots import plot_faithfulness_stage

    plot_faithfulness_stage(snakemake.input.faithfulness, snakemake.output.png)


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
