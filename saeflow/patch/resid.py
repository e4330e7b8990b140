"""Residual-stream activation patching: the clean ``blocks.{l}.hook_resid_pre`` patched into the
corrupted run at every layer x position, batched, aggregated over pairs with bootstrap
intervals, and written to (and read from) resid.h5. The metric, sign convention and the
right-alignment of positions are :mod:`saeflow.patch.pairs`'s; intervals resample the pairs'
clusters (:mod:`saeflow.patch.bootstrap`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saeflow.patch.bootstrap import PAIRS_METHOD, Clusters, percentile_interval
from saeflow.patch.pairs import (
    PairBatch,
    PatchConfig,
    align_right,
    check_batches,
    logit_diff,
    position_offsets,
)


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


BOOTSTRAP_METHOD = PAIRS_METHOD
NORMALISED_METHOD = ("ratio of means over the pairs present in the cell: mean(patched - "
                     "corrupted) / mean(clean - corrupted); per-pair ratios in "
                     "normalised_per_pair")


def bootstrap_ci(values: np.ndarray, n_boot: int, ci: float, seed: int,
                 denominator: np.ndarray | None = None, eps: float = 1e-6,
                 clusters: Clusters | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nan-aware mean over pairs of ``values [n, ...]`` and its percentile bootstrap interval;
    with ``denominator [n]``, the ratio of means ``mean(values) / mean(denominator)`` over the
    pairs present in each cell (NaN where that mean denominator is within ``eps`` of 0).

    Each resample draws the pairs' ``clusters`` with replacement and keeps every pair of a
    drawn cluster (a cluster bootstrap; default: each pair its own cluster, the bootstrap over
    pairs): a count vector over pairs, so every resampled mean is one matrix product. NaN
    cells (absent positions) are left out of both sums and counts, and a ratio resamples its
    numerator and denominator with the same pairs.
    Returns ``mean, lo, hi``, each ``[...]``.
    """
    n, rest = values.shape[0], values.shape[1:]
    flat = values.reshape(n, -1)
    present = (~np.isnan(flat)).astype(np.float64)
    filled = np.nan_to_num(flat, nan=0.0)
    clusters = clusters or Clusters.pairs(n)
    counts = clusters.weights(n_boot, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = filled.sum(0) / present.sum(0)
        boots = (counts @ filled) / (counts @ present)
        if denominator is not None:
            den = present * np.asarray(denominator, dtype=np.float64)[:, None]
            mean_den = den.sum(0) / present.sum(0)
            mean = np.where(np.abs(mean_den) > eps, mean / mean_den, np.nan)
            boot_den = (counts @ den) / (counts @ present)
            boots = np.where(np.abs(boot_den) > eps, boots / boot_den, np.nan)
    lo, hi = percentile_interval(boots, ci, clusters.n_clusters)
    return mean.reshape(rest), lo.reshape(rest), hi.reshape(rest)


# the aggregates every resid.h5 holds (:func:`run_resid_patching`)
AGG = tuple(f"{k}_{s}" for k in ("effect", "normalised") for s in ("mean", "lo", "hi"))


@dataclass
class ResidResult:
    """Residual patching over all pairs, right-aligned to ``P`` positions.

    ``patched``/``effect``/``normalised`` (per-pair ratios) are ``[n, n_layers, P]``;
    ``clean``/``corrupted`` the per-pair metrics ``[n]``; ``agg`` holds
    ``{effect,normalised}_{mean,lo,hi}`` ``[n_layers, P]``, ``normalised_*`` the ratio of means,
    its intervals resampling ``clusters`` (None: each pair its own), ``interval_method``.
    """

    pair_ids: np.ndarray
    lengths: np.ndarray
    clean: np.ndarray
    corrupted: np.ndarray
    patched: np.ndarray
    agg: dict[str, np.ndarray]
    clusters: Clusters | None = None
    interval_method: str = BOOTSTRAP_METHOD

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
        patched=np.concatenate([align_right(p[0].numpy(), P) for p in parts]), agg={},
        clusters=Clusters.of(chunks))
    res.interval_method = res.clusters.method(cfg.n_bootstrap)
    gap = res.clean - res.corrupted
    for name, den in (("effect", None), ("normalised", gap)):
        mean, lo, hi = bootstrap_ci(res.effect, cfg.n_bootstrap, cfg.ci, cfg.seed, den,
                                    clusters=res.clusters)
        res.agg.update({f"{name}_mean": mean, f"{name}_lo": lo, f"{name}_hi": hi})
    return res


