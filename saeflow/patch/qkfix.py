"""AtP* QK fix (Kramár et al. 2024): attention patterns recomputed exactly where a node feeds
keys or queries.

AtP linearises the attention softmax, which fails where a patch moves a pattern far (a
saturated head switching to another source position). The QK fix splits a node's effect in
two parts::

    QK-fixed(n) = AtP(n) + sum_L ( < dm/dA_L , A_L(x_L + r_n) - A_L(x_L) >  -  r_n . g_L )

At each attention layer ``L`` downstream of the node's site, the node's direct path into the
layer's pattern is taken exactly instead of linearly: the corrupted run's residual input
``x_L`` shifted by the node's own contribution to the residual stream ``r_n`` (a latent's
change times its decoder row at every position, an error node's change at its position; for
an attention ``hook_z`` site mapped through ``W_O``), the layer's LayerNorm and pattern
recomputed, and the pattern change weighted by the metric's gradient with respect to the
pattern; ``r_n . g_L`` is that same path's first-order term inside AtP (``g_L`` the gradient of
``< dm/dA_L, A_L(x) >`` with respect to ``x_L``), taken out. Paths that reach a pattern through
other components (an attention site through its layer's MLP) stay first order, as in AtP*.

A latent's estimate is for the latent at all positions at once (one column, as GradDrop's);
error nodes are per position. Where no attention layer is downstream of a site (the last
residual site), the QK fix is AtP. A transcoder's nodes enter at the MLP output it writes.
Registered as ``qkfix`` in :mod:`saeflow.patch.estimators` (qkfix.h5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from saeflow.core.errors import InputError
from saeflow.core.hooks import attention_z_layer, block_of, split_block, writes_residual
from saeflow.patch.attribution import AtPResult, run_atp
from saeflow.patch.pairs import PairBatch, logit_diff
from saeflow.patch.splice import SparseAct, run_spliced, site_outputs

LATENT_CHUNK = 64  # latents whose shifted residual runs through a layer's pattern at once


def downstream_layers(hook: str, n_layers: int) -> list[int]:
    """The attention layers a site's output reaches by the residual stream."""
    layer, rest = split_block(hook)
    if layer is None:  # hook_embed, hook_pos_embed: before every block
        return list(range(n_layers))
    return list(range(layer if rest == "hook_resid_pre" else layer + 1, n_layers))


def to_residual(model: Any, hook: str, vectors: Tensor) -> Tensor:
    """``vectors [..., d_in]`` in a site's space as what they add to the residual stream."""
    if writes_residual(hook):
        return vectors
    layer = attention_z_layer(hook)
    if layer is not None:
        attn = model.blocks[layer].attn
        z = vectors.reshape(*vectors.shape[:-1], attn.W_O.shape[0], attn.W_O.shape[1])
        return torch.einsum("...hd,hdm->...m", z, attn.W_O)
    raise InputError("config", "patch.estimators", f"the QK fix needs a site that writes to "
                     f"the residual stream (residual, MLP or attention output, hook_z); {hook} "
                     "is not one")


def pattern(model: Any, layer: int, resid: Tensor) -> Tensor:
    """Block ``layer``'s attention pattern ``[B, heads, T, T]`` for residual input ``resid``,
    by the block's own LayerNorm and attention (masks, rotary, soft-capping included)."""
    block, seen = model.blocks[layer], {}

    def keep(p: Tensor, hook: Any) -> Tensor:
        seen["p"] = p
        return p

    x = block.ln1(resid)
    with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", keep)]):
        block.attn(x, x, x)
    return seen["p"]


