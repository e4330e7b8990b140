"""SAE-latent attribution patching (AtP) with the SAE error as its own node, the run of any
node estimator over every pair (:func:`run_atp`), exact latent patching to verify it, the node
ranking, and atp.h5 (:func:`write_atp`, :func:`read_atp`), the layout of every estimator's file.

Nodes. The SAEs (and transcoders) are spliced in by :mod:`saeflow.patch.splice`, one per site
(``sae.cfg.metadata.hook_name``): latents ``f [B, T, d_sae]`` and the error ``[B, T, d_out]``.
A *latent node* is ``(site, latent)`` at all positions at once; an *error node* is ``(site,
position)``, positions right-aligned as in :mod:`saeflow.patch.pairs` (column ``P - 1`` = final
token).

Sign convention (the same as residual patching): every effect is that of patching the node
**from the clean run into the corrupted run**, on the metric ``logit diff = logit(clean answer)
- logit(corrupted answer)``::

    AtP(node)   = (a_clean - a_corrupted) . d metric / d a   (gradient at the corrupted run)
    exact(node) = metric(corrupted, node := clean) - metric(corrupted)

The splice (:mod:`saeflow.patch.splice`) adds the error term itself, so that the
gradient through a downstream site holds its error fixed, as exact patching does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saeflow.patch.pairs import (
    PairBatch,
    PatchConfig,
    align_right,
    logit_diff,
    position_offsets,
)
from saeflow.patch.resume import can_resume, run_from_site
from saeflow.patch.splice import (
    RunOptions,
    SparseAct,
    after_prefix,
    answer_logit_diff,
    decoder_rows,
    frozen_prefix,
    prefix_cache,
    run_spliced,
    shared_prefix,
    spliced_metric,
)

Node = tuple[str, str, int]  # ("latent", site, latent index) | ("error", site, aligned column)
MODES = {"with_error": True, "without_error": False}


@dataclass
class AtPResult:
    """AtP over all pairs in one mode; per-pair arrays, positions right-aligned to ``P``.

    ``latent_effect[hook] [n, d_sae]``: AtP of patching the latent at all positions (the sum of
    its per-position terms); ``latent_delta[hook] [n, d_sae]``: sum over positions of
    ``|clean - corrupted|``; ``latent_mass[hook] [n, P]``: sum over latents of ``|AtP|`` at each
    position; ``error_effect[hook] [n, P]``: AtP of each error node (empty without the error).
    """

    with_error: bool
    pair_ids: np.ndarray
    lengths: np.ndarray
    clean: np.ndarray
    corrupted: np.ndarray
    latent_effect: dict[str, np.ndarray] = field(default_factory=dict)
    latent_delta: dict[str, np.ndarray] = field(default_factory=dict)
    latent_mass: dict[str, np.ndarray] = field(default_factory=dict)
    error_effect: dict[str, np.ndarray] = field(default_factory=dict)


def attribution_patching(model: Any, saes: Mapping[str, Any], batch: PairBatch, with_error: bool
                         ) -> tuple[dict[str, SparseAct], dict[str, SparseAct], Tensor, Tensor]:
    """AtP for one batch: one corrupted forward + backward, one clean forward.

    Returns per hook the latent effects ``act [n, T, d_sae]`` and error-node effects
    ``res [n, T]`` (summed over ``d_model``), per hook the ``|clean - corrupted|`` latent
    deltas ``act [n, T, d_sae]``, and the clean and corrupted metrics ``[n]``.

    Both runs compute only what AtP reads: the blocks, the sites' nodes and the metric from
    the final position's two answer logits (:func:`~saeflow.patch.splice.spliced_metric`),
    never ``[n, T, d_vocab]`` logits; with the error term the nodes are leaves
    (:class:`~saeflow.patch.splice.RunOptions` ``leaf_nodes``), so the backward pass runs no
    SAE encoder. The clean run builds no graph and starts where the pairs first differ
    (:func:`~saeflow.patch.splice.shared_prefix`): the tokens before are the corrupted run's,
    so are their activations (causal attention), and it reads their keys and values from the
    corrupted run. The same effects as differentiating full logits through the default
    splice, to float rounding.
    """
    b = batch.to(model.cfg.device)
    start = shared_prefix(b)
    cache = prefix_cache(model, len(b)) if start else None
    options = RunOptions(leaf_nodes=with_error)
    with torch.enable_grad():
        metric, corr = spliced_metric(model, saes, b.corrupted, b, with_error,
                                      replace(options, past_kv_cache=cache))
        names = list(corr)
        leaves = [corr[h].act for h in names] + ([corr[h].res for h in names] if with_error else [])
        # Pairs are independent rows, so the gradient of the sum is each pair's own gradient.
        grads = torch.autograd.grad(metric.sum(), leaves, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads, strict=True)]
    with torch.no_grad():
        prefix = replace(options, past_kv_cache=frozen_prefix(cache, start))
        clean_metric, clean = spliced_metric(model, saes, b.clean[:, start:], b, with_error, prefix)
        effects, deltas = {}, {}
        for i, h in enumerate(names):
            grad = SparseAct(grads[i], grads[len(names) + i] if with_error else None)
            delta = after_prefix(clean[h], corr[h].detach(), start) - corr[h].detach()
            eff = delta * grad
            effects[h] = SparseAct(eff.act, None if eff.res is None else eff.res.sum(-1))
            deltas[h] = SparseAct(delta.act.abs())
    return effects, deltas, clean_metric, metric.detach()


def run_atp(model: Any, saes: Mapping[str, Any], batches: Sequence[PairBatch], with_error: bool,
            max_batch: int = 256, estimate: Callable[..., Any] | None = None) -> AtPResult:
    """``estimate`` (:func:`attribution_patching` by default, or another estimator with its
    arguments and return, e.g. :func:`saeflow.patch.ig.integrated_gradients`) over every batch
    (chunked to ``max_batch`` pairs)."""
    estimate = estimate or attribution_patching
    P = max(b.length for b in batches)
    chunks = [c for b in batches for c in b.chunks(max_batch)]
    res = AtPResult(with_error, np.concatenate([np.asarray(c.pair_ids) for c in chunks]),
                    np.concatenate([np.full(len(c), c.length) for c in chunks]),
                    np.empty(0), np.empty(0))
    parts: dict[str, list[list[np.ndarray]]] = {h: [[], [], [], []] for h in saes}
    cleans, corrs = [], []
    for chunk in chunks:
        effects, deltas, clean, corr = estimate(model, saes, chunk, with_error)
        cleans.append(clean.double().cpu().numpy())
        corrs.append(corr.double().cpu().numpy())
        for h, eff in effects.items():
            act = eff.act.double()
            parts[h][0].append(act.sum(1).cpu().numpy())
            parts[h][1].append(deltas[h].act.double().sum(1).cpu().numpy())
            parts[h][2].append(align_right(act.abs().sum(-1).cpu().numpy(), P))
            if eff.res is not None:
                parts[h][3].append(align_right(eff.res.double().cpu().numpy(), P))
    res.clean, res.corrupted = np.concatenate(cleans), np.concatenate(corrs)
    for h, (eff, delta, mass, err) in parts.items():
        res.latent_effect[h], res.latent_delta[h] = np.concatenate(eff), np.concatenate(delta)
        res.latent_mass[h] = np.concatenate(mass)
        if err:
            res.error_effect[h] = np.concatenate(err)
    return res


@torch.no_grad()
def exact_latent_effects(model: Any, saes: Mapping[str, Any], batch: PairBatch,
                         latents: Sequence[tuple[str, int]], with_error: bool,
                         max_batch: int = 256, alpha: float = 1.0) -> Tensor:
    """Exact effect ``[n, K]`` of patching each latent ``(hook, index)`` at all positions from
    the clean run into the corrupted run (``alpha < 1`` patches only that fraction of the way:
    ``corrupted + alpha * (clean - corrupted)``; effect / alpha -> AtP as alpha -> 0).

    ``K`` latents are patched in stacked copies of the corrupted batch, ``max_batch`` rows per
    forward pass, one site per pass; residual sites start the pass at their own layer
    (:mod:`saeflow.patch.resume`).
    """
    b = batch.to(model.cfg.device)
    n = len(b)
    _, clean = spliced_metric(model, saes, b.clean, b, with_error)
    outs: dict[str, Tensor] = {}
    base, corr = spliced_metric(model, saes, b.corrupted, b, with_error, RunOptions(outputs=outs))
    per_pass = max(1, max_batch // n)
    out = torch.zeros(n, len(latents), dtype=torch.float64)
    by_site: dict[str, list[int]] = {}
    for j, (h, _) in enumerate(latents):
        by_site.setdefault(h, []).append(j)
    # one site per pass, so residual sites start their runs at their own layer
    for h, columns in by_site.items():
        for start in range(0, len(columns), per_pass):
            cols = columns[start:start + per_pass]
            k = len(cols)
            lat = torch.tensor([latents[j][1] for j in cols], device=b.corrupted.device)
            c, r = clean[h].act[:, :, lat], corr[h].act[:, :, lat]  # [n, T, k]
            answers = (b.clean_answer.repeat(k), b.corrupted_answer.repeat(k))
            if can_resume(h, saes):
                rows = decoder_rows(saes[h], lat.tolist()).to(outs[h].dtype)  # [k, d_model]
                shift = alpha * (c - r).permute(2, 0, 1)[..., None] * rows[:, None, None, :]
                x = (outs[h][None] + shift).reshape(k * n, *outs[h].shape[1:])
                ld = logit_diff(run_from_site(model, saes, h, x, with_error), *answers)
            else:
                def edit(name: str, f: Tensor, h: str = h, lat: Tensor = lat, c: Tensor = c,
                         r: Tensor = r, k: int = k) -> Tensor:
                    if name != h:
                        return f
                    f = f.view(k, n, *f.shape[1:])
                    for j in range(k):  # copy j: its latent at every position
                        f[j, :, :, lat[j]] = r[:, :, j] + alpha * (c[:, :, j] - r[:, :, j])
                    return f.view(k * n, *f.shape[2:])

                resid, _ = run_spliced(model, saes, b.corrupted.repeat(k, 1), with_error, edit,
                                       options=RunOptions(stop_at_layer=model.cfg.n_layers))
                ld = answer_logit_diff(model, resid, *answers)
            out[:, cols] = (ld - base.repeat(k)).view(k, n).T.double().cpu()
    return out


def exact_effects_all(model: Any, saes: Mapping[str, Any], batches: Sequence[PairBatch],
                      latents: Sequence[tuple[str, int]], with_error: bool, max_batch: int
                      ) -> np.ndarray:
    """:func:`exact_latent_effects` over every batch: ``[n, K]`` in :func:`run_atp`'s order."""
    if not latents:
        return np.zeros((sum(len(b) for b in batches), 0))
    return np.concatenate([exact_latent_effects(model, saes, c, latents, with_error, max_batch)
                           .numpy() for b in batches for c in b.chunks(max_batch)])


