"""Rule ``patch_summary``: the patching stage's headline numbers, and the toy-world check of
whether residual patching and the SAE latents point at the tokens where clean and corrupted
differ. Reads the outputs of :mod:`saeflow.patch.resid`, of every node estimator
(:mod:`saeflow.patch.estimators`, atp.h5's layout), :mod:`saeflow.patch.faithfulness`,
:mod:`saeflow.patch.circuit` and :mod:`saeflow.patch.exhaustive`; runs no model. Each
estimator is judged as its registry entry says.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saeflow.core.errors import InputError
from saeflow.patch.estimators import ESTIMATORS, estimator
from saeflow.patch.gate import NOT_APPLICABLE, gate, verdicts
from saeflow.patch.pairs import PatchConfig, position_offsets
from saeflow.patch.resid import NORMALISED_METHOD, ResidResult, read_resid, top_cell

log = logging.getLogger(__name__)


def diff_positions_for(truth: Mapping[str, Any], pair_ids: np.ndarray, lengths: np.ndarray,
                       source: str = "truth.json") -> list[list[int]]:
    """Each pair's difference positions (token indices, BOS = 0) from ``truth["pairs"]``, in the
    order of ``pair_ids``; the truth's length must match the tokenised pair."""
    by_id = {int(p["pair_id"]): p for p in truth.get("pairs", [])}
    out = []
    for pid, length in zip(pair_ids.tolist(), lengths.tolist(), strict=True):
        rec = by_id.get(int(pid))
        if rec is None:
            raise InputError(source, f"pair {pid}", "missing from truth['pairs']")
        if int(rec["length"]) != int(length):
            raise InputError(source, f"pair {pid}", f"truth length {rec['length']} != {length} "
                             "tokens here: truth and pairs come from different tokenisers")
        out.append([int(p) for p in rec["diff_positions"]])
    return out


def position_check(effect: np.ndarray, lengths: np.ndarray, diff_positions: Sequence[Sequence[int]]
                   ) -> list[dict[str, Any]]:
    """Does the effect sit where clean and corrupted differ, more often than chance? One record
    per layer of ``effect [n, n_layers, P]`` (right-aligned; ``diff_positions`` in each pair's
    own indices).

    Per layer: the share of pairs whose largest ``|effect|`` is at a difference position
    (``share_argmax_at_diff``) or at the final token, the mean share of ``|effect|`` mass on
    difference positions, and the chance share: an argmax drawn uniformly over a pair's
    positions lands on a difference position with probability ``|diffs| / T``, averaged over
    pairs. ``points_to_diff``: the share exceeds chance by a one-sided binomial test at 0.05
    (p at the mean chance rate: pairs' rates differ little, and at a common rate the count is
    binomial).
    """
    from scipy.stats import binomtest

    n, n_layers, P = effect.shape
    at_diff = np.zeros((n, P), dtype=bool)
    for i, (T, diffs) in enumerate(zip(lengths.tolist(), diff_positions, strict=True)):
        at_diff[i, [P - int(T) + d for d in diffs]] = True
    chance = float(np.mean([len(d) / int(T) for d, T in zip(diff_positions, lengths.tolist(),
                                                             strict=True)]))
    out = []
    for layer in range(n_layers):
        mag = np.nan_to_num(np.abs(effect[:, layer]))  # absent positions carry no mass
        arg = mag.argmax(1)
        total = mag.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mass = np.where(total > 0, (mag * at_diff).sum(1) / total, np.nan)
        hits = int(at_diff[np.arange(n), arg].sum())
        p = float(binomtest(hits, n, chance, alternative="greater").pvalue)
        out.append({"layer": layer, "share_argmax_at_diff": hits / n,
                    "chance_share": chance, "p_vs_chance": p,
                    "share_argmax_at_final": float((arg == P - 1).mean()),
                    "mass_at_diff": float(np.nanmean(mass)) if np.isfinite(mass).any() else None,
                    "points_to_diff": p < 0.05})
    return out


