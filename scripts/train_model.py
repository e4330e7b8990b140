"""Rule train_model: train the toy HookedTransformer on the error-type task (answer-token loss).

Inputs: prompts/train.jsonl, held-out prompt sets, tokenizer/. Output: model/ (weights,
config, tokenizer, metrics.json with accuracy per held-out prompt set).
"""

from pathlib import Path

from saeflow.core.io import read_jsonl, write_json
from saeflow.core.models import save_toy_model
from saeflow.core.runtime import resolve_device, rule_main, seed_everything
from saeflow.toy import train, world


def body(snakemake):
    seed_everything(snakemake.params.seed)
    device = resolve_device(snakemake.params.device)
    tokenizer = world.load_tokenizer(snakemake.input.tokenizer)
    train_set = train.encode_set(tokenizer, read_jsonl(snakemake.input.train))
    model_cfg = snakemake.params.model
    model, losses = train.train_toy_model(
        tokenizer, train_set, model_cfg, model_cfg["train"], snakemake.params.seed, device
    )
    metrics = {
        "device": device,
        "final_train_loss": sum(losses[-50:]) / min(50, len(losses)),
        "train_loss_curve": losses[:: max(1, len(losses) // 50)],
    }
    for path in snakemake.input.heldout:
        metrics[Path(path).stem] = train.evaluate(
            model, train.encode_set(tokenizer, read_jsonl(path))
        )
    save_toy_model(model, snakemake.output.model)
    write_json(
        Path(snakemake.output.model) / "metrics.json",
        metrics,
        config={"model": model_cfg, "seed": snakemake.params.seed},
    )


rule_main(body, snakemake)  # noqa: F821 - injected by Snakemake
