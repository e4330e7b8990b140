"""Rule plot_cohens_d: distribution of Cohen's d per dataset (saeflow.plots_probe.plot_cohens_d)."""

from saeflow.runtime import rule_main


def body(sm):
    from saeflow.effects import read_effect_arrays
    from saeflow.plots_probe import plot_cohens_d

    plot_cohens_d([read_effect_arrays(path) for path in sm.input.arrays], sm.output[0])


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
