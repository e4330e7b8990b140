"""Rule gather_activations: one prompt set's activation shards as one activations file.

Input: ``shards`` (activations/{prompt_set}.shards/*.h5, in order). Params: ``extraction``.
Output: ``acts`` (results/{experiment}/activations/{prompt_set}.h5, virtual over the shards).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.extract import gather_activations_stage

    gather_activations_stage(
        list(snakemake.input.shards),
        snakemake.output.acts,
        config={"extraction": snakemake.params.extraction},
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
