"""Rule extract: run the model over one prompt set and store hook activations in HDF5.

Inputs: ``prompts`` (the prompt set, JSONL), toy only: ``model``. Params: ``extraction``,
``model``, ``device``. Output: ``acts`` (results/{experiment}/activations/{prompt_set}.h5).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.extract import extract_stage

    extract_stage(
        snakemake.params.model,
        snakemake.input.get("model"),
        snakemake.input.prompts,
        snakemake.params.extraction,
        snakemake.params.device,
        snakemake.output.acts,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
