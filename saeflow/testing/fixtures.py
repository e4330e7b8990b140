"""Small builders the unit tests share: configs as validation leaves them, random pair batches.

Real objects (saeflow's dataclasses, torch tensors), no files: each test states what it varies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from saeflow.core.config import schema_defaults
from saeflow.patch.pairs import PairBatch, PatchConfig
from saeflow.patch.splice import PatchRun


def patch_config(**overrides: Any) -> PatchConfig:
    """config["patch"] as validation leaves it: the schema's defaults plus a pairs file."""
    return PatchConfig.from_dict({**schema_defaults("patch"), "pairs": "pairs.jsonl", **overrides})


def patch_run(model: Any, saes: Mapping[str, Any], batches: Sequence[PairBatch],
              n_positions: int | None = None, **overrides: Any) -> PatchRun:
    """A :class:`~saeflow.patch.splice.PatchRun` of a model with its SAEs already spliced
    (``saes`` keyed by site, as :func:`~saeflow.patch.splice.prepare_saes` returns them), its
    config :func:`patch_config` with ``overrides``."""
    return PatchRun(model, saes, tuple(batches), patch_config(**overrides), n_positions)


def random_pair_batch(n: int, T: int, diff_at: list[int], seed: int, vocab: int = 50) -> PairBatch:
    """``n`` random clean prompts of ``T`` tokens, corrupted at the ``diff_at`` positions, with
    distinct random answers; pair ids ``100 * seed + i``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, vocab, (n, T), generator=g)
    corrupted = clean.clone()
    corrupted[:, diff_at] = (clean[:, diff_at] + torch.randint(1, vocab - 1, (n, len(diff_at)),
                                                                generator=g)) % vocab
    answers = torch.randperm(vocab, generator=g)[:2 * n]
    return PairBatch(clean, corrupted, answers[:n], answers[n:],
                     tuple(range(100 * seed, 100 * seed + n)))
