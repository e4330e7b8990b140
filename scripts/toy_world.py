"""Rule toy_world: sample the toy corpus, train its tokenizer, write prompt sets and ground truth.

Outputs: prompts/{train,heldout_seen,heldout_unseen,pairs}.jsonl, tokenizer/, truth.json.
"""

from pathlib import Path

from saeflow.core.io import write_json, write_jsonl
from saeflow.core.runtime import rule_main
from saeflow.toy import world


def body(snakemake):
    cfg = world.WorldConfig.from_dict({**snakemake.params.world, "seed": snakemake.params.seed})
    prompt_sets = world.build_prompt_sets(cfg).prompt_sets
    texts = [r["text"] + r["answer"] for records in prompt_sets.values() for r in records]
    tokenizer = world.train_tokenizer(texts, cfg.vocab_size)
    world.save_tokenizer(tokenizer, snakemake.output.tokenizer)
    for records in prompt_sets.values():
        world.add_token_positions(tokenizer, records)
    for path in snakemake.output.prompts:
        write_jsonl(path, prompt_sets[Path(path).stem])
    truth = world.ground_truth(
        tokenizer, world.pair_difference_positions(tokenizer, prompt_sets["pairs"])
    )
    write_json(snakemake.output.truth, truth, config={"world": snakemake.params.world})


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
