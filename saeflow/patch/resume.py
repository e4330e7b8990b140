"""Patched forward passes that start at the patched site instead of at the tokens.

Patching a node of a residual-stream site changes nothing below it, so the patched run can
start at the site's layer with the site's (spliced) output as the residual, shifted by the
node's change: TransformerLens's ``start_at_layer``. The result is the full run's, up to float
rounding, at the cost of the blocks above the site only. Sites inside a block (attention,
MLP) are not resumed from: their callers fall back to a full run. Hook names are parsed by
:mod:`saeflow.core.hooks` (:func:`~saeflow.core.hooks.resume_layer`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from saeflow.core.hooks import block_of, resume_layer
from saeflow.patch.splice import RunOptions, run_spliced


def can_resume(hook: str, saes: Mapping[str, Any]) -> bool:
    """Whether runs patched at ``hook`` can start at its layer: a residual site, and every
    other SAE in a block (so it is clearly above or below the start)."""
    return resume_layer(hook) is not None and all(block_of(h) is not None for h in saes if h != hook)


def run_from_site(model: Any, saes: Mapping[str, Any], hook: str, x: Tensor, with_error: bool
                  ) -> Tensor:
    """Final-position logits ``[B, 1, d_vocab]`` of runs whose output at ``hook`` is
    ``x [B, T, d_model]``, started at the site's layer with the SAEs above it spliced in (those
    below are already in ``x``); what :func:`saeflow.patch.pairs.logit_diff` reads."""
    start, n_layers = resume_layer(hook), model.cfg.n_layers
    x = x.contiguous()  # stacked patched copies of a single pair are not; blocks view() them
    downstream = {h: s for h, s in saes.items() if h != hook and block_of(h) >= start}
    if start < n_layers:
        x, _ = run_spliced(model, downstream, x, with_error,
                           options=RunOptions(start_at_layer=start, stop_at_layer=n_layers))
    # the metric reads the final token: unembed it alone (ln_final is per position)
    return model(x[:, -1:], start_at_layer=n_layers)