def qk_fix_patching(model: Any, saes: Mapping[str, Any], batch: PairBatch, with_error: bool
                    ) -> tuple[dict[str, SparseAct], dict[str, SparseAct], Tensor, Tensor]:
    """The QK-fixed estimate for one batch, returned as :func:`~saeflow.patch.attribution.
    attribution_patching` returns AtP: per hook ``act [n, 1, d_sae]`` (latent at all
    positions), ``res [n, T]``, the latent deltas and the clean and corrupted metrics."""
    b = batch.to(model.cfg.device)
    writes = site_outputs(saes)  # a transcoder writes the MLP output, not the hook it reads
    layers = sorted({L for h in saes for L in downstream_layers(writes[h], model.cfg.n_layers)})
    with torch.no_grad():
        clean_logits, clean = run_spliced(model, saes, b.clean, with_error)
    resid_in: dict[int, Tensor] = {}
    patterns: dict[int, Tensor] = {}

    def keep(p: Tensor, hook: Any) -> Tensor:
        patterns[block_of(hook.name)] = p
        return p

    handles = [model.blocks[L].ln1.register_forward_pre_hook(
        lambda mod, args, L=L: resid_in.__setitem__(L, args[0].detach())) for L in layers]
    try:
        with torch.enable_grad(), model.hooks(
                fwd_hooks=[(f"blocks.{L}.attn.hook_pattern", keep) for L in layers]):
            corr_logits, corr = run_spliced(model, saes, b.corrupted, with_error)
            metric = logit_diff(corr_logits, b.clean_answer, b.corrupted_answer)
            names = list(corr)
            leaves = ([corr[h].act for h in names] + ([corr[h].res for h in names]
                                                       if with_error else [])
                      + [patterns[L] for L in layers])
            grads = torch.autograd.grad(metric.sum(), leaves, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads, strict=True)]
    g_pattern = dict(zip(layers, grads[len(leaves) - len(layers):], strict=True))
    A = {L: patterns[L].detach() for L in layers}
    g_direct = {L: _pattern_path_gradient(model, L, resid_in[L], g_pattern[L]) for L in layers}
    effects, deltas = {}, {}
    with torch.no_grad():
        for i, h in enumerate(names):
            delta = clean[h] - corr[h].detach()
            lat = (delta.act * grads[i]).sum(1, keepdim=True)  # AtP, [n, 1, d_sae]
            err = (delta.res * grads[len(names) + i]).sum(-1) if with_error else None  # [n, T]
            downstream = downstream_layers(writes[h], model.cfg.n_layers)
            if downstream:  # the node's residual contributions, once for every layer
                rows = to_residual(model, writes[h], saes[h].W_dec)
                moved = to_residual(model, writes[h], delta.res) if err is not None else None
            for L in downstream:
                # the direct path into layer L's pattern: exact, less its linearisation in AtP
                linear = torch.einsum("nti,id,ntd->ni", delta.act, rows, g_direct[L])
                exact = _latent_pattern_term(model, rows, delta.act, L, resid_in[L], A[L],
                                             g_pattern[L])
                lat = lat + (exact - linear)[:, None]
                if err is not None:
                    err = err + _error_pattern_term(moved, model, L, resid_in[L], A[L],
                                                    g_pattern[L]) - (moved * g_direct[L]).sum(-1)
            effects[h] = SparseAct(lat, err)
            deltas[h] = SparseAct(delta.act.abs())
    return (effects, deltas, logit_diff(clean_logits, b.clean_answer, b.corrupted_answer),
            metric.detach())


def _pattern_path_gradient(model: Any, L: int, x: Tensor, G: Tensor) -> Tensor:
    """``d < G, pattern_L(x) > / dx`` ``[n, T, d_model]``: how AtP's gradient reaches layer
    ``L``'s residual input through that layer's pattern alone (its LayerNorm, queries, keys)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        (grad,) = torch.autograd.grad((pattern(model, L, x) * G).sum(), x)
    return grad


def _shifted_term(model: Any, L: int, x: Tensor, shifts: Tensor, A: Tensor, G: Tensor
                  ) -> Tensor:
    """``[K, n]``: for each of ``K`` residual shifts ``[K, n, T, d_model]``,
    ``< G, pattern(x + shift) - A >`` per pair."""
    K, n = shifts.shape[:2]
    shifted = (x[None] + shifts).reshape(K * n, *x.shape[1:])
    new = pattern(model, L, shifted).reshape(K, n, *A.shape[1:])
    return ((new - A[None]) * G[None]).flatten(2).sum(-1)


def _latent_pattern_term(model: Any, rows: Tensor, delta: Tensor, L: int, x: Tensor,
                         A: Tensor, G: Tensor) -> Tensor:
    """``[n, d_sae]``: each latent's exact pattern term at layer ``L`` (zero where it does not
    move); ``rows [d_sae, d_model]``: the decoder rows as residual directions."""
    n, _, d_sae = delta.shape
    out = torch.zeros(n, d_sae, dtype=delta.dtype, device=delta.device)
    moving = (delta != 0).any(1).any(0).nonzero().flatten().tolist()
    for s in range(0, len(moving), LATENT_CHUNK):
        idx = moving[s:s + LATENT_CHUNK]
        shifts = delta[..., idx].permute(2, 0, 1)[..., None] * rows[idx][:, None, None, :]
        out[:, idx] = _shifted_term(model, L, x, shifts, A, G).T
    return out


def _error_pattern_term(moved: Tensor, model: Any, L: int, x: Tensor, A: Tensor, G: Tensor
                        ) -> Tensor:
    """``[n, T]``: each error node's (one position's) exact pattern term at layer ``L``;
    ``moved [n, T, d_model]``: the error changes as residual vectors."""
    n, T, _ = moved.shape
    shifts = torch.zeros(T, n, T, moved.shape[-1], dtype=moved.dtype, device=moved.device)
    for p in range(T):
        shifts[p, :, p] = moved[:, p]
    return _shifted_term(model, L, x, shifts, A, G).T


def run_qk_fix(model: Any, saes: Mapping[str, Any], batches: Sequence[PairBatch],
               with_error: bool, max_batch: int = 256) -> AtPResult:
    """:func:`qk_fix_patching` over every batch, in AtP's result and pair order (latent mass
    in the final column only: a latent's estimate is not split over positions)."""
    return run_atp(model, saes, batches, with_error, max_batch, estimate=qk_fix_patching)
