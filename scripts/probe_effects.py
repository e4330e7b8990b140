"""Rule probe_effects: Cohen's d, permutation p, BH, top-k, localisation, toy check
(saeflow.probe.effects.run_effects)."""

from saeflow.core.runtime import rule_main


def body(sm):
    from saeflow.probe.effects import run_effects

    descriptions = getattr(sm.input, "descriptions", None)
    run_effects(sm.input.dataset, sm.output.json, sm.output.arrays, settings=sm.params.settings,
                positive_class=sm.params.positive_class, descriptions=descriptions or None,
                descriptions_hook=sm.params.descriptions_hook, fit_h5=sm.input.probe,
                informative_positions=sm.params.informative_positions, config=sm.params.config)


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
