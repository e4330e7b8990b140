"""Patched forward passes that start at the patched site instead of at the tokens.

Patching a node of a residual-stream site changes nothing below it, so the patched run can
start at the site's layer with the site's (spliced) output as the residual, shifted by the
node's change: TransformerLens's ``start_at_layer``. The result is the full run's, up to float
rounding, at the cost of the blocks above the site only. Sites inside a block (attention,
MLP) are not resumed from: their callers fall back to a full run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor


def block_of(hook: str) -> int | None:
    """The block a hook point sits in (``blocks.{L}.``), None outside the blocks."""
    m = re.match(r"blocks\.(\d+)\.", hook)
    return int(m.group(1)) if m else None


def resume_layer(hook: str) -> int | None:
    """The layer a forward pass can start at with this site's output as its residual input:
    ``L + 1`` for ``blocks.L.hook_resid_post``, ``L`` for ``blocks.L.hook_resid_pre``; None for
    sites inside a block (attention, MLP), which need the whole pass."""
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|post)", hook)
    if m is None:
        return None
    return int(m.group(1)) + (m.group(2) == "post")


def can_resume(hook: str, saes: Mapping[str, Any]) -> bool:
    """Whether runs patched at ``hook`` can start at its layer: a residual site, and every
    other SAE in a block (so it is clearly above or below the start)."""
    return resume_layer(hook) is not None and all(block_of(h) is not None for h in saes if h != hook)


def run_from_site(model: Any, saes: Mapping[str, Any], hook: str, x: Tensor, with_error: bool
                  ) -> Tensor:
    """Final-position logits ``[B, 1, d_vocab]`` of runs whose output at ``hook`` is
    ``x [B, T, d_model]``, started at the site's layer with the SAEs above it spliced in (those
    below are already in ``x``); what :func:`saeflow.patch.resid.logit_diff` reads."""
    from saeflow.patch.attribution import run_spliced

    start, n_layers = resume_layer(hook), model.cfg.n_layers
    downstream = {h: s for h, s in saes.items() if h != hook and block_of(h) >= start}
    if start < n_layers:
        x, _ = run_spliced(model, downstream, x, with_error, start_at_layer=start,
                           stop_at_layer=n_layers)
    # the metric reads the final token: unembed it alone (ln_final is per position)
    return model(x[:, -1:], start_at_layer=n_layers)
