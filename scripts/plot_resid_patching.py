"""Rule plot_resid_patching: figure resid_patching.png, residual patching heatmap (layer x
position).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.patch.plots import plot_resid_patching_stage

    plot_resid_patching_stage(snakemake.input.resid, snakemake.output.png)


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
