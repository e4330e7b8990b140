"""Rule probe_effects: Cohen's d, permutation p, BH, top-k, localisation, toy check
(saeflow.probe.effects.run_effects).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.probe.effects import probe_effects_stage

    descriptions = getattr(snakemake.input, "descriptions", None)
    probe_effects_stage(
        snakemake.input.dataset,
        snakemake.output.json,
        snakemake.output.arrays,
        settings=snakemake.params.settings,
        positive_class=snakemake.params.positive_class,
        descriptions=descriptions or None,
        descriptions_hook=snakemake.params.descriptions_hook,
        fit_h5=snakemake.input.probe,
        informative_positions=snakemake.params.informative_positions,
        config=snakemake.params.config,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
