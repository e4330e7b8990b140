"""Train the toy HookedTransformer on the error-type task: loss on the answer token only."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm
from transformer_lens import HookedTransformer

from saeflow.core.errors import InputError
from saeflow.core.models import answer_logits, tokenize_prompt_set, toy_model_config

log = logging.getLogger(__name__)


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


@torch.no_grad()
def evaluate(model: HookedTransformer, data: EncodedSet, batch_size: int = 256) -> dict[str, float]:
    """Answer accuracy and mean answer-token loss over a prompt set."""
    correct, loss, n = 0, 0.0, len(data.lengths)
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        width = int(data.lengths[sl].max())
        logits = answer_logits(model, data.tokens[sl, :width], data.lengths[sl]).cpu()
        correct += int((logits.argmax(-1) == data.answers[sl]).sum())
        loss += float(torch.nn.functional.cross_entropy(logits, data.answers[sl], reduction="sum"))
    return {"accuracy": correct / n, "answer_loss": loss / n, "n": n}


def train_toy_model(tokenizer, train: EncodedSet, model_cfg: dict[str, Any], train_cfg: dict[str, Any],
                    seed: int, device: str = "cpu") -> tuple[HookedTransformer, list[float]]:
    """AdamW on the answer-token cross-entropy; returns the model and the per-step losses."""
    torch.manual_seed(seed)
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
        logits = answer_logits(model, train.tokens[idx, :width], train.lengths[idx])
        loss = torch.nn.functional.cross_entropy(logits, train.answers[idx].to(logits.device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss))
    model.eval()
    return model, losses
