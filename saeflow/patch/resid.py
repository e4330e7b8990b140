"""Activation patching on clean/corrupted prompt pairs: the metric, batched residual-stream
patching over every layer x position, and bootstrap aggregation.

Conventions shared with :mod:`saeflow.patch.attribution`:

* The metric is the logit difference ``logit(clean answer) - logit(corrupted answer)`` at the
  final position, one value per pair.
* Every effect is that of patching an activation **from the clean run into the corrupted run**:
  ``effect = metric(corrupted, patched) - metric(corrupted)``; the normalised effect divides it
  by ``metric(clean) - metric(corrupted)``, so 1 means "restores the clean answer fully".
  Aggregated over pairs it is a ratio of means, ``mean(effect) / mean(clean - corrupted)``:
  a mean of per-pair ratios is heavy-tailed, as a pair whose gap is near 0 divides by ~0.
* Pairs are never padded: one :class:`PairBatch` holds pairs of one token length ``T``. Across
  batches, per-pair arrays are right-aligned to ``P = max T`` (column ``P - 1`` is every prompt's
  final token) and NaN where a shorter prompt has no token; position labels are offsets from the
  end (``-1`` = final token).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saeflow.core.errors import InputError


@dataclass(frozen=True)
class PatchConfig:
    """``config["patch"]`` as validated: every knob of the patching stage. The defaults live in
    workflow/schemas/config.schema.yaml only (:func:`saeflow.core.config.schema_defaults`
    ``("patch")`` reads them where no validated config exists); every key is required here."""

    pairs: str  # JSONL of clean/corrupted pairs
    truth: str | None  # toy world/truth.json; None: no toy-world position check
    descriptions: str | None  # JSON {hook_name: {latent: text}} for the top latents
    max_batch: int  # rows per forward pass (patched copies x pairs)
    n_bootstrap: int
    ci: float
    seed: int
    top_k: int  # latents verified by exact patching
    n_random: int  # latents outside the top-k patched exactly to find false negatives
    false_negative_threshold: float  # |exact| / |mean(clean - corrupted)| counted as real
    exhaustive: bool  # exact patching of every node (patch_exact), the reference for AtP
    exhaustive_k: tuple[int, ...]  # k of precision/recall@k against the exhaustive reference
    estimators: tuple[str, ...]  # node-attribution estimators run: "atp" (always), "ig"
    ig_steps: int  # points on integrated gradients' path (saeflow.patch.ig)
    faithfulness_n: tuple[int, ...]
    faithfulness_rank_share: float  # share of pairs nodes are ranked on; the rest evaluate
    faithfulness_random: int  # random node orders drawn as the faithfulness baseline
    circuit: Mapping[str, Any]  # node/edge thresholds and checks of patch_circuit
    sae_gap_tolerance: float  # |SAE-spliced - model| / |clean - corrupted| flagged above
    device: str

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> PatchConfig:
        """From ``config["patch"]`` (validated, so holding every default); an unknown or a
        missing key is an error naming it."""
        from saeflow.core.config import strict_fields

        raw = strict_fields(cls, raw, "patch")
        raw["faithfulness_n"] = tuple(int(n) for n in raw["faithfulness_n"])
        raw["exhaustive_k"] = tuple(int(n) for n in raw["exhaustive_k"])
        raw["estimators"] = tuple(str(e) for e in raw["estimators"])
        return cls(**raw)


@dataclass(frozen=True)
class PairBatch:
    """Pairs of one token length ``T``: ``clean``/``corrupted`` ``[n, T]``, answers ``[n]``."""

    clean: Tensor
    corrupted: Tensor
    clean_answer: Tensor
    corrupted_answer: Tensor
    pair_ids: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        ids = tuple(int(i) for i in (self.pair_ids or range(len(self.clean))))
        object.__setattr__(self, "pair_ids", ids)
        where = (f"pair {ids[0]}" if len(ids) == 1 else f"pairs {ids[0]}..{ids[-1]}" if ids
                 else "pairs")
        if self.clean.ndim != 2 or self.clean.shape != self.corrupted.shape:
            raise InputError("pairs", where, f"clean tokens {tuple(self.clean.shape)} vs corrupted "
                             f"{tuple(self.corrupted.shape)}: a batch needs [n, T] pairs of one "
                             "equal token length (group pairs by length)")
        n = self.clean.shape[0]
        for name in ("clean_answer", "corrupted_answer"):
            if tuple(getattr(self, name).shape) != (n,):
                raise InputError("pairs", f"{where} {name}",
                                 f"shape {tuple(getattr(self, name).shape)}, expected ({n},): "
                                 "one single-token answer id per pair")
        if len(ids) != n:
            raise InputError("pairs", "pair_ids", f"{len(ids)} ids for {n} pairs")

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def length(self) -> int:
        return self.clean.shape[1]

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(self.clean.to(device), self.corrupted.to(device),
                         self.clean_answer.to(device), self.corrupted_answer.to(device),
                         self.pair_ids)

    def select(self, keep: Sequence[bool]) -> PairBatch:
        """The pairs where ``keep`` (one flag per pair) is true."""
        idx = torch.as_tensor(np.flatnonzero(np.asarray(keep, dtype=bool)), dtype=torch.long)
        return PairBatch(self.clean[idx], self.corrupted[idx], self.clean_answer[idx],
                         self.corrupted_answer[idx], tuple(self.pair_ids[i] for i in idx.tolist()))

    def chunks(self, size: int) -> Iterator[PairBatch]:
        for s in range(0, len(self), max(1, size)):
            sl = slice(s, s + max(1, size))
            yield PairBatch(self.clean[sl], self.corrupted[sl], self.clean_answer[sl],
                            self.corrupted_answer[sl], self.pair_ids[sl])


def optional_input(value: str | Sequence[str]) -> str | None:
    """A rule input that may be absent (its input function returns ``[]`` when unset)."""
    if isinstance(value, str):
        return value or None
    return str(value[0]) if len(value) else None


def load_pairs(path: str | Path, tokenizer: Any) -> list[PairBatch]:
    """Read ``pairs.jsonl`` (rows 2k, 2k+1 = pair k, clean first), tokenise with BOS prepended
    (:func:`saeflow.core.prompts.encode_prompt`), and group pairs by token length, shortest first."""
    from saeflow.core.io import read_jsonl
    from saeflow.core.prompts import encode_prompt

    records = read_jsonl(path)
    if not records or len(records) % 2:
        raise InputError(path, "<rows>", f"{len(records)} rows: need clean/corrupted row pairs")
    for row, rec in enumerate(records):
        missing = [k for k in ("text", "answer", "pair_id", "role") if k not in rec]
        if missing:
            raise InputError(path, f"row {row}", f"missing {', '.join(missing)}")
    groups: dict[int, list[tuple[list[int], list[int], int, int, int]]] = {}
    for clean, corrupted in zip(records[0::2], records[1::2], strict=True):
        pid = clean["pair_id"]
        where = f"pair {pid}"
        if (clean["role"], corrupted["role"]) != ("clean", "corrupted") \
                or corrupted["pair_id"] != pid:
            raise InputError(path, where, "rows 2k, 2k+1 must be the clean and corrupted prompt "
                             "of one pair_id, in that order")
        a, b = encode_prompt(tokenizer, clean["text"]), encode_prompt(tokenizer, corrupted["text"])
        if len(a) != len(b):
            raise InputError(path, where, f"clean is {len(a)} tokens, corrupted {len(b)}: "
                             "a pair must have equal token length")
        answers = []
        for role, rec in (("clean", clean), ("corrupted", corrupted)):
            ids = tokenizer.encode(rec["answer"], add_special_tokens=False)
            if len(ids) != 1:
                raise InputError(path, f"{where} {role} answer",
                                 f"{rec['answer']!r} is {len(ids)} tokens, must be one")
            answers.append(ids[0])
        groups.setdefault(len(a), []).append((a, b, answers[0], answers[1], int(pid)))
    return [PairBatch(torch.tensor([g[0] for g in rows]), torch.tensor([g[1] for g in rows]),
                      torch.tensor([g[2] for g in rows]), torch.tensor([g[3] for g in rows]),
                      tuple(g[4] for g in rows))
            for _, rows in sorted(groups.items())]


def check_batches(model: Any, batches: Sequence[PairBatch]) -> None:
    """Fail with one line, before any forward pass, if the pairs cannot run on ``model``."""
    if not batches:
        raise InputError("pairs", "<pairs>", "no pairs given")
    for b in batches:
        where = f"pairs {b.pair_ids[0]}..{b.pair_ids[-1]}"
        if b.length > model.cfg.n_ctx:
            raise InputError("pairs", where, f"{b.length} tokens exceed n_ctx {model.cfg.n_ctx}")
        top = max(int(t.max()) for t in (b.clean, b.corrupted, b.clean_answer,
                                         b.corrupted_answer))
        if top >= model.cfg.d_vocab:
            raise InputError("pairs", where, f"token id {top} >= d_vocab {model.cfg.d_vocab}: "
                             "tokenizer and model do not match")


def logit_diff(logits: Tensor, clean_answer: Tensor, corrupted_answer: Tensor) -> Tensor:
    """``[B]`` logit(clean answer) - logit(corrupted answer) at the final position of
    ``logits [B, T, d_vocab]`` (pairs are unpadded, so the final position is ``T - 1``)."""
    final = logits[:, -1, :]
    return (final.gather(1, clean_answer.to(final.device)[:, None])
            - final.gather(1, corrupted_answer.to(final.device)[:, None]))[:, 0]


def normalised_effect(patched: np.ndarray, clean: np.ndarray, corrupted: np.ndarray,
                      eps: float = 1e-6) -> np.ndarray:
    """``(patched - corrupted) / (clean - corrupted)`` with ``patched [n, ...]`` and the pair's
    ``clean``/``corrupted`` metric ``[n]``; NaN for pairs whose clean and corrupted metrics tie
    (no difference to recover), so they drop out of nan-aware means."""
    shape = (-1,) + (1,) * (patched.ndim - 1)
    gap = (clean - corrupted).reshape(shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(gap) > eps, (patched - corrupted.reshape(shape)) / gap, np.nan)


def _shortformer_kwargs(model: Any, tokens: Tensor) -> dict[str, Tensor]:
    # Shortformer models add positions inside attention; start_at_layer skips the embedding
    # that would have computed them, so hand them in.
    if model.cfg.positional_embedding_type == "shortformer":
        return {"shortformer_pos_embed": model.pos_embed(tokens)}
    return {}


@torch.no_grad()
def resid_patching(model: Any, batch: PairBatch, max_batch: int = 256
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Patch clean ``blocks.{l}.hook_resid_pre`` into the corrupted run at every layer x position.

    For one layer, the corrupted ``resid_pre`` is copied once per position, the clean vector is
    written into copy ``p`` at position ``p``, and all copies run in one forward pass that starts
    at layer ``l`` (``start_at_layer``), so earlier layers are not recomputed.

    Returns ``patched [n, n_layers, T]`` (metric of each patched run), ``clean [n]`` and
    ``corrupted [n]`` metrics, on the CPU.
    """
    b = batch.to(model.cfg.device)
    n_layers, (n, T) = model.cfg.n_layers, b.clean.shape
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
    clean_logits, clean_cache = model.run_with_cache(b.clean, names_filter=names)
    corr_logits, corr_cache = model.run_with_cache(b.corrupted, names_filter=names)
    out = torch.empty(n, n_layers, T)
    per_pass = max(1, max_batch // max(1, n))  # positions patched per forward pass
    for layer, name in enumerate(names):
        clean_x, corr_x = clean_cache[name], corr_cache[name]  # [n, T, d_model]
        for start in range(0, T, per_pass):
            pos = torch.arange(start, min(T, start + per_pass), device=corr_x.device)
            k = len(pos)
            x = corr_x.repeat(k, 1, 1)  # copy j (rows j*n .. j*n+n-1) patches position pos[j]
            rows, cols = torch.arange(k * n, device=x.device), pos.repeat_interleave(n)
            x[rows, cols] = clean_x[rows % n, cols]
            logits = model(x, start_at_layer=layer,
                           **_shortformer_kwargs(model, b.corrupted.repeat(k, 1)))
            ld = logit_diff(logits, b.clean_answer.repeat(k), b.corrupted_answer.repeat(k))
            out[:, layer, pos.cpu()] = ld.view(k, n).T.float().cpu()
    return (out, logit_diff(clean_logits, b.clean_answer, b.corrupted_answer).float().cpu(),
            logit_diff(corr_logits, b.clean_answer, b.corrupted_answer).float().cpu())


def align_right(values: np.ndarray, n_positions: int) -> np.ndarray:
    """Pad ``values [..., T]`` on the left with NaN to ``[..., n_positions]`` (final token last)."""
    pad = [(0, 0)] * (values.ndim - 1) + [(n_positions - values.shape[-1], 0)]
    return np.pad(values.astype(np.float64), pad, constant_values=np.nan)


def position_offsets(n_positions: int) -> list[int]:
    """Labels of right-aligned columns: offsets from the final token (``-1`` = final)."""
    return list(range(-n_positions, 0))


BOOTSTRAP_METHOD = "percentile bootstrap over pairs"
NORMALISED_METHOD = ("ratio of means over the pairs present in the cell: mean(patched - "
                     "corrupted) / mean(clean - corrupted); per-pair ratios in "
                     "normalised_per_pair")


def bootstrap_ci(values: np.ndarray, n_boot: int, ci: float, seed: int,
                 denominator: np.ndarray | None = None, eps: float = 1e-6
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nan-aware mean over pairs of ``values [n, ...]`` and its percentile bootstrap interval;
    with ``denominator [n]``, the ratio of means ``mean(values) / mean(denominator)`` over the
    pairs present in each cell (NaN where that mean denominator is within ``eps`` of 0).

    Each resample is a multinomial count vector over pairs, so every resampled mean is one
    matrix product; NaN cells (absent positions) are left out of both sums and counts, and a
    ratio resamples its numerator and denominator with the same pairs.
    Returns ``mean, lo, hi``, each ``[...]``.
    """
    n, rest = values.shape[0], values.shape[1:]
    flat = values.reshape(n, -1)
    present = (~np.isnan(flat)).astype(np.float64)
    filled = np.nan_to_num(flat, nan=0.0)
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = filled.sum(0) / present.sum(0)
        boots = (counts @ filled) / (counts @ present)
        if denominator is not None:
            den = present * np.asarray(denominator, dtype=np.float64)[:, None]
            mean_den = den.sum(0) / present.sum(0)
            mean = np.where(np.abs(mean_den) > eps, mean / mean_den, np.nan)
            boot_den = (counts @ den) / (counts @ present)
            boots = np.where(np.abs(boot_den) > eps, boots / boot_den, np.nan)
    tail = 100 * (1 - ci) / 2
    lo, hi = (np.full(flat.shape[1], np.nan) for _ in range(2))
    ok = ~np.all(np.isnan(boots), axis=0)
    if ok.any():
        lo[ok], hi[ok] = np.nanpercentile(boots[:, ok], [tail, 100 - tail], axis=0)
    return mean.reshape(rest), lo.reshape(rest), hi.reshape(rest)


@dataclass
class ResidResult:
    """Residual patching over all pairs, right-aligned to ``P`` positions.

    ``patched``/``effect``/``normalised`` (per-pair ratios) are ``[n, n_layers, P]``;
    ``clean``/``corrupted`` the per-pair metrics ``[n]``; ``agg`` holds
    ``{effect,normalised}_{mean,lo,hi}`` ``[n_layers, P]``, ``normalised_*`` the ratio of means.
    """

    pair_ids: np.ndarray
    lengths: np.ndarray
    clean: np.ndarray
    corrupted: np.ndarray
    patched: np.ndarray
    agg: dict[str, np.ndarray]

    @property
    def effect(self) -> np.ndarray:
        return self.patched - self.corrupted[:, None, None]

    @property
    def normalised(self) -> np.ndarray:
        return normalised_effect(self.patched, self.clean, self.corrupted)


def run_resid_patching(model: Any, batches: Sequence[PairBatch], cfg: PatchConfig) -> ResidResult:
    """:func:`resid_patching` over every batch, aligned and aggregated with bootstrap CIs."""
    check_batches(model, batches)
    P = max(b.length for b in batches)
    chunks = [c for b in batches for c in b.chunks(cfg.max_batch)]
    parts = [resid_patching(model, c, cfg.max_batch) for c in chunks]
    res = ResidResult(
        pair_ids=np.concatenate([np.asarray(c.pair_ids) for c in chunks]),
        lengths=np.concatenate([np.full(len(c), c.length) for c in chunks]),
        clean=np.concatenate([p[1].numpy() for p in parts]).astype(np.float64),
        corrupted=np.concatenate([p[2].numpy() for p in parts]).astype(np.float64),
        patched=np.concatenate([align_right(p[0].numpy(), P) for p in parts]), agg={})
    gap = res.clean - res.corrupted
    for name, den in (("effect", None), ("normalised", gap)):
        mean, lo, hi = bootstrap_ci(res.effect, cfg.n_bootstrap, cfg.ci, cfg.seed, den)
        res.agg.update({f"{name}_mean": mean, f"{name}_lo": lo, f"{name}_hi": hi})
    return res


def write_resid(path: str | Path, res: ResidResult, config: Mapping[str, Any] | None) -> None:
    """HDF5 (atomic): datasets ``pair_id, lengths, clean_logit_diff, corrupted_logit_diff [n]``,
    ``patched_logit_diff``, ``normalised_per_pair [n, L, P]``,
    ``agg/{effect,normalised}_{mean,lo,hi} [L, P]``; root attributes ``provenance``, ``hook``
    (``blocks.{l}.hook_resid_pre``), ``position_offsets``, ``normalised_method``,
    ``interval_method``."""
    import h5py

    from saeflow.core.io import atomic_path
    from saeflow.core.provenance import provenance_json

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["provenance"] = provenance_json(dict(config or {}))
        f.attrs["hook"] = "blocks.{layer}.hook_resid_pre"
        f.attrs["position_offsets"] = json.dumps(position_offsets(res.patched.shape[-1]))
        f.attrs["normalised_method"] = NORMALISED_METHOD
        f.attrs["interval_method"] = BOOTSTRAP_METHOD
        for name, arr in (("pair_id", res.pair_ids), ("lengths", res.lengths),
                          ("clean_logit_diff", res.clean), ("corrupted_logit_diff", res.corrupted),
                          ("patched_logit_diff", res.patched),
                          ("normalised_per_pair", res.normalised)):
            f.create_dataset(name, data=arr)
        for name, arr in res.agg.items():
            f.create_dataset(f"agg/{name}", data=arr)


def read_resid(path: str | Path) -> ResidResult:
    import h5py

    with h5py.File(path, "r") as f:
        return ResidResult(f["pair_id"][:], f["lengths"][:], f["clean_logit_diff"][:],
                           f["corrupted_logit_diff"][:], f["patched_logit_diff"][:],
                           {k: f["agg"][k][:] for k in f["agg"]})


def top_cell(mean: np.ndarray) -> tuple[int, int]:
    """``(layer, column)`` of the largest (signed) mean effect in ``mean [n_layers, P]``."""
    return tuple(int(i) for i in np.unravel_index(np.nanargmax(mean), mean.shape))  # type: ignore
