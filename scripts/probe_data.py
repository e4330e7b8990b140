"""Rule probe_data: build one probe dataset file
(saeflow.probe.strategies.make_probe_dataset_file).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.probe.inputs import load_model_correct
    from saeflow.probe.strategies import make_probe_dataset_file

    codes = getattr(snakemake.input, "codes", None)  # absent for strategies that need no codes
    model_correct = getattr(snakemake.input, "model_correct", None)
    make_probe_dataset_file(
        snakemake.params.dataset,
        snakemake.input.activations,
        codes,
        snakemake.output[0],
        model_correct=load_model_correct(model_correct) if model_correct else None,
        hook_template=snakemake.params.hook_template,
        n_folds=snakemake.params.n_folds,
        config=snakemake.params.config,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
