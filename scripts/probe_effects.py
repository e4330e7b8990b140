"""Rule probe_effects: Cohen's d, permutation p, BH, top-k, localisation, toy check
(saeflow.probe.effects_files.probe_effects_stage).

Inputs: ``dataset`` (probe/data), ``probe`` (the fit's HDF5, for the toy check's weights),
``descriptions`` (optional). Params: ``positive_class``, ``config`` (config["probe"]: its
``effects``, ``descriptions_hook`` and ``toy_check.informative_positions``). Outputs:
``json``, ``arrays`` (probe/effects).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.probe.effects_files import probe_effects_stage

    descriptions = getattr(snakemake.input, "descriptions", None)
    probe_effects_stage(
        snakemake.input.dataset,
        snakemake.output.json,
        snakemake.output.arrays,
        positive_class=snakemake.params.positive_class,
        descriptions=descriptions or None,
        fit_h5=snakemake.input.probe,
        config=snakemake.params.config,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
