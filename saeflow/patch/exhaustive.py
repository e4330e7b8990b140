"""Exhaustive exact patching: the exact effect of every SAE latent and every error node of
every hook, per pair, in both modes: the reference AtP (or any attribution method) is judged
against, where the model is small enough (the toy world; ``patch.exhaustive``).

Nodes and sign as in :mod:`saeflow.patch.attribution`: a latent node is ``(hook, latent)`` at
all positions, an error node ``(hook, position)``; the effect is that of patching the node
from the clean run into the corrupted run on the logit difference. A node whose value is the
same in both runs of a pair has exact effect 0 without running anything (the patched run *is*
the corrupted run), so only (pair, node) combinations whose value differs are run: one row of
a batched forward pass each, ``max_batch`` rows per pass. Nodes of the last block's
``hook_resid_post`` need no forward pass at all (:func:`_last_site`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from saeflow.patch.attribution import MODES, AtPResult
from saeflow.patch.pairs import PairBatch, align_right, logit_diff, position_offsets
from saeflow.patch.resume import can_resume, run_from_site
from saeflow.patch.splice import RunOptions, decoder_rows, run_spliced

if TYPE_CHECKING:
    from saeflow.patch.splice import PatchRun

log = logging.getLogger(__name__)


@dataclass
class ExactResult:
    """Exact effects of one mode, pairs in :func:`saeflow.patch.attribution.run_atp`'s order:
    ``latent_effect[hook] [n, d_sae]``, ``error_effect[hook] [n, P]`` (right-aligned, NaN
    where the pair has no such position; empty without the error term); ``n_run`` rows run;
    ``cost``: seconds per row, and per row over one spliced forward of one prompt."""

    with_error: bool
    pair_ids: np.ndarray
    lengths: np.ndarray
    latent_effect: dict[str, np.ndarray] = field(default_factory=dict)
    error_effect: dict[str, np.ndarray] = field(default_factory=dict)
    n_run: int = 0
    cost: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def _batch_effects(model: Any, saes: Mapping[str, Any], b: PairBatch, with_error: bool,
                   max_batch: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """One batch's exact effects: latents ``[n, d_sae]`` and errors ``[n, T]`` per hook."""
    n, T = len(b), b.length
    _, clean = run_spliced(model, saes, b.clean, with_error)
    outs: dict[str, Tensor] = {}
    logits, corr = run_spliced(model, saes, b.corrupted, with_error,
                               options=RunOptions(outputs=outs))
    base = logit_diff(logits, b.clean_answer, b.corrupted_answer)
    latent_out = {h: np.zeros((n, saes[h].cfg.d_sae)) for h in saes}
    error_out = {h: np.zeros((n, T)) for h in saes} if with_error else {}
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    if last in saes:
        latent_out[last], final_error = _last_site(model, saes[last], clean[last], corr[last],
                                                   outs[last][:, -1], b, base, max_batch)
        if with_error:
            error_out[last][:, -1] = final_error
    # (kind, hook, pair, index) of every other node whose value differs between the runs
    rows: list[tuple[str, str, Tensor, Tensor]] = []
    for h in (h for h in saes if h != last):
        pairs, latents = torch.nonzero((clean[h].act != corr[h].act).any(1), as_tuple=True)
        rows.append(("latent", h, pairs, latents))
        if with_error:
            pairs, pos = torch.nonzero((clean[h].res != corr[h].res).any(-1), as_tuple=True)
            rows.append(("error", h, pairs, pos))
    per_site: dict[str, list[tuple[str, str, int, int]]] = {}
    for kind, h, ps, idx in rows:
        per_site.setdefault(h, []).extend(
            (kind, h, int(p), int(i)) for p, i in zip(ps.tolist(), idx.tolist(), strict=True))
    # chunks of one site each, so each resumes from its site's layer
    chunks = [site[i:i + max_batch] for site in per_site.values()
              for i in range(0, len(site), max_batch)]
    for chunk in chunks:
        dev = b.corrupted.device
        pair = torch.tensor([c[2] for c in chunk], device=dev)
        logits = _resumed_run(model, saes, chunk, clean, corr, outs, pair, with_error)
        if logits is None:
            logits = _full_run(model, saes, chunk, clean, b.corrupted[pair], with_error)
        effect = (logit_diff(logits, b.clean_answer[pair], b.corrupted_answer[pair])
                  - base[pair]).double().cpu().numpy()
        for (kind, h, p, i), value in zip(chunk, effect, strict=True):
            (latent_out if kind == "latent" else error_out)[h][p, i] = value
    return latent_out, error_out, sum(map(len, chunks))


