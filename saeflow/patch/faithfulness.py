"""Is the AtP circuit the mechanism? Faithfulness and completeness under mean ablation, the top
latents' activations over positions, and the ``patch_verify`` stage that writes them together
with the AtP-vs-exact check of :func:`saeflow.patch.attribution.verify_atp`.

``F(C)`` is the mean clean-prompt logit difference when the nodes in ``C`` run freely and every
other node is replaced by its mean over the clean and corrupted prompts at the same (right-
aligned) position. ``faithfulness(n) = (F(top n) - F(none)) / (F(M) - F(none))`` with ``F(M)``
the model itself (as in Sparse Feature Circuits, Marks et al. 2024), and ``completeness(n)``
the same ratio for ``F(all but top n)`` (near 0 = nothing left outside). Nodes are ranked by
``|mean AtP|`` (:func:`saeflow.patch.attribution.rank_nodes`) on one share of the pairs and
evaluated on the others; random node orders give the baseline curve; intervals are a
percentile bootstrap over the evaluation pairs' clusters (:mod:`saeflow.patch.bootstrap`).
The split (:func:`held_out_split`) is the circuit's too (:mod:`saeflow.patch.circuit`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saeflow.core.errors import InputError
from saeflow.patch.attribution import (
    MODES,
    AtPResult,
    Node,
    nan_to_none,
    rank_nodes,
    read_atp,
    verify_atp,
)
from saeflow.patch.bootstrap import Clusters, percentile_interval
from saeflow.patch.pairs import PairBatch, align_right, logit_diff, position_offsets
from saeflow.patch.splice import PatchRun, SparseAct, run_spliced


@torch.no_grad()
def node_means(run: PatchRun, with_error: bool) -> dict[str, SparseAct]:
    """Each node's mean over the clean + corrupted prompts of ``run.batches`` at each
    right-aligned position: ``act [P, d_sae]``, ``res [P, d_model]`` (``None`` without the
    error term); ``P`` is ``run.width`` (the alignment of a ranking made on more pairs)."""
    model, saes, P, dev = run.model, run.saes, run.width, run.model.cfg.device
    sums: dict[str, SparseAct] = {}
    counts = torch.zeros(P, 1, device=dev)
    for c in (c for b in run.batches for c in b.chunks(run.cfg.max_batch)):
        T = c.length
        for tokens in (c.clean, c.corrupted):
            _, nodes = run_spliced(model, saes, tokens.to(dev), with_error)
            for h, nd in nodes.items():
                s = sums.setdefault(h, SparseAct(
                    nd.act.new_zeros(P, nd.act.shape[-1]),
                    None if nd.res is None else nd.res.new_zeros(P, nd.res.shape[-1])))
                s.act[P - T:] += nd.act.sum(0)
                if nd.res is not None and s.res is not None:
                    s.res[P - T:] += nd.res.sum(0)
        counts[P - T:] += 2 * len(c)
    counts = counts.clamp(min=1)  # columns no pair reaches: never read
    return {h: SparseAct(s.act / counts, None if s.res is None else s.res / counts)
            for h, s in sums.items()}


@torch.no_grad()
def faithfulness_curve(run: PatchRun, ranking: Sequence[Node], ns: Sequence[int],
                       means: Mapping[str, SparseAct], with_error: bool,
                       random_rankings: Sequence[Sequence[Node]] = ()) -> dict[str, Any]:
    """Faithfulness and completeness of the top-``n`` nodes of ``ranking`` for each ``n``, as in
    Sparse Feature Circuits: ``(F(C) - F(none)) / (F(M) - F(none))`` with ``F(M)`` the model
    itself (no SAE), in both modes, so an error-free splice that is a different model shows
    as faithfulness below 1 with every node kept. ``random_rankings``: the same curve for
    random node orders (the baseline a ranking must beat). With ``run.cfg.n_bootstrap``,
    percentile bootstrap intervals over the pairs' clusters (numerator and denominator
    resampled together; ``run.cfg.ci``, ``run.cfg.seed``; :mod:`saeflow.patch.bootstrap`).

    Every variant (all nodes, none, top n, all but top n, random top n) is a keep-mask over
    nodes; the variants run as stacked copies of the clean batch, ``run.cfg.max_batch`` rows
    per pass. Error nodes' columns are right-aligned to ``run.width``, which ``means`` must
    share.
    """
    model, saes, max_batch = run.model, run.saes, run.cfg.max_batch
    n_boot, ci, seed = run.cfg.n_bootstrap, run.cfg.ci, run.cfg.seed
    P, dev, N = run.width, model.cfg.device, len(ranking)
    ns = sorted({min(int(n), N) for n in ns})
    orders = [list(ranking), *map(list, random_rankings)]
    # per ordering, the rank of every node; a variant keeps ranks < cut (or >= cut, inverted)
    rank_lat = [{h: torch.full((means[h].act.shape[-1],), N, device=dev) for h in saes}
                for _ in orders]
    rank_err = [{h: torch.full((P,), N, device=dev) for h in saes} for _ in orders]
    for o, order in enumerate(orders):
        for r, (kind, h, i) in enumerate(order):
            (rank_lat[o] if kind == "latent" else rank_err[o])[h][i] = r
    variants = ([(0, N, False), (0, 0, False)] + [(0, n, False) for n in ns]
                + [(0, n, True) for n in ns]
                + [(o, n, False) for o in range(1, len(orders)) for n in ns])
    keep_lat = {h: torch.stack([(rank_lat[o][h] < cut) ^ inv for o, cut, inv in variants])
                for h in saes}  # [V, d_sae]
    keep_err = {h: torch.stack([(rank_err[o][h] < cut) ^ inv for o, cut, inv in variants])
                for h in saes}  # [V, P]
    per_pair, model_ld = [], []
    for c in (c.to(dev) for b in run.batches for c in b.chunks(max_batch)):
        n, T = len(c), c.length
        model_ld.append(logit_diff(model(c.clean), c.clean_answer, c.corrupted_answer)
                        .double().cpu())
        per_pass, rows = max(1, max_batch // n), []
        for s in range(0, len(variants), per_pass):
            vs = slice(s, s + per_pass)
            v = len(variants[vs])

            def edit_lat(h: str, f: torch.Tensor, vs: slice = vs, n: int = n, T: int = T):
                keep = keep_lat[h][vs].repeat_interleave(n, 0)[:, None, :]
                return torch.where(keep, f, means[h].act[P - T:])

            def edit_err(h: str, e: torch.Tensor, vs: slice = vs, n: int = n, T: int = T):
                keep = keep_err[h][vs][:, P - T:].repeat_interleave(n, 0)[:, :, None]
                return torch.where(keep, e, means[h].res[P - T:])

            logits, _ = run_spliced(model, saes, c.clean.repeat(v, 1), with_error,
                                    edit_lat, edit_err if with_error else None)
            ld = logit_diff(logits, c.clean_answer.repeat(v), c.corrupted_answer.repeat(v))
            rows.append(ld.view(v, n).double().cpu())
        per_pair.append(torch.cat(rows))
    F_pairs = torch.cat(per_pair, 1).numpy()  # [V, n_pairs]
    M_pairs = torch.cat(model_ld).numpy()  # [n_pairs]
    ratios = _ratios(F_pairs, M_pairs, np.ones((1, F_pairs.shape[1])))[0]
    clusters = Clusters.of(run.batches)
    boots = _ratios(F_pairs, M_pairs, clusters.weights(n_boot, seed)) if n_boot else None
    F = F_pairs.mean(1)
    k = len(ns)

    def interval(j: int) -> list[float | None] | None:
        if boots is None:
            return None
        ok = boots[:, j][np.isfinite(boots[:, j])]
        return (nan_to_none(percentile_interval(ok, ci, clusters.n_clusters)) if len(ok)
                else [None, None])

    curve = []
    for j, n in enumerate(ns):
        point = {"n": n, "F_circuit": float(F[2 + j]), "faithfulness": nan_to_none(ratios[2 + j]),
                 "faithfulness_ci95": interval(2 + j), "F_complement": float(F[2 + k + j]),
                 "completeness": nan_to_none(ratios[2 + k + j]),
                 "completeness_ci95": interval(2 + k + j)}
        if len(orders) > 1:
            rand = ratios[[2 + 2 * k + o * k + j for o in range(len(orders) - 1)]]
            point["random_faithfulness_mean"] = nan_to_none(np.nanmean(rand))
            point["random_faithfulness_range"] = nan_to_none([np.nanmin(rand), np.nanmax(rand)])
        curve.append(point)
    return {"F_model": float(M_pairs.mean()), "F_all_nodes": float(F[0]), "F_empty": float(F[1]),
            "faithfulness_all_nodes": nan_to_none(ratios[0]), "n_nodes": N,
            "n_pairs": int(F_pairs.shape[1]), "n_random_rankings": len(orders) - 1,
            "normalisation": "(F(C) - F(none)) / (F(model) - F(none)); F = mean clean logit "
                             "difference, F(model) the model without SAEs, none = every node "
                             "mean-ablated",
            "interval_method": clusters.method(n_boot) if n_boot else None,
            "resampled": clusters.record() if n_boot else None,
            "curve": curve}


def _ratios(F_pairs: np.ndarray, M_pairs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[B, V]`` normalised F of every variant under pair weights ``[B, n]`` (a bootstrap
    resample's counts, or ones): ratio of means, NaN where F(model) = F(none)."""
    F = weights @ F_pairs.T / weights.sum(1, keepdims=True)  # [B, V]
    M = weights @ M_pairs / weights.sum(1)  # [B]
    span = M - F[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(span)[:, None] > 1e-9, (F - F[:, 1:2]) / span[:, None], np.nan)