def rank_nodes(atp: AtPResult, rows: np.ndarray | None = None) -> list[tuple[Node, float]]:
    """Every node with its mean AtP effect over the pairs ``rows`` (a bool mask; all pairs by
    default), by decreasing ``|effect|``. Latent and error nodes are averaged alike, over
    every pair, a position a pair lacks counting 0 (a latent's effect is already a sum over
    the pair's own positions)."""
    rows = np.ones(len(atp.pair_ids), dtype=bool) if rows is None else np.asarray(rows, bool)
    n = max(int(rows.sum()), 1)
    nodes: list[tuple[Node, float]] = []
    for h, eff in atp.latent_effect.items():
        nodes += [(("latent", h, i), float(v)) for i, v in enumerate(eff[rows].sum(0) / n)]
    for h, eff in atp.error_effect.items():  # [n, P], NaN where a pair has no such position
        nodes += [(("error", h, p), float(v))
                  for p, v in enumerate(np.nansum(eff[rows], 0) / n)]
    return sorted(nodes, key=lambda nv: -abs(nv[1]))


def nan_to_none(x: Any) -> Any:
    """Array or scalar as JSON-ready lists/floats, NaN and inf as ``None``."""
    arr = np.asarray(x, dtype=np.float64)
    return np.where(np.isfinite(arr), arr, None).tolist()


