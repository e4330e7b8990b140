"""Integrated-gradients node attribution (Marks et al. 2024, Sparse Feature Circuits): the
second estimator of every latent and error node's patching effect, next to AtP.

Nodes, modes and sign as in :mod:`saeflow.patch.attribution` (patch clean into corrupted, on
the logit difference). For a node ``a`` of site (hook) ``s``, with ``delta = a_clean - a_corr``::

    IG(a) = delta . (1 / S) sum_{k=0}^{S-1} (d metric / d a)(a_corr + (k / S) delta)

with ``S = patch.ig_steps``. Choices, following feature-circuits' ``_pe_ig``:

* One site at a time: the path moves every node of site ``s`` (its latents and, with the error
  term, its error at every position) together, while no other site is intervened on: the
  sites upstream of ``s`` hold their corrupted values (the tokens are the corrupted ones) and
  the sites downstream are recomputed from the interpolated ``s``, as in the forward pass. So
  completeness holds per site: the IG of all of ``s``'s nodes sums, as ``S`` grows, to the
  effect of patching the whole site ``s`` at once. Interpolating every site jointly instead
  would double count, since a downstream site's clean value already carries the upstream
  change.
* ``alpha_k = k / S``, ``k = 0 .. S-1`` (SFC's points, written from the corrupted end): a left
  Riemann sum, so ``S = 1`` is AtP exactly and the error of the path integral falls as
  ``1 / S``.

Cost: ``S`` forward + backward passes per site, against AtP's one; the ``(site, alpha)`` copies
of a batch are stacked, ``max_batch`` rows per pass. Registered as ``ig`` in
:mod:`saeflow.patch.estimators` (ig.h5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor

from saeflow.patch.attribution import AtPResult, run_atp
from saeflow.patch.pairs import PairBatch, logit_diff
from saeflow.patch.splice import SparseAct, run_spliced


def ig_alphas(steps: int) -> list[float]:
    """The ``steps`` points of the path, from the corrupted end: ``k / steps``."""
    if steps < 1:
        raise ValueError(f"ig steps must be >= 1, got {steps}")
    return [k / steps for k in range(steps)]


def integrated_gradients(model: Any, saes: Mapping[str, Any], batch: PairBatch,
                         with_error: bool, steps: int = 10, max_batch: int = 256
                         ) -> tuple[dict[str, SparseAct], dict[str, SparseAct], Tensor, Tensor]:
    """IG for one batch of ``n`` pairs, returned as
    :func:`saeflow.patch.attribution.attribution_patching` returns AtP: per hook the latent
    effects ``act [n, T, d_sae]`` and error-node effects ``res [n, T]``, the latent deltas
    ``|clean - corrupted|``, and the clean and corrupted metrics ``[n]``."""
    b = batch.to(model.cfg.device)
    n = len(b)
    with torch.no_grad():
        clean_logits, clean = run_spliced(model, saes, b.clean, with_error)
        corr_logits, corr = run_spliced(model, saes, b.corrupted, with_error)
    delta = {h: clean[h] - corr[h] for h in saes}
    grad_sum = {h: SparseAct(torch.zeros_like(corr[h].act),
                             torch.zeros_like(corr[h].res) if with_error else None)
                for h in saes}
    jobs = [(h, a) for h in saes for a in ig_alphas(steps)]
    per_pass = max(1, max_batch // n)  # (site, alpha) copies of the batch per forward pass
    for start in range(0, len(jobs), per_pass):
        chunk = jobs[start:start + per_pass]
        paths = {h: _path(corr[h], delta[h], [(j, a) for j, (g, a) in enumerate(chunk) if g == h],
                          len(chunk)) for h in dict.fromkeys(h for h, _ in chunk)}
        k = len(chunk)
        with torch.enable_grad():
            logits, _ = run_spliced(model, saes, b.corrupted.repeat(k, 1), with_error,
                                    partial(_on_path, paths, "act"),
                                    partial(_on_path, paths, "res") if with_error else None)
            metric = logit_diff(logits, b.clean_answer.repeat(k), b.corrupted_answer.repeat(k))
            leaves = [(h, kind, getattr(leaf, kind)) for h, (_, leaf) in paths.items()
                      for kind in ("act", "res") if getattr(leaf, kind) is not None]
            # Copies are independent rows, so the gradient of the sum is each row's own.
            grads = torch.autograd.grad(metric.sum(), [x for *_, x in leaves], allow_unused=True)
        for (h, kind, x), g in zip(leaves, grads, strict=True):
            if g is None:  # nothing downstream of the site reaches the metric
                continue
            own = paths[h][0].view(k, n)[:, 0]  # which copies are this site's
            g = g.view(k, n, *x.shape[1:])[own].sum(0)  # summed over the site's alphas
            setattr(grad_sum[h], kind, getattr(grad_sum[h], kind) + g)
    effects, deltas = {}, {}
    for h in saes:
        eff = delta[h] * SparseAct(grad_sum[h].act / steps,
                                   None if grad_sum[h].res is None else grad_sum[h].res / steps)
        effects[h] = SparseAct(eff.act, None if eff.res is None else eff.res.sum(-1))
        deltas[h] = SparseAct(delta[h].act.abs())
    return (effects, deltas, logit_diff(clean_logits, b.clean_answer, b.corrupted_answer),
            logit_diff(corr_logits, b.clean_answer, b.corrupted_answer))


def _path(corr: SparseAct, delta: SparseAct, jobs: Sequence[tuple[int, float]], k: int
          ) -> tuple[Tensor, SparseAct]:
    """One site's points on the path in ``k`` stacked copies of the batch: the rows of the
    site's own copies ``[k * n]`` (bool) and a leaf ``corr + alpha * delta`` per node kind
    (``alpha`` of each job on its copy, 0 elsewhere; only the site's rows are used)."""
    n = corr.act.shape[0]
    alpha = torch.zeros(k, dtype=corr.act.dtype, device=corr.act.device)
    rows = torch.zeros(k, dtype=torch.bool, device=corr.act.device)
    for j, a in jobs:
        alpha[j], rows[j] = a, True
    alpha, rows = alpha.repeat_interleave(n), rows.repeat_interleave(n)

    def leaf(c: Tensor | None, d: Tensor | None) -> Tensor | None:
        if c is None or d is None:
            return None
        shape = (-1,) + (1,) * (c.ndim - 1)
        return (c.repeat(k, *[1] * (c.ndim - 1))
                + alpha.view(shape) * d.repeat(k, *[1] * (c.ndim - 1))).requires_grad_()

    return rows, SparseAct(leaf(corr.act, delta.act), leaf(corr.res, delta.res))


def _on_path(paths: Mapping[str, tuple[Tensor, SparseAct]], kind: str, name: str, x: Tensor
             ) -> Tensor:
    """The spliced run's edit: the site's own copies take the path's point, the other copies
    keep the value the forward pass computed (the corrupted one upstream of their site, the
    recomputed one downstream)."""
    if name not in paths:
        return x
    rows, leaf = paths[name]
    return torch.where(rows.view((-1,) + (1,) * (x.ndim - 1)), getattr(leaf, kind), x)


def run_ig(model: Any, saes: Mapping[str, Any], batches: Sequence[PairBatch], with_error: bool,
           steps: int, max_batch: int = 256) -> AtPResult:
    """:func:`integrated_gradients` over every batch, in AtP's result (and pair order), so every
    consumer of an :class:`~saeflow.patch.attribution.AtPResult` reads it unchanged."""
    return run_atp(model, saes, batches, with_error, max_batch,
                   estimate=partial(integrated_gradients, steps=steps, max_batch=max_batch))