def embedding_identity_check(resid: ResidResult, diff_positions: Sequence[Sequence[int]],
                             tol: float = 1e-4) -> dict[str, Any]:
    """A truth residual patching must reproduce, not a hypothesis: at layer 0's
    ``hook_resid_pre`` (the embeddings) clean and corrupted differ only at the difference
    tokens, so for a pair differing in one token, patching that position makes the corrupted
    run the clean one (normalised effect exactly 1) and patching any other position changes
    nothing (effect exactly 0). A wrong position alignment, sign or hook fails it."""
    P = resid.patched.shape[-1]
    effect, gap = resid.effect[:, 0], resid.clean - resid.corrupted
    one = [i for i, d in enumerate(diff_positions) if len(d) == 1 and abs(gap[i]) > 1e-6]
    worst_diff = worst_other = 0.0
    for i in one:
        col = P - int(resid.lengths[i]) + diff_positions[i][0]
        worst_diff = max(worst_diff, abs(effect[i, col] / gap[i] - 1.0))
        others = np.delete(np.nan_to_num(effect[i]), col)
        worst_other = max(worst_other, float(np.abs(others).max() / abs(gap[i])))
    return {"n_single_token_pairs": len(one), "max_error_at_diff": worst_diff,
            "max_effect_elsewhere": worst_other, "tolerance": tol,
            "holds": bool(one) and worst_diff <= tol and worst_other <= tol}


def build_summary(resid: ResidResult, atps: Mapping[str, Any],
                  model_ld: tuple[np.ndarray, np.ndarray], verify: Mapping[str, Any],
                  faith: Mapping[str, Any], cfg: PatchConfig,
                  diff_positions: Sequence[Sequence[int]] | None = None) -> dict[str, Any]:
    """The stage's headline numbers (``results/{experiment}/patch/summary.json``).

    ``sae_gap`` is ``|mean SAE-spliced metric - mean model metric| / |model clean - corrupted|``
    per mode and role; ``sae_gap_flag`` is raised when the error-free splice exceeds
    ``cfg.sae_gap_tolerance`` (its latents then explain a different model) or when the splice
    with the error term does not reproduce the model (a bug, within 1e-3).
    """
    def means(clean: np.ndarray, corrupted: np.ndarray) -> dict[str, float]:
        return {"clean": float(np.mean(clean)), "corrupted": float(np.mean(corrupted))}

    ld = {"model": means(*model_ld)}
    ld.update({f"sae_{mode}": means(a.clean, a.corrupted) for mode, a in atps.items()})
    span = abs(ld["model"]["clean"] - ld["model"]["corrupted"])
    gap = {m: {r: (abs(ld[f"sae_{m}"][r] - ld["model"][r]) / span if span > 1e-9 else None)
               for r in ("clean", "corrupted")} for m in atps}
    limits = {"with_error": 1e-3, "without_error": cfg.sae_gap_tolerance}
    flag = any(v is None or v > limits[m] for m, g in gap.items() for v in g.values())
    offsets = position_offsets(resid.patched.shape[-1])
    layer, col = top_cell(resid.agg["effect_mean"])
    cell = {"layer": layer, "hook": f"blocks.{layer}.hook_resid_pre", "position": offsets[col],
            **{f"{k}_{s}": float(resid.agg[f"{k}_{s}"][layer, col])
               for k in ("effect", "normalised") for s in ("mean", "lo", "hi")},
            "normalised_method": NORMALISED_METHOD, "interval_method": resid.interval_method}
    summary: dict[str, Any] = {
        "n_pairs": int(len(resid.pair_ids)),
        "logit_diff": ld, "sae_gap": gap, "sae_gap_tolerance": cfg.sae_gap_tolerance,
        "sae_gap_flag": flag,
        "resid_top_cell": cell,
        "atp_vs_exact": {m: {k: verify[m].get(k) for k in (
            "top_k", "spearman", "spearman_p", "spearman_all", "false_negatives", "threshold",
            "miss_rate", "miss_rate_ci95", "missed_latents_upper95", "miss_rate_judgement")}
            | {"n_random": len(verify[m]["random"])} for m in atps},
        "faithfulness": {m: [{k: p.get(k) for k in (
            "n", "faithfulness", "faithfulness_ci95", "completeness", "completeness_ci95",
            "random_faithfulness_mean")} for p in faith[m]["curve"]] for m in atps},
        "faithfulness_all_nodes": {m: faith[m].get("faithfulness_all_nodes") for m in atps},
        "toy_check": None}
    if diff_positions is not None:
        check: dict[str, Any] = {"resid": position_check(resid.effect, resid.lengths,
                                                         diff_positions)}
        for mode, a in atps.items():
            hooks = list(a.latent_mass)
            per = position_check(np.stack([a.latent_mass[h] for h in hooks], 1), a.lengths,
                                 diff_positions)
            check[f"latents_{mode}"] = [{"hook": h, **{k: v for k, v in p.items() if k != "layer"}}
                                        for h, p in zip(hooks, per, strict=True)]
        # Layer 0 points at the difference by construction; the checks that can fail are the
        # identity there and, above it, whether the effect beats chance.
        check["embedding_identity"] = embedding_identity_check(resid, diff_positions)
        check["resid_points_to_diff_above_layer_0"] = [r["points_to_diff"]
                                                       for r in check["resid"][1:]]
        summary["toy_check"] = check
    return summary