def verify_atp(model: Any, saes: Mapping[str, Any], batches: Sequence[PairBatch], atp: AtPResult,
               cfg: PatchConfig) -> dict[str, Any]:
    """Exact patching of the top-k latents by ``|mean AtP|`` and of a random sample of the other
    latents whose activation differs between clean and corrupted; Spearman correlation of AtP
    and exact means on the top-k; false negatives = sampled latents with ``|mean exact| >=
    threshold * |mean(clean - corrupted)|``; ``miss_rate_judgement``: whether the sample can
    tell AtP's misses at all (:func:`saeflow.patch.gate.miss_rate_judgement`)."""
    from scipy.stats import binomtest, spearmanr

    from saeflow.patch.gate import miss_rate_judgement

    ranked = [(node[1], node[2], v) for node, v in rank_nodes(atp) if node[0] == "latent"]
    top = ranked[:cfg.top_k]
    top_set = {(h, i) for h, i, _ in top}
    pool = [(h, int(i), float(atp.latent_effect[h][:, i].mean()))
            for h, delta in atp.latent_delta.items() for i in np.flatnonzero(delta.sum(0) > 0)
            if (h, int(i)) not in top_set]
    rng = np.random.default_rng(cfg.seed)
    sample = [pool[j] for j in sorted(rng.choice(len(pool), min(cfg.n_random, len(pool)),
                                                 replace=False))] if pool else []
    latents = [(h, i) for h, i, _ in top + sample]
    exact = exact_effects_all(model, saes, batches, latents, atp.with_error, cfg.max_batch)
    exact_mean = exact.mean(0)
    threshold = cfg.false_negative_threshold * abs(float((atp.clean - atp.corrupted).mean()))
    rows = [{"hook": h, "latent": int(i), "atp": v, "exact": float(e)}
            for (h, i, v), e in zip(top + sample, exact_mean, strict=True)]
    k = len(top)
    rho = spearmanr([r["atp"] for r in rows[:k]], exact_mean[:k]) if k >= 2 else None
    rho_all = spearmanr([r["atp"] for r in rows], exact_mean) if len(rows) >= 2 else None
    false_neg = [r for r in rows[k:] if abs(r["exact"]) >= threshold]
    n_sampled = len(rows) - k
    # 0 misses in 20 draws still allows a ~17% miss rate: report the exact (Clopper-Pearson)
    # interval of the rate, and what its upper end means for the whole pool
    ci = (binomtest(len(false_neg), n_sampled).proportion_ci(0.95, "exact")
          if n_sampled else None)
    miss = {"miss_rate": len(false_neg) / n_sampled if n_sampled else None,
            "miss_rate_ci95": [ci.low, ci.high] if ci else None,
            "missed_latents_upper95": ci.high * len(pool) if ci else None,
            "miss_rate_method": "Clopper-Pearson exact binomial interval over the sampled "
                                "latents of the pool"}
    n_real_top = sum(abs(r["exact"]) >= threshold for r in rows[:k])
    miss["miss_rate_judgement"] = {"n_real_top": n_real_top, "n_pool": len(pool),
                                   **miss_rate_judgement(n_real_top,
                                                         miss["missed_latents_upper95"],
                                                         len(pool))}
    return {**miss, "top_k": k, "top": rows[:k], "random": rows[k:], "n_candidates": len(pool) + k,
            "spearman": nan_to_none(rho.statistic) if rho else None,
            "spearman_p": nan_to_none(rho.pvalue) if rho else None,
            "spearman_all": nan_to_none(rho_all.statistic) if rho_all else None,
            "threshold": threshold, "false_negatives": len(false_neg),
            "false_negative_latents": false_neg,
            "total_effect": float((atp.clean - atp.corrupted).mean())}


