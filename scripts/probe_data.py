"""Rule probe_data: build one probe dataset file (saeflow.probe.strategies.probe_data_stage).

Inputs: ``activations``, ``codes`` (absent for strategies that need no codes), optional
``model_correct``. Params: ``dataset``, ``options`` (hook_template, n_folds, the config key
and prompt file errors name), ``config``. Output:
``dataset`` (results/{experiment}/probe/data/{prompt_set}/{dataset}.h5).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.probe.strategies import probe_data_stage

    probe_data_stage(
        snakemake.params.dataset,
        snakemake.input.activations,
        getattr(snakemake.input, "codes", None),
        snakemake.output[0],
        model_correct=getattr(snakemake.input, "model_correct", None),
        options=snakemake.params.options,
        config=snakemake.params.config,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