def exhaustive_comparison(results: Mapping[str, Any], exact: Mapping[str, Any],
                          verify: Mapping[str, Any], cfg: PatchConfig, source: str | Path,
                          sampled: bool = True) -> dict[str, Any]:
    """Per mode, one estimator's results (AtP or IG, :class:`~saeflow.patch.attribution.
    AtPResult`) against the exhaustive reference (:func:`saeflow.patch.exhaustive.
    compare_with_exact`), real nodes judged by patch_verify's threshold; ``sampled``: check
    patch_verify's miss-rate interval too (it sampled around AtP's top k, so AtP only).
    ``relative_l1_error``: ``sum |estimate - exact| / sum |exact|`` over the nodes' means;
    ``gate``: :func:`saeflow.patch.gate.gate` on every measure (``patch.gate``)."""
    from saeflow.patch.exhaustive import compare_with_exact, node_means

    out = {}
    for mode, r in results.items():
        if mode not in exact or not np.array_equal(exact[mode].pair_ids, r.pair_ids):
            raise InputError(source, mode, "no exact effects for this mode's pairs (the exact "
                             "and the estimator's file come from different runs)")
        out[mode] = compare_with_exact(r, exact[mode], cfg.exhaustive_k, cfg.top_k,
                                       float(verify[mode]["threshold"]),
                                       verify[mode] if sampled else None)
        out[mode]["n_run"] = exact[mode].n_run
        est, ref = node_means(r)[1], node_means(exact[mode])[1]
        keep = np.isfinite(est) & np.isfinite(ref)
        total = float(np.abs(ref[keep]).sum())
        out[mode]["relative_l1_error"] = (float(np.abs(est[keep] - ref[keep]).sum()) / total
                                          if total > 0 else None)
        out[mode]["gate"] = gate(out[mode], cfg.gate)
    return out


# The columns of the estimator table, each with whether higher is better.
COMPARISON_COLUMNS = {"spearman_active_latents": True, "sign_agreement_real": True,
                      "false_negatives": False, "relative_l1_error": False}


