"""Rule train_sae: train one sae-lens SAE on a hook of the toy model (offline, wandb off).

Inputs: model/, prompts/train.jsonl. Output: sae/{hook}/ in sae-lens's own format.
"""

from pathlib import Path

from saeflow.core.io import read_jsonl, write_json
from saeflow.core.models import load_model
from saeflow.core.runtime import resolve_device, rule_main, seed_everything
from saeflow.core.saes import train_sae
from saeflow.toy.train import encode_set


def body(snakemake):
    seed_everything(snakemake.params.seed)
    device = resolve_device(snakemake.params.device)
    model = load_model({"source": "toy"}, snakemake.input.model, device)
    tokenizer = model.tokenizer
    sequences = encode_set(tokenizer, read_jsonl(snakemake.input.train)).tokens
    train_sae(
        model,
        snakemake.wildcards.hook,
        sequences,
        snakemake.params.sae,
        exclude_token_ids=[tokenizer.pad_token_id, tokenizer.bos_token_id],
        seed=snakemake.params.seed,
        device=device,
        out_dir=snakemake.output.sae,
    )
    write_json(
        Path(snakemake.output.sae) / "provenance.json",
        {"hook_name": snakemake.wildcards.hook},
        config={"sae": snakemake.params.sae, "seed": snakemake.params.seed},
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