@torch.no_grad()
def model_logit_diffs(model: Any, batches: Sequence[PairBatch], max_batch: int = 256
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The model alone (no SAE): clean and corrupted metrics ``[n]`` in :func:`run_atp`'s order."""
    clean, corr = [], []
    for c in (c for b in batches for c in b.chunks(max_batch)):
        c = c.to(model.cfg.device)
        for tokens, out in ((c.clean, clean), (c.corrupted, corr)):
            resid = model(tokens, stop_at_layer=model.cfg.n_layers)
            ld = answer_logit_diff(model, resid, c.clean_answer, c.corrupted_answer)
            out.append(ld.double().cpu().numpy())
    return np.concatenate(clean), np.concatenate(corr)


def write_atp(path: str | Path, results: Mapping[str, AtPResult],
              model_ld: tuple[np.ndarray, np.ndarray], config: Mapping[str, Any] | None) -> None:
    """HDF5 (atomic): ``pair_id, lengths [n]``; ``model/{clean,corrupted}_logit_diff [n]``; per
    mode (``with_error``, ``without_error``) ``{clean,corrupted}_logit_diff [n]`` and per hook
    ``latent_effect, latent_delta [n, d_sae]``, ``latent_mass [n, P]``, ``error_effect [n, P]``
    (with_error only). Root attributes ``provenance``, ``hooks``, ``position_offsets``."""
    import json

    import h5py

    from saeflow.core.io import atomic_path
    from saeflow.core.provenance import provenance_json

    first = next(iter(results.values()))
    P = next(iter(first.latent_mass.values())).shape[1]
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["provenance"] = provenance_json(dict(config or {}))
        f.attrs["hooks"] = json.dumps(list(first.latent_effect))
        f.attrs["position_offsets"] = json.dumps(position_offsets(P))
        f["pair_id"], f["lengths"] = first.pair_ids, first.lengths
        f["model/clean_logit_diff"], f["model/corrupted_logit_diff"] = model_ld
        for mode, r in results.items():
            f[f"{mode}/clean_logit_diff"], f[f"{mode}/corrupted_logit_diff"] = r.clean, r.corrupted
            for kind in ("latent_effect", "latent_delta", "latent_mass", "error_effect"):
                for h, arr in getattr(r, kind).items():
                    f.create_dataset(f"{mode}/{h}/{kind}", data=arr.astype(np.float32))


def read_atp(path: str | Path) -> tuple[dict[str, AtPResult], tuple[np.ndarray, np.ndarray]]:
    """``({mode: AtPResult}, (model clean, model corrupted metrics))`` from :func:`write_atp`,
    through the checked HDF5 opener (:mod:`saeflow.formats.hdf5`): a missing or damaged file,
    dataset or hook group is an InputError naming the file and the dataset."""
    from saeflow.formats.hdf5 import json_attr, open_h5, read_array, require

    out = {}
    with open_h5(path) as f:
        hooks = json_attr(f, "hooks", path)
        for mode, with_error in MODES.items():
            if mode not in f:
                continue
            r = AtPResult(with_error, read_array(f, "pair_id", path),
                          read_array(f, "lengths", path),
                          read_array(f, f"{mode}/clean_logit_diff", path),
                          read_array(f, f"{mode}/corrupted_logit_diff", path))
            for h in hooks:
                group = require(f, f"{mode}/{h}", path, "group")
                for kind in ("latent_effect", "latent_delta", "latent_mass", "error_effect"):
                    if kind != "error_effect" or kind in group:  # the error: with_error only
                        getattr(r, kind)[h] = read_array(f, f"{mode}/{h}/{kind}",
                                                         path).astype(np.float64)
            out[mode] = r
        return out, (read_array(f, "model/clean_logit_diff", path),
                     read_array(f, "model/corrupted_logit_diff", path))