def estimator_comparison(vs_exhaustive: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per mode, the estimators (``{name: exhaustive_comparison output}``) side by side:
    ``recall@k`` for each k, Spearman over the active latents, sign agreement over the real
    nodes, false negatives and the relative L1 error of the node means, one row per estimator;
    ``best`` names, per column, the estimators at the best value (more than one on a tie, none
    where no value exists); ``gate``: each estimator's gate verdict."""
    modes = next(iter(vs_exhaustive.values()))
    out: dict[str, Any] = {}
    for mode in modes:
        rows = {name: {**{f"recall@{a['k']}": a["recall"] for a in vs[mode]["at_k"]},
                       **{c: vs[mode][c] for c in COMPARISON_COLUMNS}}
                for name, vs in vs_exhaustive.items()}
        best = {}
        for col in next(iter(rows.values())):
            values = {name: row[col] for name, row in rows.items() if row[col] is not None}
            if not values:
                best[col] = []
                continue
            top = (max if COMPARISON_COLUMNS.get(col, True) else min)(values.values())
            best[col] = [name for name, v in values.items() if v == top]
        out[mode] = {"rows": [{"estimator": name, **row} for name, row in rows.items()],
                     "best": best, "by_site": _by_site(vs_exhaustive, mode),
                     "gate": verdicts({name: vs[mode] for name, vs in vs_exhaustive.items()})}
    return out


def _by_site(vs_exhaustive: Mapping[str, Mapping[str, Any]], mode: str) -> dict[str, Any]:
    """Per site, each estimator's Spearman over the site's moving latents and which is best:
    where each estimator wins (an attention site's patterns, a transcoder's MLP)."""
    sites: dict[str, Any] = {}
    for name, vs in vs_exhaustive.items():
        for site, row in vs[mode].get("by_site", {}).items():
            cell = sites.setdefault(site, {"spearman_active_latents": {},
                                           "relative_l1_error": {}})
            for col in cell:
                cell[col][name] = row[col]
    for cell in sites.values():
        rho = {k: v for k, v in cell["spearman_active_latents"].items() if v is not None}
        cell["best"] = [k for k, v in rho.items() if v == max(rho.values())] if rho else []
    return sites


MAGNITUDE_VIEW = ("every per-pair effect replaced by its magnitude, node means of |exact| as "
                  "the reference: GradDrop estimates magnitudes, so AtP is judged as |AtP| too")


def magnitude_comparison(atps: Mapping[str, Any], estimates: Mapping[str, Mapping[str, Any]],
                         exact: Mapping[str, Any], verify: Mapping[str, Any], cfg: PatchConfig,
                         source: str | Path) -> dict[str, Any]:
    """The magnitude estimators (``{name: {mode: result}}``, GradDrop) and ``|AtP|`` against
    the mean ``|exact|`` of every node (:data:`MAGNITUDE_VIEW`), each as
    :func:`exhaustive_comparison` reports, and side by side; each gated on the measures that
    apply to magnitudes (no sign; no relative L1 error for a rank-only estimator)."""
    from saeflow.patch.graddrop import magnitudes

    abs_exact = {mode: magnitudes(x) for mode, x in exact.items()}
    vs = {"atp": exhaustive_comparison({m: magnitudes(a) for m, a in atps.items()}, abs_exact,
                                       verify, cfg, source, sampled=False)}
    for name, results in estimates.items():
        vs[name] = exhaustive_comparison(results, abs_exact, verify, cfg, source, sampled=False)
    for name, modes in vs.items():
        skip = {"sign_agreement_real": NOT_APPLICABLE["magnitude_sign"]}
        if name != "atp" and estimator(name).rank_only:
            # GradDrop's 1 / (L - 1) scales it past the effect's own size: only ranks compare
            skip["relative_l1_error"] = NOT_APPLICABLE["rank_only"]
        for result in modes.values():
            result["sign_agreement_real"] = None
            if "relative_l1_error" in skip:
                result["relative_l1_error"] = None
            result["gate"] = gate(result, cfg.gate, skip)
    return {"view": MAGNITUDE_VIEW, **vs, "estimator_comparison": estimator_comparison(vs)}


def estimator_agreement(atps: Mapping[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """Without the exhaustive reference: per mode, Spearman between AtP's and another
    estimator's (IG's) node means (over every node, and over the latents whose value differs
    in some pair)."""
    from saeflow.patch.exhaustive import node_means

    out = {}
    for mode, atp in atps.items():
        a, b = node_means(atp)[1], node_means(other[mode])[1]
        finite = np.isfinite(a) & np.isfinite(b)
        # latents come first in node order; error nodes are never "active latents"
        active = np.concatenate([d.sum(0) > 0 for d in atp.latent_delta.values()])
        active = np.concatenate([active, np.zeros(len(a) - len(active), bool)])
        out[mode] = {"spearman_all_nodes": _rho(a[finite], b[finite]),
                     "spearman_active_latents": _rho(a[active], b[active])}
    return out


def _rho(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import spearmanr

    if len(a) < 2:
        return None
    value = float(spearmanr(a, b).statistic)
    return value if np.isfinite(value) else None


@dataclass(frozen=True)
class SummaryInputs:
    """The files patch_summary reads: ``resid`` (resid.h5); ``estimates``: each node
    estimator's file by name (a key of :data:`saeflow.patch.estimators.ESTIMATORS`; ``atp``
    required); ``verify``, ``faithfulness`` (patch_verify's JSON); optional: ``truth`` (the
    toy world's truth.json), ``exact`` (exact.h5, the exhaustive reference) and ``circuit``
    (circuit.json)."""

    resid: str | Path
    estimates: Mapping[str, str | Path]
    verify: str | Path
    faithfulness: str | Path
    truth: str | Path | None = None
    exact: str | Path | None = None
    circuit: str | Path | None = None


def summary_stage(inputs: SummaryInputs, cfg: PatchConfig, out_path: str | Path,
                  config: Mapping[str, Any] | None = None) -> None:
    """Rule ``patch_summary``: read the stage's outputs, write ``summary.json``. With
    ``inputs.exact``, AtP and every signed estimator are judged against each node's exact
    effect and compared (``{name}_vs_exhaustive``, ``estimator_comparison``), the magnitude
    estimators (GradDrop) and ``|AtP|`` against the mean ``|exact|`` per node
    (``magnitude_vs_exhaustive``); without it, IG is compared with AtP (``ig_vs_atp``)."""
    from saeflow.core.io import read_json, write_json
    from saeflow.patch.attribution import read_atp
    from saeflow.patch.exhaustive import read_exact

    for name in inputs.estimates:
        estimator(name)  # an unknown name is an InputError
    if "atp" not in inputs.estimates:
        raise InputError("config", "patch.estimators", "atp missing: it always runs")
    paths = {name: inputs.estimates[name] for name in ESTIMATORS if name in inputs.estimates}
    resid = read_resid(inputs.resid)
    atps, model_ld = read_atp(paths["atp"])
    results = {name: atps if name == "atp" else read_atp(path)[0] for name, path in paths.items()}
    for name, res in results.items():
        for mode, a in res.items():
            if not np.array_equal(a.pair_ids, resid.pair_ids):
                raise InputError(paths[name], f"{mode}/pair_id",
                                 f"pairs differ from {inputs.resid}")
        if set(res) != set(atps):
            raise InputError(paths[name], "<modes>",
                             f"{sorted(res)}, but atp.h5 has {sorted(atps)}")
    diffs = None
    if inputs.truth is not None:
        diffs = diff_positions_for(read_json(inputs.truth), resid.pair_ids, resid.lengths,
                                   str(inputs.truth))
    verify = read_json(inputs.verify)
    summary = build_summary(resid, atps, model_ld, verify, read_json(inputs.faithfulness), cfg,
                            diffs)
    summary["estimators"] = list(results)
    if inputs.circuit is not None:
        circuit = read_json(inputs.circuit)
        summary["circuit"] = {"n_nodes": len(circuit["nodes"]), "n_edges": len(circuit["edges"]),
                              "edge_check": {k: v for k, v in circuit["edge_check"].items()
                                             if k != "edges"},
                              "faithfulness": circuit["faithfulness"],
                              "split": {k: circuit["split"][k] for k in (
                                  "held_out", "n_rank", "n_eval", "seed", "method")}}
    signed = {n: r for n, r in results.items() if ESTIMATORS[n].values == "signed"}
    if inputs.exact is not None:
        exact = read_exact(inputs.exact)
        # verify sampled around AtP's top k: its miss-rate interval is checked for AtP only
        vs = {name: exhaustive_comparison(r, exact, verify, cfg, inputs.exact,
                                          sampled=name == "atp") for name, r in signed.items()}
        summary.update({f"{name}_vs_exhaustive": v for name, v in vs.items()})
        summary["estimator_comparison"] = estimator_comparison(vs)
        mags = {n: r for n, r in results.items() if ESTIMATORS[n].values == "magnitudes"}
        if mags:
            summary["magnitude_vs_exhaustive"] = magnitude_comparison(atps, mags, exact, verify,
                                                                      cfg, inputs.exact)
    else:
        summary.update({f"{name}_vs_atp": estimator_agreement(atps, r)
                        for name, r in results.items() if ESTIMATORS[name].vs_atp})
    if summary["sae_gap_flag"]:
        log.warning("SAE splice gap %s exceeds tolerance: latent effects describe a different "
                    "model than the one patched", summary["sae_gap"])
    write_json(out_path, summary, dict(config or {}))
