"""AtP* GradDrop (Kramár et al. 2024): a node-magnitude estimator that AtP's cancellations
cannot hide.

AtP's one gradient sums a node's effect over every path to the metric; where a direct and an
indirect path cancel, AtP reports ~0 for a node whose patch does matter (a false negative).
GradDrop re-runs the backward pass ``L`` times (``L`` = layers), the ``l``-th with the gradient
through block ``l``'s own computation dropped (block ``l`` passes gradient only along its
residual skip), and adds up the magnitudes::

    GradDrop(n) = 1 / (L - 1) * sum_l |AtP_l(n)|

``AtP_l(n)`` is AtP with block ``l`` dropped for nodes upstream of it (sites in an earlier
block) and plain AtP for the rest, as in AtP*, where dropping a layer only changes the
estimates of nodes before it; a site inside block ``l`` (its ``hook_resid_pre`` too) counts as
not upstream. Per pair, a latent node's ``AtP_l`` is summed over positions before its
magnitude is taken (the node is the latent at every position); error nodes are per position.

The result is a magnitude (>= 0), not a signed effect: it ranks nodes for verification. The
summary judges it against the mean over pairs of ``|exact effect|`` (the same magnitude view
of exhaustive exact patching), next to AtP's own magnitude (``mean |AtP|``). Registered as
``graddrop`` in :mod:`saeflow.patch.estimators` (graddrop.h5).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from saeflow.core.errors import InputError
from saeflow.core.hooks import block_of
from saeflow.patch.attribution import AtPResult, attribution_patching, run_atp
from saeflow.patch.pairs import PairBatch
from saeflow.patch.splice import SparseAct


@contextmanager
def skip_only(model: Any, layer: int) -> Iterator[None]:
    """Block ``layer`` keeps its forward values but passes gradient only along the residual
    skip: ``out.detach() + (x - x.detach())``. A forward hook on the block module itself, so it
    composes with SAEs spliced at the block's own hook points."""
    def hook(module: Any, args: tuple, out: torch.Tensor) -> torch.Tensor:
        x = args[0]
        return out.detach() + (x - x.detach())

    handle = model.blocks[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def graddrop_patching(model: Any, saes: Mapping[str, Any], batch: PairBatch, with_error: bool
                      ) -> tuple[dict[str, SparseAct], dict[str, SparseAct], torch.Tensor,
                                 torch.Tensor]:
    """GradDrop for one batch, returned as :func:`~saeflow.patch.attribution.
    attribution_patching` returns AtP: per hook ``act [n, 1, d_sae]`` (the latent's magnitude,
    one column as it is already summed over positions) and ``res [n, T]``, the latent deltas,
    and the clean and corrupted metrics."""
    n_layers = model.cfg.n_layers
    if n_layers < 2:
        raise InputError("config", "patch.estimators", "graddrop needs a model of at least 2 "
                         f"layers (1 / (L - 1)); this one has {n_layers}")
    plain, deltas, clean, corr = attribution_patching(model, saes, batch, with_error)
    latent = {h: torch.zeros_like(e.act[:, :1]) for h, e in plain.items()}
    error = {h: None if e.res is None else torch.zeros_like(e.res) for h, e in plain.items()}
    for layer in range(n_layers):
        # a hook outside the blocks (the embedding) sits before every block
        upstream = [h for h in saes if (block_of(h) is None or block_of(h) < layer)]
        dropped = plain
        if upstream:
            with skip_only(model, layer):
                dropped = attribution_patching(model, saes, batch, with_error)[0]
        for h, eff in plain.items():
            use = dropped[h] if h in upstream else eff
            latent[h] += use.act.sum(1, keepdim=True).abs()
            if use.res is not None:
                error[h] += use.res.abs()
    scale = 1.0 / (n_layers - 1)
    effects = {h: SparseAct(latent[h] * scale, None if error[h] is None else error[h] * scale)
               for h in plain}
    return effects, deltas, clean, corr


def run_graddrop(model: Any, saes: Mapping[str, Any], batches: Sequence[PairBatch],
                 with_error: bool, max_batch: int = 256) -> AtPResult:
    """:func:`graddrop_patching` over every batch, in AtP's result and pair order. Its
    ``latent_mass`` holds the magnitude in the final column only (the latent's magnitude is
    not split over positions)."""
    return run_atp(model, saes, batches, with_error, max_batch, estimate=graddrop_patching)


def magnitudes(result: Any) -> Any:
    """The same result with every per-pair effect replaced by its magnitude: the view in
    which a magnitude estimator (GradDrop) and a signed one (AtP, exact) are compared."""
    from dataclasses import replace

    return replace(result, latent_effect={h: np.abs(v) for h, v in result.latent_effect.items()},
                   error_effect={h: np.abs(v) for h, v in result.error_effect.items()})