@torch.no_grad()
def latent_activations(model: Any, saes: Mapping[str, Any], batches: Sequence[PairBatch],
                       latents: Sequence[tuple[str, int]], with_error: bool, max_batch: int = 256
                       ) -> dict[str, np.ndarray]:
    """Activations of ``latents`` on the clean and corrupted prompts: ``{"clean": [K, n, P],
    "corrupted": [K, n, P]}``, right-aligned, NaN where a prompt is shorter."""
    P, dev = max(b.length for b in batches), model.cfg.device
    if not latents:
        n = sum(len(b) for b in batches)
        return {"clean": np.zeros((0, n, P)), "corrupted": np.zeros((0, n, P))}
    out: dict[str, list[np.ndarray]] = {"clean": [], "corrupted": []}
    for c in (c for b in batches for c in b.chunks(max_batch)):
        for role, tokens in (("clean", c.clean), ("corrupted", c.corrupted)):
            _, nodes = run_spliced(model, saes, tokens.to(dev), with_error)
            acts = torch.stack([nodes[h].act[:, :, i] for h, i in latents])  # [K, n, T]
            out[role].append(align_right(acts.double().cpu().numpy(), P))
    return {role: np.concatenate(parts, axis=1) for role, parts in out.items()}


def top_latents_record(verified: Mapping[str, Any], acts: Mapping[str, np.ndarray],
                       atp: AtPResult, descriptions: Mapping[str, Mapping[int, str]]
                       ) -> dict[str, Any]:
    """The JSON record of the verified top latents: AtP, exact effect, description (or None),
    and activation at each position (per pair and mean over pairs, clean and corrupted)."""
    P = acts["clean"].shape[-1]
    latents = []
    for j, row in enumerate(verified["top"]):
        desc = descriptions.get(row["hook"], {}).get(row["latent"])
        with np.errstate(invalid="ignore"):
            latents.append({**row, "rank": j, "description": desc,
                            "mean_activation": {r: nan_to_none(np.nanmean(a[j], 0))
                                                for r, a in acts.items()},
                            "activation": {r: nan_to_none(a[j]) for r, a in acts.items()}})
    return {"mode": "with_error" if atp.with_error else "without_error",
            "position_offsets": position_offsets(P), "pair_ids": atp.pair_ids.tolist(),
            "latents": latents}


