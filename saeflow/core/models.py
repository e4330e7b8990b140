"""Loading the language model every stage runs: the pipeline's toy model, a pretrained one,
or a local checkpoint folder.

``load_model`` is the one entry point. Pretrained weights come from the Hugging Face hub
through TransformerLens; when the hub is unreachable we fail at once (see :mod:`saeflow.core.hub`)
rather than after a long retry loop, unless the weights are already in the local cache. A local
checkpoint (``model.source: local``: a fine-tuned model's ``save_pretrained`` folder) loads
through TransformerLens's ``hf_model=`` path as the architecture ``model.name``, with the
folder's own tokenizer, after its config is checked against that architecture.
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


def load_local_model(name: str, path: str | Path, device: str = "cpu",
                     dtype: str = "float32") -> HookedTransformer:
    """A local checkpoint folder (config, weights, tokenizer) as TransformerLens architecture
    ``name``, through ``from_pretrained_no_processing(hf_model=...)`` (no weight processing,
    as pretrained models load) with the folder's tokenizer. A folder that lacks a part, or
    whose layers, widths or vocabulary disagree with the architecture, is one InputError."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from saeflow.core.hub import hub_access
    from saeflow.core.local_files import check_architecture, checkpoint_files

    checkpoint_files(path, "config")
    check_architecture(name, "config")
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True).to_dict()
    with hub_access(name, "model.name"):  # some architectures' configs come from the hub
        check_local_architecture(name, hf_config, len(tokenizer), str(path))
        hf_model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True,
                                                        dtype=getattr(torch, dtype))
        model = HookedTransformer.from_pretrained_no_processing(
            name, hf_model=hf_model, tokenizer=tokenizer, device=device,
            dtype=getattr(torch, dtype))
    del hf_model
    return model.eval()


def check_local_architecture(name: str, hf_config: dict[str, Any], n_tokens: int,
                             path: str) -> None:
    """The checkpoint's config (``hf_config``) has the layers, widths and vocabulary of
    TransformerLens's architecture ``name``, and its tokenizer (``n_tokens`` entries) fits the
    vocabulary; else one line naming the first figure that differs."""
    from transformer_lens.loading_from_pretrained import (get_official_model_name,
                                                          get_pretrained_model_config)

    from saeflow.core.local_files import checkpoint_dims

    arch = get_pretrained_model_config(get_official_model_name(name))
    theirs = {"n_layers": arch.n_layers, "d_model": arch.d_model, "n_heads": arch.n_heads,
              "d_vocab": arch.d_vocab}
    for key, ours in checkpoint_dims(hf_config).items():
        if ours != theirs[key]:
            raise InputError(f"{path}/config.json", key, f"{ours}, but architecture {name!r} "
                             f"(model.name, TransformerLens) has {key} {theirs[key]}: the "
                             "checkpoint is not of that architecture")
    vocab = hf_config.get("vocab_size", arch.d_vocab)
    if n_tokens > vocab:
        raise InputError(f"{path}/tokenizer", "<vocabulary>", f"{n_tokens} tokens, more than "
                         f"the model's vocabulary of {vocab}: not this model's tokenizer")


def load_model(model_cfg: dict[str, Any], model_dir: str | Path | None,
               device: str = "cpu") -> HookedTransformer:
    """The model a config describes: ``source: toy`` reads ``model_dir``; ``pretrained`` the
    hub; ``local`` the checkpoint folder ``model.path``."""
    if model_cfg["source"] == "toy":
        if model_dir is None:
            raise InputError("config", "model.source", "toy models need a trained model dir")
        return load_toy_model(model_dir, device)
    if model_cfg["source"] == "pretrained":
        return load_pretrained_model(model_cfg["name"], device, model_cfg["dtype"])
    if model_cfg["source"] == "local":
        return load_local_model(model_cfg["name"], model_cfg["path"], device, model_cfg["dtype"])
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
