"""Sparse feature circuits (Marks et al. 2024): direct edges between the nodes of SAE sites,
the circuit they make, and a check of the edge estimates against exact patching.

Nodes are those of :mod:`saeflow.patch.attribution` (latent ``(site, latent)`` at all positions,
error ``(site, aligned position)``). Sites are any SAE hooks (residual, attention ``hook_z``,
MLP output), in forward order (:func:`site_order`). The edge from an upstream node ``a`` (site
``u``) to a downstream node ``b`` (a later site ``d``) is the part of ``b``'s effect on the
metric that goes through ``a`` *directly*, to first order, as in SFC::

    edge(a -> b) = (a_clean - a_corr) . d/da [ (dm/db . b) ]      (at the corrupted run)

where the derivative passes no other SAE site: every site but ``u`` is frozen (its output
detached, SFC's intermediate stop-gradients), so a path through a site in between counts on
that site's nodes instead. A site that every path from ``u`` crosses (a residual site between
two attention sites) leaves no direct edge. Per upstream site one frozen forward pass, per
downstream node one vector-Jacobian product with respect to ``u``'s spliced output, mapped
onto the chosen upstream latents through the decoder's rows: the gradient is ``[n, T, d_in]``,
so memory does not grow with ``d_sae``; only nodes above the node threshold are sources or
targets. A node's edge to the metric is its direct effect the same way (for the last
residual site: its node effect).

Exact check of an edge: with every site strictly between ``u`` and ``d`` held at its
corrupted value, patch ``a`` clean into the corrupted run and record ``b``'s new value ``b*``;
then run the corrupted prompt with only ``b`` set to ``b*`` (every other node as in the
corrupted run): ``m(b := b*) - m(corrupted)`` is the effect of ``a`` mediated by ``b``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saeflow.core.hooks import forward_rank
from saeflow.patch.attribution import AtPResult, Node, attribution_patching, rank_nodes
from saeflow.patch.pairs import PairBatch, logit_diff
from saeflow.patch.splice import RunOptions, decoder_rows, run_spliced

METRIC = "metric"


def site_order(hooks: Sequence[str]) -> list[str]:
    """Sites from the embedding up: by layer (``blocks.{L}.``), then where in the block (a
    transcoder where it reads: nothing lies between its input and output hooks)."""
    return sorted(hooks, key=forward_rank)


def select_nodes(atp: AtPResult, sites: Sequence[str], threshold: float, max_per_site: int,
                 ranked: Sequence[tuple[Node, float]] | None = None) -> dict[str, list[Node]]:
    """Per site, the nodes whose ``|mean AtP|`` reaches ``threshold``, the largest
    ``max_per_site`` of them (``ranked``: :func:`rank_nodes` of ``atp``, if already made)."""
    out: dict[str, list[Node]] = {h: [] for h in sites}
    for node, value in ranked if ranked is not None else rank_nodes(atp):
        if abs(value) >= threshold and len(out[node[1]]) < max_per_site:
            out[node[1]].append(node)
    return out


def _node_tensor(nodes: Mapping[str, Any], node: Node, column: int) -> Tensor:
    """A node's value ``[n, T]`` (latent) or ``[n, d_model]`` (error at ``column``)."""
    kind, h, i = node
    return nodes[h].act[:, :, i] if kind == "latent" else nodes[h].res[:, column]


def batch_edges(model: Any, saes: Mapping[str, Any], b: PairBatch, sites: Sequence[str],
                selected: Mapping[str, Sequence[Node]], P: int) -> dict[tuple[Node, Any], Tensor]:
    """Direct edge effects ``[n]`` per pair for one batch (with the error term): each selected
    upstream node -> each selected node of a later site it reaches directly, and -> the metric
    (module docstring)."""
    off = P - b.length  # aligned column of token 0
    with torch.no_grad():
        _, clean = run_spliced(model, saes, b.clean, True)
    edges: dict[tuple[Node, Any], Tensor] = {}
    with torch.enable_grad():
        logits, corr = run_spliced(model, saes, b.corrupted, True)
        metric = logit_diff(logits, b.clean_answer, b.corrupted_answer)
        leaves = [corr[h].act for h in sites] + [corr[h].res for h in sites]
        grads = torch.autograd.grad(metric.sum(), leaves, allow_unused=True)
        g_act = dict(zip(sites, grads[:len(sites)], strict=True))
        g_res = dict(zip(sites, grads[len(sites):], strict=True))
        for k, u in enumerate(sites):
            ups = [n for n in selected[u] if n[0] == "latent" or n[2] >= off]
            if not ups:
                continue
            outs: dict[str, Tensor] = {}
            logits_u, frozen = run_spliced(model, saes, b.corrupted, True, options=RunOptions(
                outputs=outs, frozen=[h for h in sites if h != u]))
            lat_u = [n[2] for n in ups if n[0] == "latent"]
            rows = decoder_rows(saes[u], lat_u) if lat_u else None
            d_act = (clean[u].act - corr[u].act).detach()
            d_res = (clean[u].res - corr[u].res).detach()

            def add(score: Tensor, target: Any) -> None:
                """Edges from ``ups`` to ``target`` whose first-order effect is ``score``."""
                if not score.requires_grad:
                    return  # ``target`` does not depend on site u at all
                (g_out,) = torch.autograd.grad(score, outs[u], retain_graph=True,
                                               allow_unused=True)
                if g_out is None:
                    return  # every path from u to ``target`` crosses another site
                g_out = g_out.reshape(*g_out.shape[:2], -1)  # [n, T, d_in]
                if rows is not None:
                    per_latent = (d_act[:, :, lat_u] * (g_out @ rows.T)).sum(1)  # [n, K]
                    for j, i in enumerate(lat_u):
                        edges[(("latent", u, i), target)] = per_latent[:, j].detach()
                for up in ups:
                    if up[0] == "error":
                        col = up[2] - off
                        edges[(up, target)] = (d_res[:, col] * g_out[:, col]).sum(-1).detach()

            for d in sites[k + 1:]:
                for down in selected[d]:
                    if down[0] == "error" and down[2] < off:
                        continue  # this batch's prompts have no such position
                    col = down[2] - off
                    grad_b = g_act[d][:, :, down[2]] if down[0] == "latent" else g_res[d][:, col]
                    if grad_b is None:
                        continue
                    add((grad_b.detach() * _node_tensor(frozen, down, col)).sum(), down)
            add(logit_diff(logits_u, b.clean_answer, b.corrupted_answer).sum(), METRIC)
    return edges


