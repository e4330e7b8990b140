"""Faithfulness and completeness of a circuit pruned by its edges, not only its nodes.

Node pruning (:func:`saeflow.patch.faithfulness.faithfulness_curve`) lets every node of the
circuit ``C`` see every other one. Edge pruning also cuts the edges left out of the circuit:
a node ``b`` of ``C`` is computed with the upstream circuit nodes it has no kept edge from
set to their means, while the nodes it keeps edges from run freely; the metric likewise sees
only the circuit nodes with a kept edge to it. Edges are direct (:mod:`saeflow.patch.edges`),
so ``b`` is computed with every upstream site *replaced* by its already pruned values: a
change at a site reaches ``b`` only by the paths that cross no other site, the paths its
direct edges stand for.

The sites are filled in forward order. For a site ``d``: one pass with every earlier site
replaced gives its free values; every distinct set of upstream nodes some circuit node of
``d`` must not see costs one more pass. Nodes outside ``C`` take their means (faithfulness);
for completeness every node stays and only the circuit's own kept edges are cut, so
``F(model without C's edges)`` tells how much of the behaviour runs outside them.

With every edge between circuit nodes kept, the result is node pruning exactly (a test holds
it to float64 precision); with no edge cut, completeness is the spliced model itself.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saeflow.core.hooks import block_of
from saeflow.patch.attribution import Node, nan_to_none
from saeflow.patch.bootstrap import Clusters, percentile_interval
from saeflow.patch.edges import METRIC
from saeflow.patch.pairs import logit_diff
from saeflow.patch.splice import PatchRun, RunOptions, SparseAct, run_spliced

Edge = tuple[Node, Node | str]


def _cut_sets(sites: Sequence[str], circuit: Collection[Node], kept: Collection[Edge],
              complement: bool) -> dict[Node | str, frozenset[Node]]:
    """Per circuit node (and the metric): the upstream circuit nodes it must not see."""
    order = {h: i for i, h in enumerate(sites)}
    cuts: dict[Node | str, frozenset[Node]] = {}
    for b in [*circuit, METRIC]:
        upstream = [a for a in circuit
                    if b == METRIC or order[a[1]] < order[b[1]]]  # type: ignore[index]
        cut = [a for a in upstream if ((a, b) in kept) == complement]
        cuts[b] = frozenset(cut)
    return cuts


class _Pruned:
    """One chunk's pruned node values, site by site: ``act [n, T, d_sae]``, ``res [n, T, d_in]``."""

    def __init__(self, means: Mapping[str, SparseAct], P: int, T: int, n: int):
        self.means, self.P, self.T, self.n = means, P, T, n
        self.values: dict[str, SparseAct] = {}

    def mean(self, h: str) -> SparseAct:
        m = self.means[h]
        return SparseAct(m.act[self.P - self.T:].expand(self.n, -1, -1),
                         m.res[self.P - self.T:].expand(self.n, -1, -1))

    def with_means(self, h: str, nodes: Collection[Node]) -> SparseAct:
        """Site ``h``'s pruned values with ``nodes`` (of any site) set to their means."""
        v, m = self.values[h], self.mean(h)
        act, res = v.act, v.res
        lat = [i for kind, site, i in nodes if site == h and kind == "latent"]
        pos = [i - (self.P - self.T) for kind, site, i in nodes
               if site == h and kind == "error" and i >= self.P - self.T]
        if lat:
            act = act.clone()
            act[..., lat] = m.act[..., lat]
        if pos:
            res = res.clone()
            res[:, pos] = m.res[:, pos]
        return SparseAct(act, res)


def _pass(model: Any, saes: Mapping[str, Any], tokens: Tensor, pruned: _Pruned,
          upstream: Sequence[str], cut: Collection[Node], read: str | None
          ) -> tuple[Tensor | None, SparseAct | None]:
    """Run with the ``upstream`` sites replaced by their pruned values (``cut`` nodes at their
    means); return the logits (``read`` None) or site ``read``'s computed nodes."""
    replaced = {h: pruned.with_means(h, cut) for h in upstream}
    seen: dict[str, Tensor] = {}

    def edit_lat(h: str, f: Tensor) -> Tensor:
        if h == read:
            seen["act"] = f
        return replaced[h].act if h in replaced else f

    def edit_err(h: str, e: Tensor) -> Tensor:
        if h == read:
            seen["res"] = e
        return replaced[h].res if h in replaced else e

    stop = None if read is None else block_of(read)
    logits, _ = run_spliced(model, saes, tokens, True, edit_lat, edit_err,
                            RunOptions(stop_at_layer=None if stop is None else stop + 1))
    if read is None:
        return logits, None
    return None, SparseAct(seen["act"], seen["res"])


