"""Train the toy HookedTransformer on the error-type task: the answer token's loss plus the
next-token loss over the prompt (``model.train.next_token_weight``), so the model predicts
text and next-token ablation losses mean something."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig

from saeflow.core.errors import InputError
from saeflow.core.models import tokenize_prompt_set

log = logging.getLogger(__name__)


def toy_model_config(model_cfg: dict[str, Any], d_vocab: int, seed: int) -> HookedTransformerConfig:
    return HookedTransformerConfig(
        n_layers=model_cfg["n_layers"], d_model=model_cfg["d_model"], n_heads=model_cfg["n_heads"],
        d_head=model_cfg["d_model"] // model_cfg["n_heads"], d_mlp=4 * model_cfg["d_model"],
        n_ctx=model_cfg["n_ctx"], d_vocab=d_vocab, act_fn="gelu", normalization_type="LN",
        positional_embedding_type="standard", seed=seed, default_prepend_bos=False,
        model_name="saeflow-toy",
    )


def save_toy_model(model: HookedTransformer, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / "model.pt")
    cfg = {k: v for k, v in model.cfg.to_dict().items() if _is_plain(v)}
    (directory / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    model.tokenizer.save_pretrained(str(directory / "tokenizer"))


def _is_plain(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool, type(None), list, dict))


@dataclass(frozen=True)
class EncodedSet:
    """A prompt set ready for the model: ``tokens [n, T]``, ``lengths [n]``, ``answers [n]``."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    answers: torch.Tensor


def encode_set(tokenizer, records: list[dict[str, Any]], source: str = "prompts") -> EncodedSet:
    tokens, lengths, answers = tokenize_prompt_set(tokenizer, records, source)
    if answers is None:
        raise InputError(source, "answer", "every toy prompt needs a one-token answer")
    return EncodedSet(tokens, lengths, answers)


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor,
                    reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of each prompt token from the one before it (``logits [b, T, V]``),
    over real tokens only (``lengths``; the answer after the final token is not included)."""
    targets = tokens[:, 1:].to(logits.device)
    real = torch.arange(1, tokens.shape[1], device=logits.device)[None] < \
        lengths.to(logits.device)[:, None]
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets,
                                               reduction="none")[real]
    return losses.mean() if reduction == "mean" else losses.sum()


@torch.no_grad()
def evaluate(model: HookedTransformer, data: EncodedSet, batch_size: int = 256) -> dict[str, float]:
    """Answer accuracy, mean answer-token loss and mean next-token loss over a prompt set (the
    next-token loss of a uniform guess, ``log d_vocab``, beside it for scale)."""
    import math

    correct, loss, n = 0, 0.0, len(data.lengths)
    text_loss, n_tokens = 0.0, 0
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        width = int(data.lengths[sl].max())
        tokens, lengths = data.tokens[sl, :width], data.lengths[sl]
        full = model(tokens.to(model.cfg.device))
        logits = full[torch.arange(len(lengths)), lengths.to(full.device) - 1].cpu()
        correct += int((logits.argmax(-1) == data.answers[sl]).sum())
        loss += float(torch.nn.functional.cross_entropy(logits, data.answers[sl], reduction="sum"))
        text_loss += float(next_token_loss(full, tokens, lengths, reduction="sum"))
        n_tokens += int((lengths - 1).sum())
    return {"accuracy": correct / n, "answer_loss": loss / n,
            "next_token_loss": text_loss / max(n_tokens, 1),
            "uniform_next_token_loss": math.log(model.cfg.d_vocab), "n": n}


def train_toy_model(tokenizer, train: EncodedSet, model_cfg: dict[str, Any], train_cfg: dict[str, Any],
                    seed: int, device: str = "cpu") -> tuple[HookedTransformer, list[float]]:
    """AdamW on the answer-token cross-entropy plus ``next_token_weight`` x the next-token
    cross-entropy over the prompt; returns the model and the per-step losses."""
    torch.manual_seed(seed)
    weight = float(train_cfg["next_token_weight"])
    model = HookedTransformer(toy_model_config(model_cfg, len(tokenizer), seed), tokenizer=tokenizer,
                              default_padding_side="right").to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=train_cfg["lr"],
                                  weight_decay=train_cfg["weight_decay"])
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in tqdm(range(train_cfg["steps"]), desc="train toy model", mininterval=2.0):
        idx = torch.randint(len(train.lengths), (train_cfg["batch_size"],), generator=generator)
        width = int(train.lengths[idx].max())
        tokens, lengths = train.tokens[idx, :width], train.lengths[idx]
        full = model(tokens.to(device))
        logits = full[torch.arange(len(idx)), lengths.to(full.device) - 1]
        loss = torch.nn.functional.cross_entropy(logits, train.answers[idx].to(logits.device))
        if weight:
            loss = loss + weight * next_token_loss(full, tokens, lengths)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss))
    model.eval()
    return model, losses


def train_model_stage(tokenizer_dir: str | Path, train_path: str | Path,
                      heldout: list[str | Path], model_cfg: dict[str, Any], seed: int,
                      device: str, out_dir: str | Path) -> None:
    """Rule ``train_model``: seed, train on ``train_path`` (prompts/train.jsonl) with the
    tokenizer in ``tokenizer_dir``, evaluate each ``heldout`` prompt set (keyed by file stem),
    save the model to ``out_dir`` (model/) with ``metrics.json`` beside its weights."""
    from saeflow.core.io import read_jsonl, write_json
    from saeflow.core.runtime import resolve_device, seed_everything
    from saeflow.toy.world import load_tokenizer

    seed_everything(seed)
    device = resolve_device(device)
    tokenizer = load_tokenizer(tokenizer_dir)
    train_set = encode_set(tokenizer, read_jsonl(train_path))
    model, losses = train_toy_model(tokenizer, train_set, model_cfg, model_cfg["train"], seed,
                                    device)
    metrics = {
        "device": device,
        "final_train_loss": sum(losses[-50:]) / min(50, len(losses)),
        "train_loss_curve": losses[:: max(1, len(losses) // 50)],
    }
    for path in heldout:
        metrics[Path(path).stem] = evaluate(model, encode_set(tokenizer, read_jsonl(path)))
    save_toy_model(model, out_dir)
    write_json(Path(out_dir) / "metrics.json", metrics,
               config={"model": model_cfg, "seed": seed})