def _resumed_run(model: Any, saes: Mapping[str, Any], chunk: list, clean: Mapping[str, Any],
                 corr: Mapping[str, Any], outs: Mapping[str, Tensor], pair: Tensor,
                 with_error: bool) -> Tensor | None:
    """Logits of the chunk's patched runs, started at the site's layer
    (:mod:`saeflow.patch.resume`): the site's spliced corrupted output plus the node's change (a
    latent's change times its decoder row, the decode being affine; an error node's own
    change). None where the site cannot be resumed from."""
    hook = chunk[0][1]
    if not can_resume(hook, saes):
        return None
    x = outs[hook][pair].clone()  # [rows, T, d_model]
    lat = [r for r, c in enumerate(chunk) if c[0] == "latent"]
    if lat:
        p = pair[lat]
        idx = torch.tensor([chunk[r][3] for r in lat], device=x.device)
        delta = clean[hook].act[p, :, idx] - corr[hook].act[p, :, idx]  # [r, T]
        rows = decoder_rows(saes[hook], idx.tolist()).to(x.dtype)  # [r, d_model]
        x[lat] += delta[:, :, None] * rows[:, None, :]
    err = [r for r, c in enumerate(chunk) if c[0] == "error"]
    if err:
        p = pair[err]
        pos = torch.tensor([chunk[r][3] for r in err], device=x.device)
        x[err, pos] += clean[hook].res[p, pos] - corr[hook].res[p, pos]
    return run_from_site(model, saes, hook, x, with_error)


def _full_run(model: Any, saes: Mapping[str, Any], chunk: list, clean: Mapping[str, Any],
              tokens: Tensor, with_error: bool) -> Tensor:
    """Logits of the chunk's patched runs from the tokens up, each row's node set to its
    clean value by the splice's edit hooks."""
    dev = tokens.device

    def select(kind: str, name: str) -> tuple[Tensor, Tensor, Tensor]:
        js = [r for r, c in enumerate(chunk) if c[0] == kind and c[1] == name]
        return (torch.tensor(js, device=dev, dtype=torch.long),
                torch.tensor([chunk[r][2] for r in js], device=dev, dtype=torch.long),
                torch.tensor([chunk[r][3] for r in js], device=dev, dtype=torch.long))

    def edit_latents(name: str, f: Tensor) -> Tensor:
        r, p, i = select("latent", name)
        if len(r):
            f[r, :, i] = clean[name].act[p, :, i]  # [rows, T]: every position of the latent
        return f

    def edit_error(name: str, e: Tensor) -> Tensor:
        r, p, pos = select("error", name)
        if len(r):
            e[r, pos] = clean[name].res[p, pos]
        return e

    logits, _ = run_spliced(model, saes, tokens, with_error, edit_latents,
                            edit_error if with_error else None)
    return logits


