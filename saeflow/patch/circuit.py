"""Rule ``patch_circuit``: the sparse feature circuit of the pairs (with the SAE error term):
nodes above the node threshold, edges above the edge threshold between them
(:mod:`saeflow.patch.edges`), the exact check of the strongest edges, and the faithfulness and
completeness of the circuit, pruned by its nodes and by its edges
(:mod:`saeflow.patch.edge_pruning`). Thresholds are shares of ``|mean(clean - corrupted)|``
(``patch.circuit``), so one setting reads the same on any model and metric scale.

The circuit is chosen on one part of the pairs and measured on the other (the faithfulness
curves' split, :func:`saeflow.patch.faithfulness.held_out_split`): nodes, edges, thresholds
and the edge check use the choosing pairs; faithfulness and completeness (node and edge
pruned, the mean ablations' means included) only the held-out ones, so a circuit is not
scored on the pairs that picked it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from saeflow.core.errors import InputError
from saeflow.patch.attribution import AtPResult, Node, nan_to_none, rank_nodes, read_atp
from saeflow.patch.edge_pruning import (
    edge_pruned_F,
    edge_pruned_record,
    model_and_empty_F,
)
from saeflow.patch.edges import (
    METRIC,
    edge_attribution,
    exact_edge,
    node_positions,
    select_nodes,
    site_order,
)
from saeflow.patch.bootstrap import Clusters
from saeflow.patch.faithfulness import faithfulness_curve, held_out_split, node_means
from saeflow.patch.pairs import position_offsets
from saeflow.patch.splice import PatchRun, site_outputs


# what each part of the split (circuit.json's ``split``) is used for
SPLIT_ROLES = {"chosen_on": "rank_pairs: node scores, the thresholds' total effect, edges, node "
                            "positions, the edge check",
               "measured_on": "eval_pairs: faithfulness, completeness, edge_pruned (and the "
                              "node means they ablate to)"}


def node_id(node: Node | str) -> str:
    return node if isinstance(node, str) else f"{node[1]}/{node[0]}/{node[2]}"


def build_circuit(run: PatchRun, atp: AtPResult,
                  descriptions: Mapping[str, Mapping[int, str]]) -> dict[str, Any]:
    """The circuit record (docs/outputs.md, ``circuit.json``); ``atp`` with the error term, in
    ``run``'s pair order. Chosen on one part of the pairs, measured on the rest (module
    docstring; ``split`` records which)."""
    from scipy.stats import spearmanr

    model, saes, cfg = run.model, run.saes, run.cfg
    opts = cfg.circuit
    sites = site_order(list(saes))
    split = held_out_split(run)
    batches, P = split.select.batches, run.width  # the choosing pairs, every pair's alignment
    total = abs(float(np.mean((atp.clean - atp.corrupted)[split.rank_rows])))
    node_thr, edge_thr = opts["node_threshold"] * total, opts["edge_threshold"] * total
    ranked = rank_nodes(atp, split.rank_rows)
    selected = select_nodes(atp, sites, node_thr, opts["max_nodes_per_site"], ranked)
    scores = dict(ranked)
    edges = edge_attribution(model, saes, batches, sites, selected, cfg.max_batch, P)
    kept = {e: v for e, v in edges.items() if abs(v) >= edge_thr}
    offsets = position_offsets(P)
    chosen = [n for h in sites for n in selected[h]]
    where = node_positions(model, saes, batches, [n for n in chosen if n[0] == "latent"],
                           cfg.max_batch, P)
    nodes = [{"id": node_id(n), "site": n[1], "site_index": sites.index(n[1]), "kind": n[0],
              "latent": n[2] if n[0] == "latent" else None,
              "position": offsets[where[n] if n[0] == "latent" else n[2]],
              "description": descriptions.get(n[1], {}).get(n[2]) if n[0] == "latent" else None,
              "score": scores[n]} for n in chosen]
    check_edges = sorted((e for e in kept if e[1] != METRIC), key=lambda e: -abs(kept[e]))
    check_edges = check_edges[:opts["n_check_edges"]]
    exact = [exact_edge(model, saes, batches, a, b, cfg.max_batch, width=P)
             for a, b in check_edges]
    estimate = [kept[e] for e in check_edges]
    check: dict[str, Any] = {
        "n_checked": len(check_edges),
        "edges": [{"source": node_id(a), "target": node_id(b), "estimate": v, "exact": x}
                  for (a, b), v, x in zip(check_edges, estimate, exact, strict=True)]}
    if len(check_edges) >= 2:
        check["spearman"] = nan_to_none(spearmanr(estimate, exact).statistic)
        check["sign_agreement"] = float(np.mean(np.sign(estimate) == np.sign(exact)))
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.abs(np.subtract(estimate, exact)) / np.abs(exact)
        check["median_relative_error"] = nan_to_none(np.nanmedian(rel)) \
            if np.isfinite(rel).any() else None
    in_circuit = set(chosen)
    ranking = chosen + [n for n, _ in ranked if n not in in_circuit]
    held = split.evaluate  # measured on the held-out pairs only
    means = node_means(held, True)
    faith = faithfulness_curve(held, ranking, [max(len(chosen), 1)], means, True)
    point = faith["curve"][0]
    F_model, F_empty = model_and_empty_F(held, sites, means)
    pruned = {complement: edge_pruned_F(held, sites, chosen, kept, means, complement)
              for complement in (False, True)}
    by_edges = edge_pruned_record(pruned[False], pruned[True], F_model, F_empty, cfg.n_bootstrap,
                                  cfg.ci, cfg.seed, Clusters.of(held.batches))
    writes = site_outputs(saes)
    return {"mode": "with_error", "sites": sites, "split": split.record | SPLIT_ROLES,
            "site_writes": {h: writes[h] for h in sites if writes[h] != h},  # transcoders
            "total_effect": total,
            "node_threshold": node_thr, "edge_threshold": edge_thr,
            "thresholds_method": "shares of |mean(clean - corrupted)| (patch.circuit)",
            "nodes": nodes,
            "edges": [{"source": node_id(a), "target": node_id(b), "score": v}
                      for (a, b), v in sorted(kept.items(), key=lambda kv: -abs(kv[1]))],
            "n_edges_computed": len(edges), "edge_check": check,
            "faithfulness": {k: point[k] for k in ("faithfulness", "faithfulness_ci95",
                                                   "completeness", "completeness_ci95")}
            | {"pruning": "nodes outside the circuit mean-ablated; every circuit node sees "
                          "every other", "normalisation": faith["normalisation"],
               "n_pairs": faith["n_pairs"], "interval_method": faith["interval_method"]},
            "edge_pruned": by_edges | {
                "pruning": "faithfulness: nodes outside the circuit at their means and each "
                           "circuit node (and the metric) computed without the circuit nodes "
                           "it keeps no edge from; completeness: every node kept, the "
                           "circuit's kept edges cut (saeflow.patch.edge_pruning)",
                "n_edges_kept": len(kept), "normalisation": faith["normalisation"]}}


def circuit_stage(run: PatchRun, atp_path: str | Path,
                  descriptions: Mapping[str, Mapping[int, str]], out_path: str | Path,
                  config: Mapping[str, Any] | None = None) -> None:
    """Rule ``patch_circuit``: read ``atp_path`` (atp.h5), write ``out_path`` (circuit.json)."""
    from saeflow.core.io import write_json

    atps, _ = read_atp(atp_path)
    atp = atps.get("with_error")
    order = np.concatenate([np.asarray(b.pair_ids) for b in run.batches])
    if atp is None or not np.array_equal(atp.pair_ids, order):
        raise InputError(atp_path, "with_error/pair_id", "no AtP with the error term for "
                         "these pairs: rerun patch_estimate")
    write_json(out_path, build_circuit(run, atp, descriptions), dict(config or {}))
