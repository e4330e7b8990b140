"""Rule train_model: train the toy HookedTransformer on the error-type task (answer-token loss).

Inputs: ``train`` (prompts/train.jsonl), ``heldout`` (held-out prompt sets), ``tokenizer``
(world/tokenizer/). Params: ``model``, ``seed``, ``device``. Output: ``model`` (model/: weights,
config, tokenizer, metrics.json with accuracy per held-out prompt set).
"""

from saeflow.core.runtime import rule_main


def body(snakemake):
    from saeflow.toy.train import train_model_stage

    train_model_stage(
        snakemake.input.tokenizer,
        snakemake.input.train,
        list(snakemake.input.heldout),
        snakemake.params.model,
        snakemake.params.seed,
        snakemake.params.device,
        snakemake.output.model,
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