def write_resid(path: str | Path, res: ResidResult, config: Mapping[str, Any] | None) -> None:
    """HDF5 (atomic): datasets ``pair_id, lengths, clean_logit_diff, corrupted_logit_diff [n]``,
    ``patched_logit_diff``, ``normalised_per_pair [n, L, P]``,
    ``agg/{effect,normalised}_{mean,lo,hi} [L, P]``, ``cluster [n]`` (each pair's cluster id,
    strings); root attributes ``provenance``, ``hook`` (``blocks.{l}.hook_resid_pre``),
    ``position_offsets``, ``normalised_method``, ``interval_method`` (naming the unit
    resampled), ``cluster_by`` (what defined the clusters: ``group``, ``template``, ``pair``)."""
    import h5py

    from saeflow.core.io import atomic_path
    from saeflow.core.provenance import provenance_json

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["provenance"] = provenance_json(dict(config or {}))
        f.attrs["hook"] = "blocks.{layer}.hook_resid_pre"
        f.attrs["position_offsets"] = json.dumps(position_offsets(res.patched.shape[-1]))
        f.attrs["normalised_method"] = NORMALISED_METHOD
        clusters = res.clusters or Clusters.pairs(len(res.pair_ids))
        f.attrs["interval_method"] = res.interval_method
        f.attrs["cluster_by"] = clusters.by
        f.create_dataset("cluster", data=np.array(clusters.ids, dtype=object),
                         dtype=h5py.string_dtype())
        for name, arr in (("pair_id", res.pair_ids), ("lengths", res.lengths),
                          ("clean_logit_diff", res.clean), ("corrupted_logit_diff", res.corrupted),
                          ("patched_logit_diff", res.patched),
                          ("normalised_per_pair", res.normalised)):
            f.create_dataset(name, data=arr)
        for name, arr in res.agg.items():
            f.create_dataset(f"agg/{name}", data=arr)


def read_resid(path: str | Path) -> ResidResult:
    """:class:`ResidResult` from :func:`write_resid`, through the checked HDF5 opener
    (:mod:`saeflow.formats.hdf5`): a missing or damaged file or dataset is an InputError."""
    from saeflow.formats.hdf5 import open_h5, read_array, reading, require

    with open_h5(path) as f:
        agg = sorted({*require(f, "agg", path, "group"), *AGG})  # h5py's (name) order
        ids = tuple(c.decode() if isinstance(c, bytes) else str(c)
                    for c in read_array(f, "cluster", path))
        with reading(path, "attrs/cluster_by"):
            by = str(f.attrs["cluster_by"])
        with reading(path, "attrs/interval_method"):
            method = str(f.attrs["interval_method"])
        return ResidResult(read_array(f, "pair_id", path), read_array(f, "lengths", path),
                           read_array(f, "clean_logit_diff", path),
                           read_array(f, "corrupted_logit_diff", path),
                           read_array(f, "patched_logit_diff", path),
                           {k: read_array(f, f"agg/{k}", path) for k in agg},
                           Clusters(ids, by), method)


def top_cell(mean: np.ndarray) -> tuple[int, int]:
    """``(layer, column)`` of the largest (signed) mean effect in ``mean [n_layers, P]``."""
    return tuple(int(i) for i in np.unravel_index(np.nanargmax(mean), mean.shape))  # type: ignore
