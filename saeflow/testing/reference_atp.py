"""AtP as first written, the reference the fast path is tested (tests/patch/test_fast_atp.py)
and timed (bench/scale_atp.py) against: two full forward passes with logits at every
position (TransformerLens's ``Unembed``), the gradient of the logit difference through the
default splice (encoder included)."""

from __future__ import annotations

from typing import Any


def reference_atp(model: Any, saes: Any, batch: Any, with_error: bool
                  ) -> tuple[dict[str, Any], dict[str, Any], Any, Any]:
    """``(effects, deltas, clean_metric, corrupted_metric)`` as
    :func:`saeflow.patch.attribution.attribution_patching` returns them: per site, the
    latent (and, ``with_error``, the summed error) effects and ``|clean - corrupted|``."""
    import torch

    from saeflow.patch.pairs import logit_diff
    from saeflow.patch.splice import SparseAct, run_spliced

    with torch.no_grad():
        clean_logits, clean = run_spliced(model, saes, batch.clean, with_error)
    with torch.enable_grad():
        logits, corr = run_spliced(model, saes, batch.corrupted, with_error)
        metric = logit_diff(logits, batch.clean_answer, batch.corrupted_answer)
        names = list(corr)
        leaves = [corr[h].act for h in names] + ([corr[h].res for h in names] if with_error else [])
        grads = torch.autograd.grad(metric.sum(), leaves, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads, strict=True)]
    effects, deltas = {}, {}
    for i, h in enumerate(names):
        delta = clean[h] - corr[h].detach()
        eff = delta * SparseAct(grads[i], grads[len(names) + i] if with_error else None)
        effects[h] = SparseAct(eff.act, None if eff.res is None else eff.res.sum(-1))
        deltas[h] = SparseAct(delta.act.abs())
    return (effects, deltas, logit_diff(clean_logits, batch.clean_answer, batch.corrupted_answer),
            metric.detach())
