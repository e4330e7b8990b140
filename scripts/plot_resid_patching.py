"""Rule plot_resid_patching. Figure: residual patching heatmap (layer x position)."""

from saeflow.core.runtime import rule_main


def body(smk) -> None:
    from saeflow.patch.plots import plot_resid_patching

    plot_resid_patching(smk.input.resid, smk.output.png)


rule_main(body, snakemake)  # noqa: F821