def _last_site(model: Any, sae: Any, clean: Any, corr: Any, x_final: Tensor, b: PairBatch,
               base: Tensor, max_batch: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The last block's ``hook_resid_post`` in closed form, still exact: only the final
    token's residual reaches the metric from there (``ln_final`` and the unembedding, which
    ``start_at_layer=n_layers`` runs, soft cap included), and a node changes it by its decoder
    row times its change (the error term: by its own change). So each node costs one
    unembedding of one vector, not a forward pass; nodes equal at the final token have effect
    exactly 0, error nodes at other positions too. Returns the latents' effects
    ``[n, d_sae]`` and the final-position error node's ``[n]`` (None without the error term:
    ``clean.res`` None)."""
    n_layers, n = model.cfg.n_layers, len(b)
    latent_out = np.zeros((n, sae.cfg.d_sae))
    delta = (clean.act[:, -1] - corr.act[:, -1])  # [n, d_sae]
    moved = torch.nonzero(delta.abs().amax(0) > 0, as_tuple=True)[0]
    per_pass = max(1, max_batch // n)
    for start in range(0, len(moved), per_pass):
        idx = moved[start:start + per_pass]
        rows = decoder_rows(sae, idx.tolist()).to(x_final.dtype)  # [K, d_model]
        x = x_final[:, None, :] + delta[:, idx, None] * rows[None]  # [n, K, d_model]
        latent_out[:, idx.cpu().numpy()] = _metric_shift(model, x, b, base, n_layers)
    if clean.res is None:
        return latent_out, None
    x = (x_final + clean.res[:, -1] - corr.res[:, -1])[:, None, :]
    return latent_out, _metric_shift(model, x, b, base, n_layers)[:, 0]


def _metric_shift(model: Any, x: Tensor, b: PairBatch, base: Tensor, n_layers: int
                  ) -> np.ndarray:
    """``[n, K]``: the metric with the final residual replaced by each of ``x [n, K, d]``,
    minus ``base [n]``."""
    n, k = x.shape[:2]
    logits = model(x.reshape(n * k, 1, -1), start_at_layer=n_layers)  # [n K, 1, vocab]
    ld = logit_diff(logits, b.clean_answer.repeat_interleave(k),
                    b.corrupted_answer.repeat_interleave(k)).view(n, k)
    return (ld - base[:, None]).double().cpu().numpy()


def exhaustive_patching(model: Any, saes: Mapping[str, Any], batches: Sequence[PairBatch],
                        with_error: bool, max_batch: int = 256) -> ExactResult:
    """:func:`_batch_effects` over every batch (chunked to ``max_batch`` pairs, as AtP is)."""
    P = max(b.length for b in batches)
    chunks = [c.to(model.cfg.device) for b in batches for c in b.chunks(max_batch)]
    res = ExactResult(with_error, np.concatenate([np.asarray(c.pair_ids) for c in chunks]),
                      np.concatenate([np.full(len(c), c.length) for c in chunks]))
    latents: dict[str, list[np.ndarray]] = {h: [] for h in saes}
    errors: dict[str, list[np.ndarray]] = {h: [] for h in saes}
    mode = "with" if with_error else "without"
    t0 = time.perf_counter()
    with torch.no_grad():  # the unit of cost: a spliced forward pass, per prompt
        run_spliced(model, saes, chunks[0].corrupted, with_error)
    forward, t0 = (time.perf_counter() - t0) / len(chunks[0]), time.perf_counter()
    for c in tqdm(chunks, desc=f"exact patching, {mode} error", mininterval=2.0):
        lat, err, n_run = _batch_effects(model, saes, c, with_error, max_batch)
        res.n_run += n_run
        for h in saes:
            latents[h].append(lat[h])
            if with_error:
                # never-run columns of a shorter pair are absent (NaN), not zero
                errors[h].append(align_right(err[h], P))
    res.latent_effect = {h: np.concatenate(v) for h, v in latents.items()}
    if with_error:
        res.error_effect = {h: np.concatenate(v) for h, v in errors.items()}
    per_row = (time.perf_counter() - t0) / max(res.n_run, 1)
    res.cost = {"seconds_per_row": per_row, "forward_seconds_per_prompt": forward, "rows_per_pair":
                res.n_run / len(res.pair_ids), "row_cost_forwards": per_row / max(forward, 1e-12)}
    log.info("exact patching %s error: %d (pair, node) rows run, %.1f a pair; %.3g ms a row = "
             "%.3g forwards of one prompt (%.3g ms)", mode, res.n_run, res.cost["rows_per_pair"],
             1e3 * per_row, res.cost["row_cost_forwards"], 1e3 * forward)
    return res


def node_means(result: AtPResult | ExactResult) -> tuple[list[tuple[str, str, int]], np.ndarray]:
    """Every node (latents of every hook, then error nodes) and its mean over pairs, in one
    order shared by AtP and exact results of the same pairs."""
    nodes: list[tuple[str, str, int]] = []
    means: list[np.ndarray] = []
    for h, eff in result.latent_effect.items():
        nodes += [("latent", h, i) for i in range(eff.shape[1])]
        means.append(eff.mean(0))
    for h, eff in result.error_effect.items():
        nodes += [("error", h, p) for p in range(eff.shape[1])]
        means.append(np.nanmean(eff, 0))
    return nodes, np.concatenate(means)


def compare_with_exact(atp: AtPResult | ExactResult, exact: ExactResult, ks: Sequence[int], top_k: int,
                       threshold: float, sampled: Mapping[str, Any] | None = None
                       ) -> dict[str, Any]:
    """AtP judged against exhaustive exact patching, over every node of one mode.

    A node is *real* when ``|mean exact| >= threshold``. Per k: ``precision`` (share of AtP's
    top k that are real), ``recall`` (share of the real nodes in AtP's top k) and
    ``overlap_with_exact_top`` (share of AtP's top k in exact's top k). Spearman over every
    latent and over the latents whose value differs in some pair (the rest are exactly 0 in
    both, a block of ties that would flatter rho). ``false_negatives``: real latents outside AtP's
    ``top_k``. With ``sampled`` (patch_verify's output), whether its interval on the miss
    rate covers the true rate of its pool (latents with a difference, outside the top k), and
    whether that can tell anything (:func:`saeflow.patch.gate.coverage_judgement`).
    """
    from scipy.stats import spearmanr

    from saeflow.patch.gate import coverage_judgement

    nodes, atp_mean = node_means(atp)
    nodes_x, exact_mean = node_means(exact)
    assert nodes == nodes_x, "AtP and exact results of different nodes"
    finite = np.isfinite(atp_mean) & np.isfinite(exact_mean)
    atp_mean, exact_mean = np.where(finite, atp_mean, 0.0), np.where(finite, exact_mean, 0.0)
    real = np.abs(exact_mean) >= threshold
    order = np.argsort(-np.abs(atp_mean), kind="stable")
    exact_order = np.argsort(-np.abs(exact_mean), kind="stable")
    at_k = []
    for k in sorted({min(int(k), len(nodes)) for k in ks}):
        hits = int(real[order[:k]].sum())
        at_k.append({"k": k, "precision": hits / k,
                     "recall": hits / int(real.sum()) if real.any() else None,
                     "overlap_with_exact_top": len(set(order[:k]) & set(exact_order[:k])) / k})
    is_latent = np.array([n[0] == "latent" for n in nodes])
    # latents whose value differs in some pair: patch_verify's sampling pool (latents come
    # first in node order, so a latent's index is its node index)
    delta = getattr(atp, "latent_delta", None) or {  # another method's result: where it
        h: np.abs(e) + np.abs(exact.latent_effect[h]) for h, e in atp.latent_effect.items()}
    active = np.concatenate([delta[h].sum(0) > 0 for h in atp.latent_effect])
    top_latents = [j for j in order if is_latent[j]][:top_k]
    missed = [j for j in np.flatnonzero(real & is_latent) if j not in set(top_latents)]
    out: dict[str, Any] = {
        "n_nodes": len(nodes), "n_latents": int(is_latent.sum()),
        "n_active_latents": int(active.sum()), "n_real": int(real.sum()),
        "n_real_latents": int((real & is_latent).sum()), "threshold": threshold,
        "at_k": at_k,
        "spearman_all_latents": _rho(spearmanr(atp_mean[is_latent], exact_mean[is_latent])),
        "spearman_active_latents": _rho(spearmanr(atp_mean[is_latent][active],
                                                  exact_mean[is_latent][active]))
        if active.sum() >= 2 else None,
        "spearman_all_nodes": _rho(spearmanr(atp_mean, exact_mean)),
        "sign_agreement_real": float((np.sign(atp_mean[real]) == np.sign(exact_mean[real]))
                                     .mean()) if real.any() else None,
        "top_k": top_k, "false_negatives": len(missed),
        "false_negative_latents": [{"hook": nodes[j][1], "latent": nodes[j][2],
                                    "atp": float(atp_mean[j]), "exact": float(exact_mean[j])}
                                   for j in sorted(missed, key=lambda j: -abs(exact_mean[j]))[:20]],
    }
    out["by_site"] = _by_site(nodes, atp_mean, exact_mean, is_latent, active)
    if sampled is not None and sampled.get("miss_rate_ci95"):
        pool = [j for j in np.flatnonzero(active) if j not in set(top_latents)]
        n_real_pool = len([j for j in pool if real[j]])
        true_rate = n_real_pool / len(pool) if pool else None
        lo, hi = sampled["miss_rate_ci95"]
        out["sampled_check"] = {"true_miss_rate": true_rate, "sampled_ci95": [lo, hi],
                                "covered": None if true_rate is None else lo <= true_rate <= hi,
                                "pool_size": len(pool), "n_real_in_pool": n_real_pool,
                                **coverage_judgement(n_real_pool)}
    return out


def _by_site(nodes: Sequence[Any], est: np.ndarray, exact: np.ndarray, is_latent: np.ndarray,
             active: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per site: Spearman over its moving latents and the relative L1 error of its nodes'
    means (latents and errors), so the estimators can be told apart site kind by site kind."""
    from scipy.stats import spearmanr

    site = np.array([n[1] for n in nodes])
    out = {}
    for h in dict.fromkeys(site):
        moving = (site[is_latent] == h) & active
        on = site == h
        total = float(np.abs(exact[on]).sum())
        out[str(h)] = {
            "n_active_latents": int(moving.sum()),
            "spearman_active_latents": _rho(spearmanr(est[is_latent][moving],
                                                      exact[is_latent][moving]))
            if moving.sum() >= 2 else None,
            "relative_l1_error": float(np.abs(est[on] - exact[on]).sum()) / total
            if total > 0 else None}
    return out


def _rho(result: Any) -> float | None:
    value = float(result.statistic)
    return value if np.isfinite(value) else None


def write_exact(path: str | Path, results: Mapping[str, ExactResult],
                config: Mapping[str, Any] | None) -> None:
    """HDF5 (atomic): ``pair_id, lengths [n]``; per mode and hook ``latent_effect [n, d_sae]``
    and (with_error) ``error_effect [n, P]``; mode attributes ``n_run`` and ``cost`` (JSON:
    seconds per row, and against one forward pass). Root attributes
    ``provenance``, ``hooks``, ``position_offsets``."""
    import json

    import h5py

    from saeflow.core.io import atomic_path
    from saeflow.core.provenance import provenance_json

    first = next(iter(results.values()))
    P = int(first.lengths.max())
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["provenance"] = provenance_json(dict(config or {}))
        f.attrs["hooks"] = json.dumps(list(first.latent_effect))
        f.attrs["position_offsets"] = json.dumps(position_offsets(P))
        f["pair_id"], f["lengths"] = first.pair_ids, first.lengths
        for mode, r in results.items():
            group = f.create_group(mode)
            group.attrs["n_run"] = r.n_run
            group.attrs["cost"] = json.dumps(r.cost)
            for kind in ("latent_effect", "error_effect"):
                for h, arr in getattr(r, kind).items():
                    f.create_dataset(f"{mode}/{h}/{kind}", data=arr, compression="gzip")


def read_exact(path: str | Path) -> dict[str, ExactResult]:
    """``{mode: ExactResult}`` from :func:`write_exact`, through the checked HDF5 opener: a
    missing or damaged file, dataset, hook group or attribute is an InputError naming it."""
    from saeflow.formats.hdf5 import json_attr, open_h5, read_array, reading, require

    out = {}
    with open_h5(path) as f:
        hooks = json_attr(f, "hooks", path)
        pair_ids, lengths = read_array(f, "pair_id", path), read_array(f, "lengths", path)
        for mode, with_error in MODES.items():
            if mode not in f:
                continue
            with reading(path, f"{mode}/attrs/n_run"):
                n_run = int(f[mode].attrs["n_run"])
            cost = json_attr(f[mode], "cost", path) if "cost" in f[mode].attrs else {}
            r = ExactResult(with_error, pair_ids, lengths, n_run=n_run, cost=cost)
            for h in hooks:
                group = require(f, f"{mode}/{h}", path, "group")
                for kind in ("latent_effect", "error_effect"):
                    if kind != "error_effect" or kind in group:  # the error: with_error only
                        getattr(r, kind)[h] = read_array(f, f"{mode}/{h}/{kind}", path)
            out[mode] = r
    return out


def exact_stage(run: PatchRun, out_path: str | Path,
                config: Mapping[str, Any] | None = None) -> None:
    """Rule ``patch_exact``: exhaustive exact patching in both modes into ``out_path``."""
    write_exact(out_path, {mode: exhaustive_patching(run.model, run.saes, run.batches, we,
                                                     run.cfg.max_batch)
                           for mode, we in MODES.items()}, config)
