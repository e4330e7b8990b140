"""Rule plot_faithfulness. Figure: faithfulness and completeness against circuit size."""

from saeflow.core.runtime import rule_main


def body(smk) -> None:
    from saeflow.patch.plots import plot_faithfulness

    plot_faithfulness(smk.input.faithfulness, smk.output.png)


rule_main(body, snakemake)  # noqa: F821
