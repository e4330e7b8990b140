"""Sparse feature circuits (Marks et al. 2024): edges between the nodes of successive SAE
sites, the circuit they make, and a check of the edge estimates against exact patching.

Nodes are those of :mod:`saeflow.patch.attribution` (latent ``(site, latent)`` at all positions,
error ``(site, aligned position)``). The edge from an upstream node ``a`` (site ``u``) to a
downstream node ``b`` (the next site ``d``) is the part of ``b``'s effect on the metric that
goes through ``a``, to first order, as in SFC::

    edge(a -> b) = (a_clean - a_corr) . d/da [ (dm/db . b) ]      (at the corrupted run)

computed as one vector-Jacobian product per downstream node: the gradient of ``g_b . b``
(``g_b = dm/db``, held fixed) with respect to site ``u``'s spliced output, mapped onto the
chosen upstream latents through the decoder's rows. The gradient is ``[n, T, d_model]``, so
memory does not grow with ``d_sae``; only nodes above the node threshold are sources or
targets. Edges from the last site's nodes go to the metric (their node effects).

Exact check of an edge: patch ``a`` clean into the corrupted run and record ``b``'s new value
``b*``; then run the corrupted prompt with only ``b`` set to ``b*`` (every other node as in
the corrupted run): ``m(b := b*) - m(corrupted)`` is the effect of ``a`` mediated by ``b``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saeflow.patch.attribution import AtPResult, Node, rank_nodes, run_spliced
from saeflow.patch.resid import PairBatch, logit_diff

METRIC = "metric"


def site_order(hooks: Sequence[str]) -> list[str]:
    """Sites from the embedding up: by layer (``blocks.{L}.``), config order within a layer."""
    def layer(h: str) -> int:
        m = re.match(r"blocks\.(\d+)\.", h)
        return int(m.group(1)) if m else -1
    return sorted(hooks, key=layer)


def select_nodes(atp: AtPResult, sites: Sequence[str], threshold: float, max_per_site: int,
                 ranked: Sequence[tuple[Node, float]] | None = None) -> dict[str, list[Node]]:
    """Per site, the nodes whose ``|mean AtP|`` reaches ``threshold``, the largest
    ``max_per_site`` of them (``ranked``: :func:`rank_nodes` of ``atp``, if already made)."""
    out: dict[str, list[Node]] = {h: [] for h in sites}
    for node, value in ranked if ranked is not None else rank_nodes(atp):
        if abs(value) >= threshold and len(out[node[1]]) < max_per_site:
            out[node[1]].append(node)
    return out


def decoder_rows(sae: Any, latents: Sequence[int]) -> Tensor:
    """``[K, d_model]``: d decode / d latent for ``latents``. sae-lens decoders are affine
    (``f @ W_dec + b_dec``, any normalisation a fixed scale), so each row is
    ``decode(e_i) - decode(0)``, whatever the SAE class."""
    d_sae = sae.cfg.d_sae
    device, dtype = sae.W_dec.device, sae.W_dec.dtype
    basis = torch.zeros(len(latents), d_sae, device=device, dtype=dtype)
    basis[torch.arange(len(latents)), torch.as_tensor(list(latents), dtype=torch.long)] = 1
    zero = torch.zeros(1, d_sae, device=device, dtype=dtype)
    return (sae.decode(basis) - sae.decode(zero)).reshape(len(latents), -1)


def _node_tensor(nodes: Mapping[str, Any], node: Node, column: int) -> Tensor:
    """A node's value ``[n, T]`` (latent) or ``[n, d_model]`` (error at ``column``)."""
    kind, h, i = node
    return nodes[h].act[:, :, i] if kind == "latent" else nodes[h].res[:, column]


def batch_edges(model: Any, saes: Mapping[str, Any], b: PairBatch, sites: Sequence[str],
                selected: Mapping[str, Sequence[Node]], P: int) -> dict[tuple[Node, Any], Tensor]:
    """Edge effects ``[n]`` per pair for one batch (with the error term): upstream selected
    node -> downstream selected node of the next site, and last site -> the metric."""
    off = P - b.length  # aligned column of token 0
    with torch.no_grad():
        _, clean = run_spliced(model, saes, b.clean, True)
    with torch.enable_grad():
        outs: dict[str, Tensor] = {}
        logits, corr = run_spliced(model, saes, b.corrupted, True, outputs=outs)
        metric = logit_diff(logits, b.clean_answer, b.corrupted_answer)
        leaves = [corr[h].act for h in sites] + [corr[h].res for h in sites]
        grads = torch.autograd.grad(metric.sum(), leaves, retain_graph=True, allow_unused=True)
        g_act = {h: g for h, g in zip(sites, grads[:len(sites)], strict=True)}
        g_res = {h: g for h, g in zip(sites, grads[len(sites):], strict=True)}
        edges: dict[tuple[Node, Any], Tensor] = {}
        for u, d in zip(sites, sites[1:]):
            ups = [n for n in selected[u] if n[0] == "latent" or n[2] >= off]
            lat_u = [n[2] for n in ups if n[0] == "latent"]
            rows = decoder_rows(saes[u], lat_u) if lat_u else None
            d_act = (clean[u].act - corr[u].act).detach()
            d_res = (clean[u].res - corr[u].res).detach()
            for down in selected[d]:
                if down[0] == "error" and down[2] < off:
                    continue  # this batch's prompts have no such position
                col = down[2] - off
                grad_b = (g_act[d][:, :, down[2]] if down[0] == "latent" else g_res[d][:, col])
                score = (grad_b.detach() * _node_tensor(corr, down, col)).sum()
                if not score.requires_grad:
                    continue  # b does not depend on site u at all
                (g_out,) = torch.autograd.grad(score, outs[u], retain_graph=True)
                g_out = g_out.reshape(*g_out.shape[:2], -1)  # [n, T, d_model]
                if rows is not None:
                    via = g_out @ rows.T  # [n, T, K]: gradient on each chosen latent
                    per_latent = (d_act[:, :, lat_u] * via).sum(1)
                    for k, i in enumerate(lat_u):
                        edges[(("latent", u, i), down)] = per_latent[:, k].detach()
                for up in ups:
                    if up[0] == "error":
                        edges[(up, down)] = (d_res[:, up[2] - off] * g_out[:, up[2] - off]) \
                            .sum(-1).detach()
        last = sites[-1]
        for node in selected[last]:
            kind, _, i = node
            if kind == "latent":
                edges[(node, METRIC)] = ((clean[last].act[:, :, i] - corr[last].act[:, :, i])
                                         * g_act[last][:, :, i]).sum(1).detach()
            elif i >= off:
                edges[(node, METRIC)] = ((clean[last].res[:, i - off] - corr[last].res[:, i - off])
                                         * g_res[last][:, i - off]).sum(-1).detach()
    return edges


