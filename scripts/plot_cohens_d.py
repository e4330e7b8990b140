"""Rule plot_cohens_d: figure cohens_d.png, distribution of Cohen's d per dataset
(saeflow.probe.plots.plot_cohens_d).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.probe.effects import read_effect_arrays
    from saeflow.probe.plots import plot_cohens_d

    plot_cohens_d(
        [read_effect_arrays(path) for path in snakemake.input.arrays], snakemake.output[0]
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
