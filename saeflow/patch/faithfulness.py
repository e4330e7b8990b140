"""Is the AtP circuit the mechanism? Faithfulness and completeness under mean ablation, the top
latents' activations over positions, and the ``patch_verify`` stage that writes them together
with the AtP-vs-exact check of :func:`saeflow.patch.attribution.verify_atp`.

``F(C)`` is the mean clean-prompt logit difference when the nodes in ``C`` run freely and every
other node is replaced by its mean over the clean and corrupted prompts at the same (right-
aligned) position. ``faithfulness(n) = (F(top n) - F(none)) / (F(all) - F(none))`` and
``completeness(n)`` is the same ratio for ``F(all but top n)`` (near 0 = nothing left outside).
Nodes are ranked by ``|mean AtP|`` (:func:`saeflow.patch.attribution.rank_nodes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saeflow.patch.attribution import (MODES, AtPResult, Node, SparseAct, nan_to_none, prepare_saes,
                                 rank_nodes, read_atp, run_spliced, to_sae_transformer,
                                 verify_atp)
from saeflow.core.errors import InputError
from saeflow.patch.resid import (PairBatch, PatchConfig, align_right, check_batches, logit_diff,
                              position_offsets)


@torch.no_grad()
def node_means(model: Any, saes: Mapping[str, Any], batches: Sequence[PairBatch],
               with_error: bool, max_batch: int = 256) -> dict[str, SparseAct]:
    """Each node's mean over clean + corrupted prompts at each right-aligned position:
    ``act [P, d_sae]``, ``res [P, d_model]`` (``None`` without the error term)."""
    P, dev = max(b.length for b in batches), model.cfg.device
    sums: dict[str, SparseAct] = {}
    counts = torch.zeros(P, 1, device=dev)
    for c in (c for b in batches for c in b.chunks(max_batch)):
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
    return {h: SparseAct(s.act / counts, None if s.res is None else s.res / counts)
            for h, s in sums.items()}


@torch.no_grad()
def faithfulness_curve(model: Any, saes: Mapping[str, Any], batches: Sequence[PairBatch],
                       ranking: Sequence[Node], ns: Sequence[int], means: Mapping[str, SparseAct],
                       with_error: bool, max_batch: int = 256) -> dict[str, Any]:
    """Faithfulness and completeness of the top-``n`` nodes of ``ranking`` for each ``n``.

    Every variant (all nodes, none, top n, all but top n) is a keep-mask over nodes; the
    variants run as stacked copies of the clean batch, ``max_batch`` rows per forward pass.
    """
    P, dev, N = max(b.length for b in batches), model.cfg.device, len(ranking)
    ns = sorted({min(int(n), N) for n in ns})
    # Rank of every node; a variant keeps the nodes with rank < cut (or >= cut if inverted).
    rank_lat = {h: torch.full((means[h].act.shape[-1],), N, device=dev) for h in saes}
    rank_err = {h: torch.full((P,), N, device=dev) for h in saes}
    for r, (kind, h, i) in enumerate(ranking):
        (rank_lat if kind == "latent" else rank_err)[h][i] = r
    variants = [(N, False), (0, False)] + [(n, False) for n in ns] + [(n, True) for n in ns]
    cuts = torch.tensor([v[0] for v in variants], device=dev)[:, None]
    inv = torch.tensor([v[1] for v in variants], device=dev)[:, None]
    keep_lat = {h: (r[None] < cuts) ^ inv for h, r in rank_lat.items()}  # [V, d_sae]
    keep_err = {h: (r[None] < cuts) ^ inv for h, r in rank_err.items()}  # [V, P]
    totals, n_pairs = torch.zeros(len(variants), dtype=torch.float64), 0
    for c in (c.to(dev) for b in batches for c in b.chunks(max_batch)):
        n, T = len(c), c.length
        per_pass = max(1, max_batch // n)
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
            totals[vs] += ld.view(v, n).double().sum(1).cpu()
        n_pairs += n
    F = (totals / n_pairs).tolist()
    f_all, f_none, span = F[0], F[1], F[0] - F[1]

    def ratio(x: float) -> float | None:
        return (x - f_none) / span if abs(span) > 1e-9 else None

    k = len(ns)
    return {"F_model": f_all, "F_empty": f_none, "n_nodes": N,
            "curve": [{"n": n, "F_circuit": F[2 + j], "faithfulness": ratio(F[2 + j]),
                       "F_complement": F[2 + k + j], "completeness": ratio(F[2 + k + j])}
                      for j, n in enumerate(ns)]}


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


def verify_stage(model: Any, saes: Sequence[Any], batches: Sequence[PairBatch],
                 atp_path: str | Path, cfg: PatchConfig,
                 descriptions: Mapping[str, Mapping[int, str]], out_verify: str | Path,
                 out_faithfulness: str | Path, out_top_latents: str | Path,
                 config: Mapping[str, Any] | None = None) -> None:
    """Rule ``patch_verify``: AtP vs exact, faithfulness curves (both modes) and the top
    latents of the error-term mode; all three JSON files are written only once all succeed."""
    from saeflow.core.io import write_json

    model = to_sae_transformer(model)
    spliced = prepare_saes(model, saes)
    check_batches(model, batches)
    atps, _ = read_atp(atp_path)
    order = np.concatenate([np.asarray(b.pair_ids) for b in batches])
    for mode, atp in atps.items():
        if not np.array_equal(atp.pair_ids, order):
            raise InputError(atp_path, f"{mode}/pair_id", "pairs differ from the pairs file: "
                             "rerun patch_atp")
        if set(atp.latent_effect) != set(spliced):
            raise InputError(atp_path, "hooks", f"{sorted(atp.latent_effect)} != SAE hooks "
                             f"{sorted(spliced)}: rerun patch_atp")
    verify, faith = {}, {}
    for mode, atp in atps.items():
        verify[mode] = verify_atp(model, spliced, batches, atp, cfg)
        ranked = rank_nodes(atp)
        means = node_means(model, spliced, batches, MODES[mode], cfg.max_batch)
        faith[mode] = faithfulness_curve(model, spliced, batches, [n for n, _ in ranked],
                                         cfg.faithfulness_n, means, MODES[mode], cfg.max_batch)
        faith[mode]["ranking"] = [{"type": t, "hook": h, "index": i, "atp": v}
                                  for (t, h, i), v in ranked[:max(cfg.faithfulness_n, default=0)]]
    main = "with_error" if "with_error" in atps else next(iter(atps))
    top = [(r["hook"], r["latent"]) for r in verify[main]["top"]]
    acts = latent_activations(model, spliced, batches, top, MODES[main], cfg.max_batch)
    record = top_latents_record(verify[main], acts, atps[main], descriptions)
    write_json(out_verify, verify, dict(config or {}))
    write_json(out_faithfulness, faith, dict(config or {}))
    write_json(out_top_latents, record, dict(config or {}))
