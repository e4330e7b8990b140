"""Rule toy_world: sample the toy corpus, train its tokenizer, write prompt sets and ground truth.

Params: ``world``, ``seed``. Outputs: ``prompts`` (prompts/{train,heldout_seen,heldout_unseen,
pairs}.jsonl), ``tokenizer`` (tokenizer/), ``truth`` (truth.json).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.toy.world import toy_world_stage

    toy_world_stage(
        snakemake.params.world,
        snakemake.params.seed,
        list(snakemake.output.prompts),
        snakemake.output.tokenizer,
        snakemake.output.truth,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
