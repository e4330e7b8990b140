"""Rule plot_cohens_d: figure cohens_d.png, distribution of Cohen's d per dataset
(saeflow.probe.plots.plot_cohens_d_stage).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.probe.plots import plot_cohens_d_stage

    plot_cohens_d_stage(list(snakemake.input.arrays), snakemake.output[0])


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