def edge_attribution(model: Any, saes: Mapping[str, Any], batches: Sequence[PairBatch],
                     sites: Sequence[str], selected: Mapping[str, Sequence[Node]],
                     max_batch: int = 256) -> dict[tuple[Node, Any], float]:
    """Mean over pairs of every edge of :func:`batch_edges` (a pair lacking a node's
    position contributes 0, as in :func:`saeflow.patch.attribution.rank_nodes`)."""
    P = max(b.length for b in batches)
    totals: dict[tuple[Node, Any], float] = {}
    n = 0
    for c in (c.to(model.cfg.device) for b in batches for c in b.chunks(max_batch)):
        for key, values in batch_edges(model, saes, c, sites, selected, P).items():
            totals[key] = totals.get(key, 0.0) + float(values.double().sum())
        n += len(c)
    return {key: v / n for key, v in totals.items()}


@torch.no_grad()
def exact_edge(model: Any, saes: Mapping[str, Any], batches: Sequence[PairBatch],
               up: Node, down: Node, max_batch: int = 256, alpha: float = 1.0) -> float:
    """Mean over pairs of ``m(corrupted, b := b*) - m(corrupted)``, ``b*`` = ``down``'s value
    when ``up`` is patched clean into the corrupted run (module docstring); ``alpha < 1``
    patches ``up`` that fraction of the way (``/ alpha`` -> the edge estimate as alpha -> 0)."""
    P = max(b.length for b in batches)
    total, n = 0.0, 0
    for c in (c.to(model.cfg.device) for b in batches for c in b.chunks(max_batch)):
        off = P - c.length
        if any(node[0] == "error" and node[2] < off for node in (up, down)):
            n += len(c)  # absent position: no effect in this batch
            continue
        _, clean = run_spliced(model, saes, c.clean, True)
        logits, corr = run_spliced(model, saes, c.corrupted, True)
        base = logit_diff(logits, c.clean_answer, c.corrupted_answer)
        a_clean = _node_tensor(clean, up, up[2] - off)
        a_corr = _node_tensor(corr, up, up[2] - off).clone()
        _, patched = run_spliced(model, saes, c.corrupted, True, *_setter(
            up, lambda: a_corr + alpha * (a_clean - a_corr), off))
        target = _node_tensor(patched, down, down[2] - off).clone()
        logits, _ = run_spliced(model, saes, c.corrupted, True,
                                *_setter(down, lambda: target, off))
        total += float((logit_diff(logits, c.clean_answer, c.corrupted_answer) - base)
                       .double().sum())
        n += len(c)
    return total / n


def _setter(node: Node, value: Any, off: int) -> tuple[Any, Any]:
    """``(edit_latents, edit_error)`` for :func:`run_spliced` that set ``node`` to ``value()``."""
    kind, hook, i = node

    def edit_latents(name: str, f: Tensor) -> Tensor:
        if kind == "latent" and name == hook:
            f[:, :, i] = value()
        return f

    def edit_error(name: str, e: Tensor) -> Tensor:
        if kind == "error" and name == hook:
            e[:, i - off] = value()
        return e

    return edit_latents, edit_error


def node_positions(model: Any, saes: Mapping[str, Any], batches: Sequence[PairBatch],
                   latents: Sequence[Node], max_batch: int = 256) -> dict[Node, int]:
    """Each latent node's aligned column of largest mean ``|AtP|`` (where it acts), for the
    circuit figure; error nodes are their own column."""
    from saeflow.patch.attribution import attribution_patching

    P = max(b.length for b in batches)
    mass = {node: np.zeros(P) for node in latents}
    for c in (c for b in batches for c in b.chunks(max_batch)):
        effects, _, _, _ = attribution_patching(model, saes, c, True)
        for node in latents:
            per_pos = effects[node[1]].act[:, :, node[2]].abs().sum(0).double().cpu().numpy()
            mass[node][P - c.length:] += per_pos
    return {node: int(m.argmax()) for node, m in mass.items()}