def split_pairs(pair_ids: np.ndarray, rank_share: float, seed: int
                ) -> tuple[np.ndarray, bool]:
    """A bool mask over ``pair_ids``: the pairs nodes are ranked on (a seeded random share);
    the rest evaluate the ranking. Fewer than 4 pairs: all rank and evaluate (not held out)."""
    n = len(pair_ids)
    if n < 4:
        return np.ones(n, dtype=bool), False
    k = min(max(1, round(rank_share * n)), n - 1)
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[:k]] = True
    return mask, True


@dataclass(frozen=True)
class Split:
    """A run's pairs split in two: ``rank_rows`` (bool mask in the run's pair order) choose
    (rank nodes, select a circuit) on ``select``; ``evaluate`` measures on the rest, aligned
    to the whole run's positions; ``record``: the JSON record of the split."""

    rank_rows: np.ndarray
    select: PatchRun
    evaluate: PatchRun
    record: dict[str, Any]


def held_out_split(run: PatchRun) -> Split:
    """:func:`split_pairs` of ``run``'s pairs (``patch.faithfulness_rank_share``, ``patch.seed``:
    the faithfulness curves and the circuit split alike) into the choosing and the measuring
    runs, both keeping ``run``'s alignment (``run.width``)."""
    cfg = run.cfg
    order = np.concatenate([np.asarray(b.pair_ids) for b in run.batches])
    rows, held_out = split_pairs(order, cfg.faithfulness_rank_share, cfg.seed)

    def part(keep: np.ndarray) -> PatchRun:
        ids = order[keep]
        batches = [b for b in (b.select(np.isin(b.pair_ids, ids)) for b in run.batches) if len(b)]
        return replace(run, batches=tuple(batches), n_positions=run.width)

    select = part(rows) if held_out else replace(run, n_positions=run.width)
    evaluate = part(~rows) if held_out else select
    record = {
        "held_out": held_out, "rank_pairs": order[rows].tolist(),
        "eval_pairs": [i for b in evaluate.batches for i in b.pair_ids],
        "n_rank": int(rows.sum()), "n_eval": sum(len(b) for b in evaluate.batches),
        "seed": cfg.seed, "rank_share": cfg.faithfulness_rank_share,
        "method": f"seeded random split (patch.seed): {cfg.faithfulness_rank_share:g} of the "
                  "pairs choose (rank the nodes by mean AtP), the rest are measured on" if
                  held_out else "too few pairs to split (< 4): chosen and measured on the same "
                  "pairs"}
    return Split(rows, select, evaluate, record)


