"""Rule extract (and extract_shard): run the model over one prompt set (or one shard of it,
wildcard ``shard``) and store hook activations in HDF5.

Inputs: ``prompts`` (the prompt set, JSONL), toy only: ``model``. Params: ``extraction``,
``model``, ``device``. Output: ``acts`` (results/{experiment}/activations/{prompt_set}.h5,
or .../{prompt_set}.shards/{shard}.h5).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.core.bundle import ModelSAEs
    from saeflow.extract import extract_stage

    extract_stage(
        ModelSAEs.from_rule(snakemake),
        snakemake.input.prompts,
        snakemake.params.extraction,
        snakemake.params.device,
        snakemake.output.acts,
        shard=int(snakemake.wildcards.shard) if hasattr(snakemake.wildcards, "shard") else None,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