def edge_attribution(model: Any, saes: Mapping[str, Any], batches: Sequence[PairBatch],
                     sites: Sequence[str], selected: Mapping[str, Sequence[Node]],
                     max_batch: int = 256, width: int | None = None
                     ) -> dict[tuple[Node, Any], float]:
    """Mean over pairs of every edge of :func:`batch_edges` (a pair lacking a node's
    position contributes 0, as in :func:`saeflow.patch.attribution.rank_nodes`). ``width``:
    the aligned columns error nodes index (default the longest pair's length; a subset of
    the pairs passes the whole run's)."""
    P = width or max(b.length for b in batches)
    totals: dict[tuple[Node, Any], float] = {}
    n = 0
    for c in (c.to(model.cfg.device) for b in batches for c in b.chunks(max_batch)):
        for key, values in batch_edges(model, saes, c, sites, selected, P).items():
            totals[key] = totals.get(key, 0.0) + float(values.double().sum())
        n += len(c)
    return {key: v / n for key, v in totals.items()}


@torch.no_grad()
def exact_edge(model: Any, saes: Mapping[str, Any], batches: Sequence[PairBatch],
               up: Node, down: Node | str, max_batch: int = 256, alpha: float = 1.0,
               width: int | None = None) -> float:
    """Mean over pairs of ``m(corrupted, b := b*) - m(corrupted)``, ``b*`` = ``down``'s value
    when ``up`` is patched clean into the corrupted run, the sites between held (module
    docstring); ``down`` = :data:`METRIC`: ``up``'s direct effect, every later site held.
    ``alpha < 1`` patches ``up`` that fraction of the way (``/ alpha`` -> the estimate).
    ``width`` as :func:`edge_attribution`'s."""
    P = width or max(b.length for b in batches)
    sites = site_order(list(saes))
    end = len(sites) if down == METRIC else sites.index(down[1])
    between = sites[sites.index(up[1]) + 1:end]  # held at their corrupted value
    total, n = 0.0, 0
    for c in (c.to(model.cfg.device) for b in batches for c in b.chunks(max_batch)):
        off = P - c.length
        if any(node[0] == "error" and node[2] < off for node in (up, down) if node != METRIC):
            n += len(c)  # absent position: no effect in this batch
            continue
        _, clean = run_spliced(model, saes, c.clean, True)
        logits, corr = run_spliced(model, saes, c.corrupted, True)
        base = logit_diff(logits, c.clean_answer, c.corrupted_answer)
        a_clean = _node_tensor(clean, up, up[2] - off)
        a_corr = _node_tensor(corr, up, up[2] - off).clone()
        logits, patched = run_spliced(model, saes, c.corrupted, True, *_setter(
            up, lambda: a_corr + alpha * (a_clean - a_corr), off, hold=between, corr=corr))
        if down != METRIC:
            target = _node_tensor(patched, down, down[2] - off).clone()
            logits, _ = run_spliced(model, saes, c.corrupted, True,
                                    *_setter(down, lambda: target, off))
        total += float((logit_diff(logits, c.clean_answer, c.corrupted_answer) - base)
                       .double().sum())
        n += len(c)
    return total / n


def _setter(node: Node, value: Any, off: int, hold: Sequence[str] = (),
            corr: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """``(edit_latents, edit_error)`` for :func:`run_spliced` that set ``node`` to ``value()``
    and every node of the sites ``hold`` to its value in ``corr`` (the corrupted run)."""
    kind, hook, i = node

    def edit_latents(name: str, f: Tensor) -> Tensor:
        if name in hold:
            return corr[name].act.clone()
        if kind == "latent" and name == hook:
            f[:, :, i] = value()
        return f

    def edit_error(name: str, e: Tensor) -> Tensor:
        if name in hold:
            return corr[name].res.clone()
        if kind == "error" and name == hook:
            e[:, i - off] = value()
        return e

    return edit_latents, edit_error


def node_positions(model: Any, saes: Mapping[str, Any], batches: Sequence[PairBatch],
                   latents: Sequence[Node], max_batch: int = 256, width: int | None = None
                   ) -> dict[Node, int]:
    """Each latent node's aligned column of largest mean ``|AtP|`` (where it acts), for the
    circuit figure; error nodes are their own column. ``width`` as :func:`edge_attribution`'s."""
    P = width or max(b.length for b in batches)
    mass = {node: np.zeros(P) for node in latents}
    for c in (c for b in batches for c in b.chunks(max_batch)):
        effects, _, _, _ = attribution_patching(model, saes, c, True)
        for node in latents:
            per_pos = effects[node[1]].act[:, :, node[2]].abs().sum(0).double().cpu().numpy()
            mass[node][P - c.length:] += per_pos
    return {node: int(m.argmax()) for node, m in mass.items()}