def verify_stage(run: PatchRun, atp_path: str | Path,
                 descriptions: Mapping[str, Mapping[int, str]], out_verify: str | Path,
                 out_faithfulness: str | Path, out_top_latents: str | Path,
                 config: Mapping[str, Any] | None = None) -> None:
    """Rule ``patch_verify``: AtP vs exact, faithfulness curves (both modes) and the top
    latents of the error-term mode; all three JSON files are written only once all succeed."""
    from saeflow.core.io import write_json

    model, spliced, batches, cfg = run.model, run.saes, run.batches, run.cfg
    atps, _ = read_atp(atp_path)
    order = np.concatenate([np.asarray(b.pair_ids) for b in batches])
    for mode, atp in atps.items():
        if not np.array_equal(atp.pair_ids, order):
            raise InputError(atp_path, f"{mode}/pair_id", "pairs differ from the pairs file: "
                             "rerun patch_estimate")
        if set(atp.latent_effect) != set(spliced):
            raise InputError(atp_path, "hooks", f"{sorted(atp.latent_effect)} != SAE hooks "
                             f"{sorted(spliced)}: rerun patch_estimate")
    verify, faith = {}, {}
    split = held_out_split(run)
    held = split.evaluate  # the held-out pairs keep the ranking's alignment (every pair)
    for mode, atp in atps.items():
        verify[mode] = verify_atp(model, spliced, batches, atp, cfg)
        ranked = rank_nodes(atp, split.rank_rows)
        nodes = [n for n, _ in ranked]
        rng = np.random.default_rng(cfg.seed)
        shuffles = [[nodes[j] for j in rng.permutation(len(nodes))]
                    for _ in range(cfg.faithfulness_random)]
        means = node_means(held, MODES[mode])
        faith[mode] = faithfulness_curve(held, nodes, cfg.faithfulness_n, means, MODES[mode],
                                         shuffles)
        faith[mode]["split"] = split.record
        faith[mode]["ranking"] = [{"type": t, "hook": h, "index": i, "atp": v}
                                  for (t, h, i), v in ranked[:max(cfg.faithfulness_n, default=0)]]
    main = "with_error" if "with_error" in atps else next(iter(atps))
    top = [(r["hook"], r["latent"]) for r in verify[main]["top"]]
    acts = latent_activations(model, spliced, batches, top, MODES[main], cfg.max_batch)
    record = top_latents_record(verify[main], acts, atps[main], descriptions)
    write_json(out_verify, verify, dict(config or {}))
    write_json(out_faithfulness, faith, dict(config or {}))
    write_json(out_top_latents, record, dict(config or {}))
