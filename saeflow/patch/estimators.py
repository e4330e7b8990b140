"""The node estimators, in one registry: name -> how it estimates every latent and error
node's patching effect, what its file records of it, and how the summary judges it.

Every estimator runs through :func:`saeflow.patch.attribution.run_atp` (one per-batch
function with :func:`~saeflow.patch.attribution.attribution_patching`'s arguments and
return), with and without the SAE error term, into a file of atp.h5's layout
(:func:`estimate_stage`, rule ``patch_estimate``: ``patch/{name}.h5``). The names are those
``patch.estimators`` may list (workflow/schemas/config.schema.yaml, whose enum a test holds to
:data:`ESTIMATORS`); ``atp`` always runs, as patch_verify and the circuit rank nodes by it.
Adding an estimator is its per-batch function and an entry here.

Imports nothing heavy: each entry imports its module when it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from saeflow.patch.pairs import PatchConfig
    from saeflow.patch.splice import PatchRun


@dataclass(frozen=True)
class Estimator:
    """One node estimator.

    ``per_batch(cfg)``: the function :func:`~saeflow.patch.attribution.run_atp` runs on each
    batch. ``record(cfg)``: what its file's provenance records as ``config.estimator`` (None:
    nothing, plain AtP). ``values``: ``"signed"`` effects, judged against every node's exact
    effect as AtP is (``{name}_vs_exhaustive``), or ``"magnitudes"`` (>= 0), judged with
    ``|AtP|`` against the mean ``|exact|`` (``magnitude_vs_exhaustive``). ``rank_only``: off
    by a scale of its own, so no relative L1 error is reported. ``vs_atp``: without the
    exhaustive reference, compared with AtP (``{name}_vs_atp``)."""

    per_batch: Callable[[PatchConfig], Callable[..., Any]]
    record: Callable[[PatchConfig], dict[str, Any]] | None = None
    values: str = "signed"
    rank_only: bool = False
    vs_atp: bool = False


def _atp(cfg: PatchConfig) -> Callable[..., Any]:
    from saeflow.patch.attribution import attribution_patching

    return attribution_patching


def _ig(cfg: PatchConfig) -> Callable[..., Any]:
    from saeflow.patch.ig import integrated_gradients

    return partial(integrated_gradients, steps=cfg.ig_steps, max_batch=cfg.max_batch)


def _ig_record(cfg: PatchConfig) -> dict[str, Any]:
    return {"name": "ig", "steps": cfg.ig_steps, "alphas": "k / steps, k = 0..steps-1",
            "path": "one site at a time, corrupted to clean"}


def _graddrop(cfg: PatchConfig) -> Callable[..., Any]:
    from saeflow.patch.graddrop import graddrop_patching

    return graddrop_patching


def _graddrop_record(cfg: PatchConfig) -> dict[str, Any]:
    return {"name": "graddrop", "formula": "1 / (L - 1) * sum_l |AtP with block l's gradient "
            "dropped| (AtP* GradDrop)", "values": "magnitudes (>= 0)"}


def _qkfix(cfg: PatchConfig) -> Callable[..., Any]:
    from saeflow.patch.qkfix import qk_fix_patching

    return qk_fix_patching


def _qkfix_record(cfg: PatchConfig) -> dict[str, Any]:
    return {"name": "qkfix", "formula": "AtP + sum over downstream attention layers of "
            "(<dm/dA, exact pattern change from the node's residual contribution> - that "
            "path's linear term) (AtP* QK fix)", "values": "signed"}


# The order is the summary's (its ``estimators`` list and comparison rows).
ESTIMATORS: dict[str, Estimator] = {
    # attribution patching (saeflow.patch.attribution)
    "atp": Estimator(_atp),
    # integrated gradients (saeflow.patch.ig)
    "ig": Estimator(_ig, _ig_record, vs_atp=True),
    # AtP* GradDrop (saeflow.patch.graddrop): magnitudes, 1 / (L - 1) scaled
    "graddrop": Estimator(_graddrop, _graddrop_record, values="magnitudes", rank_only=True),
    # AtP* QK fix (saeflow.patch.qkfix)
    "qkfix": Estimator(_qkfix, _qkfix_record),
}


def estimator(name: str) -> Estimator:
    """The registry's entry ``name``; an unknown name is an InputError naming the known ones."""
    from saeflow.core.errors import InputError

    if name not in ESTIMATORS:
        raise InputError("config", "patch.estimators", f"unknown estimator {name!r}; known: "
                         f"{list(ESTIMATORS)}")
    return ESTIMATORS[name]


def estimate_stage(run: PatchRun, name: str, out_path: str | Path,
                   config: Mapping[str, Any] | None = None) -> None:
    """Rule ``patch_estimate``: estimator ``name`` with and without the error term, plus the
    model-alone metrics, into ``out_path`` (:func:`saeflow.patch.attribution.write_atp`'s
    layout); the provenance records the estimator (:attr:`Estimator.record`)."""
    from saeflow.patch.attribution import MODES, model_logit_diffs, run_atp, write_atp

    entry = estimator(name)
    per_batch = entry.per_batch(run.cfg)
    results = {mode: run_atp(run.model, run.saes, run.batches, with_error, run.cfg.max_batch,
                             estimate=per_batch)
               for mode, with_error in MODES.items()}
    if entry.record is not None:
        config = {**dict(config or {}), "estimator": entry.record(run.cfg)}
    write_atp(out_path, results, model_logit_diffs(run.model, run.batches, run.cfg.max_batch),
              config)