@torch.no_grad()
def edge_pruned_F(run: PatchRun, sites: Sequence[str], circuit: Collection[Node],
                  kept: Collection[Edge], means: Mapping[str, SparseAct], complement: bool
                  ) -> np.ndarray:
    """Per pair, the clean logit difference of the edge-pruned model (module docstring):
    the circuit with its left-out edges cut, or (``complement``) the whole spliced model
    with the circuit's kept edges cut. ``means`` as :func:`saeflow.patch.faithfulness.
    node_means` (with the error term) over the same positions (``run.width``)."""
    model, saes = run.model, run.saes
    P, dev = run.width, model.cfg.device
    circuit = list(circuit)
    kept = set(kept)
    cuts = _cut_sets(sites, circuit, kept, complement)
    out = []
    for c in (c.to(dev) for b in run.batches for c in b.chunks(run.cfg.max_batch)):
        pruned = _Pruned(means, P, c.length, len(c))
        for j, d in enumerate(sites):
            _, free = _pass(model, saes, c.clean, pruned, sites[:j], (), d)
            assert free is not None
            if complement:
                value = free
            else:  # outside the circuit: means; circuit nodes: their free values
                value = pruned.mean(d)
                value = SparseAct(value.act.clone(), value.res.clone())
                _copy_nodes(value, free, [b for b in circuit if b[1] == d], P, c.length)
            here = [b for b in circuit if b[1] == d and cuts[b]]
            for cut in {cuts[b] for b in here}:
                _, seen = _pass(model, saes, c.clean, pruned, sites[:j], cut, d)
                assert seen is not None
                _copy_nodes(value, seen, [b for b in here if cuts[b] == cut], P, c.length)
            pruned.values[d] = value
        logits, _ = _pass(model, saes, c.clean, pruned, sites, cuts[METRIC], None)
        out.append(logit_diff(logits, c.clean_answer, c.corrupted_answer).double().cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def model_and_empty_F(run: PatchRun, sites: Sequence[str], means: Mapping[str, SparseAct]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: ``F(model)`` (no SAEs) and ``F(none)`` (every node at its mean)."""
    model, dev = run.model, run.model.cfg.device
    F_model = torch.cat([logit_diff(model(c.clean), c.clean_answer, c.corrupted_answer)
                         .double().cpu()
                         for c in (c.to(dev) for b in run.batches
                                   for c in b.chunks(run.cfg.max_batch))])
    F_empty = edge_pruned_F(run, sites, (), (), means, False)
    return F_model.numpy(), F_empty


def _copy_nodes(into: SparseAct, source: SparseAct, nodes: Sequence[Node], P: int, T: int
                ) -> None:
    for kind, _, i in nodes:
        if kind == "latent":
            into.act[..., i] = source.act[..., i]
        elif i >= P - T:
            into.res[:, i - (P - T)] = source.res[:, i - (P - T)]


def edge_pruned_record(F_pruned: np.ndarray, F_complement: np.ndarray, F_model: np.ndarray,
                       F_empty: np.ndarray, n_boot: int, ci: float, seed: int,
                       clusters: Clusters | None = None) -> dict[str, Any]:
    """Faithfulness ``(F(C) - F(none)) / (F(model) - F(none))`` of the edge-pruned circuit and
    completeness of the model without the circuit's edges, each with a percentile bootstrap
    interval over the pairs' ``clusters`` (default: each pair its own; ratio of means,
    numerator and denominator resampled together; :mod:`saeflow.patch.bootstrap`)."""
    n = len(F_model)
    clusters = clusters or Clusters.pairs(n)
    weights = (np.vstack([np.ones(n), clusters.weights(n_boot, seed)]) if n_boot
               else np.ones((1, n)))
    M, E = weights @ F_model / weights.sum(1), weights @ F_empty / weights.sum(1)
    record: dict[str, Any] = {}
    for name, F_pairs in (("faithfulness", F_pruned), ("completeness", F_complement)):
        F = weights @ F_pairs / weights.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(np.abs(M - E) > 1e-9, (F - E) / (M - E), np.nan)
        record[name] = nan_to_none(ratio[0])
        record[f"{name}_ci95"] = (nan_to_none(percentile_interval(ratio[1:], ci,
                                                                      clusters.n_clusters))
                                  if np.isfinite(ratio[1:]).any() else None)
    record["interval_method"] = clusters.method(n_boot) if n_boot else None
    return record
