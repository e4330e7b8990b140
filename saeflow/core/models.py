"""Loading the language model every stage runs: the pipeline's toy model or a pretrained one.

``load_model`` is the one entry point. Pretrained weights come from the Hugging Face hub
through TransformerLens; when the hub is unreachable we fail at once (see :mod:`saeflow.core.hub`)
rather than after a long retry loop, unless the weights are already in the local cache.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from saeflow.core.errors import InputError


def pad_batch(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists: ``tokens [b, T_max]`` and ``lengths [b]``.

    Right padding is safe for a causal model: no real position attends to a pad.
    """
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    tokens = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    for i, seq in enumerate(sequences):
        tokens[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return tokens, lengths


def tokenize_prompt_set(tokenizer: Any, records: list[dict[str, Any]], source: str = "prompts"
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``tokens [n, T]`` (right-padded), ``lengths [n]`` and one-token ``answers [n]`` (None
    unless every record has an answer) for a prompt set."""
    from saeflow.core.io import line_of
    from saeflow.core.prompts import answer_token_id, encode_prompt

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens, lengths = pad_batch([encode_prompt(tokenizer, r["text"]) for r in records], pad_id)
    answers = None
    if all("answer" in r for r in records):
        answers = torch.tensor([answer_token_id(tokenizer, r["answer"], source, line_of(records, i))
                                for i, r in enumerate(records)], dtype=torch.long)
    return tokens, lengths, answers


def load_toy_model(directory: str | Path, device: str = "cpu") -> HookedTransformer:
    """Rebuild the toy ``HookedTransformer`` (with its tokenizer) from the directory
    :func:`saeflow.toy.train.save_toy_model` writes."""
    from transformers import PreTrainedTokenizerFast

    directory = Path(directory)
    if not (directory / "model.pt").exists():
        raise InputError(directory / "model.pt", "<file>", "missing: train the toy model first")
    raw = json.loads((directory / "config.json").read_text())
    known = set(HookedTransformerConfig.__dataclass_fields__)
    cfg = HookedTransformerConfig(**{k: v for k, v in raw.items() if k in known and k != "device"},
                                  device=device)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory / "tokenizer"))
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    model.load_state_dict(torch.load(directory / "model.pt", map_location=device, weights_only=True))
    return model.eval()


def load_pretrained_model(name: str, device: str = "cpu", dtype: str = "float32") -> HookedTransformer:
    """A pretrained model through TransformerLens, with no weight processing (Gemma Scope
    SAEs were trained on the unprocessed residual stream)."""
    from saeflow.core.hub import hub_access

    with hub_access(name, "model.name"):
        model = HookedTransformer.from_pretrained_no_processing(
            name, device=device, dtype=getattr(torch, dtype))
    return model.eval()


def load_model(model_cfg: dict[str, Any], model_dir: str | Path | None,
               device: str = "cpu") -> HookedTransformer:
    """The model a config describes: ``source: toy`` reads ``model_dir``; ``pretrained`` the hub."""
    if model_cfg["source"] == "toy":
        if model_dir is None:
            raise InputError("config", "model.source", "toy models need a trained model dir")
        return load_toy_model(model_dir, device)
    if model_cfg["source"] == "pretrained":
        return load_pretrained_model(model_cfg["name"], device, model_cfg["dtype"])
    raise InputError("config", "model.source", f"unknown source {model_cfg['source']!r}")


def require_hooks(model: HookedTransformer, hooks: Sequence[str], field: str,
                  source: str = "config") -> None:
    """Every name in ``hooks`` is a hook point of ``model``; else one line naming the field."""
    for name in hooks:
        if name not in model.hook_dict:
            raise InputError(source, field, f"model has no hook {name!r} (it has "
                             f"{model.cfg.n_layers} layers, blocks.0 to "
                             f"blocks.{model.cfg.n_layers - 1})")


def answer_logits(model: HookedTransformer, tokens: torch.Tensor,
                  lengths: torch.Tensor) -> torch.Tensor:
    """Logits at each prompt's final real token: ``[b, d_vocab]`` from ``tokens [b, T]``."""
    logits = model(tokens.to(model.cfg.device))
    return logits[torch.arange(tokens.shape[0]), lengths.to(logits.device) - 1]


def hook_widths(model: HookedTransformer, hooks: Sequence[str]) -> dict[str, int]:
    """Each hook's activation width, found by one tiny forward pass: ``[b, T, d]`` hooks, and
    per-head hooks ``[b, T, heads, d_head]`` (``attn.hook_z``) stored flat, ``heads * d_head``
    wide, the layout sae-lens's attention SAEs are trained and applied on."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(act: torch.Tensor, hook: Any) -> None:
        shapes[hook.name] = tuple(act.shape)

    model.run_with_hooks(torch.zeros(1, 1, dtype=torch.long, device=model.cfg.device),
                         return_type=None, fwd_hooks=[(name, record) for name in hooks])
    for name, shape in shapes.items():
        if len(shape) not in (3, 4):
            raise InputError("config", "extraction.hooks", f"hook {name!r} has shape {shape}; "
                             "only [batch, pos, d] and [batch, pos, heads, d_head] hooks are stored")
    return {name: int(np.prod(shapes[name][2:])) for name in hooks}
