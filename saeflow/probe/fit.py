"""Cross-validated linear probes with nested regularisation search and a permutation baseline.

Outer folds come from the prompt indices and a seed (:func:`saeflow.probe.crossval.make_folds`),
never from X, so every input kind built from the same prompts and target is scored on
identical folds. Each outer fold is fitted by :func:`saeflow.probe.fold.fit_fold`: logistic
regression for labels (multinomial for >2 classes), ridge for continuous targets, the
regularisation strength chosen by CV inside the training fold and the normaliser
(``standardize``, ``minmax``, ``none``) part of the fitted pipeline, so its statistics come
from training rows only. SAE-code inputs (CSR, or ``input_kind: sae``) are scaled but never
centred (:data:`SCALE_ONLY`), stored sparse or not, so a CSR dataset and its dense copy get
the same fit. The permutation baseline reruns the identical procedure on shuffled targets
over the same outer folds (whole prompts' targets move together, as the folds keep a
prompt's rows together): chance is measured, not assumed. Its p-value is reported only where
``n_permutations`` lets it reach ``baseline_alpha``. Fold intervals are Nadeau-Bengio
corrected t-intervals (:func:`saeflow.probe.crossval.t_interval`).
Writing a fit to files is :mod:`saeflow.probe.fit_files`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from threadpoolctl import threadpool_limits

from saeflow.probe.crossval import ProbeConfig, make_folds, permute_prompts, t_interval
from saeflow.core.errors import InputError
from saeflow.probe.dataset import ProbeDataset, check_dataset, constant_columns, dense_row
from saeflow.probe.fold import FoldFit, fit_fold, fold_metrics, predict_proba

log = logging.getLogger(__name__)

# What each normaliser becomes for SAE codes: centring would turn every zero into a non-zero
# (a CSR X into a dense one), and it changes no fit, since the unpenalised intercept absorbs
# any shift. ``scale``: divide by the column SD; ``maxabs``: by the column's largest |value|,
# which is min-max scaling for a column whose minimum is 0 (almost every SAE feature).
SCALE_ONLY = {"standardize": "scale", "minmax": "maxabs", "none": "none"}


def scales_only(ds: ProbeDataset) -> bool:
    """Whether ``ds``'s inputs are normalised by :data:`SCALE_ONLY`: SAE codes, or CSR."""
    return ds.sparse or ds.meta.get("input_kind") == "sae"


# ---------------------------------------------------------------------------- cross-validation


# metric ranges: intervals are clipped to them (a t-interval knows nothing of [0, 1])
METRIC_RANGE = {"r2": (-np.inf, 1.0), "mse": (0.0, np.inf), "pearson_r": (-1.0, 1.0)}


@dataclass(frozen=True)
class CVData:
    """What one outer cross-validation runs on: inputs ``X`` ``[n, d]`` (dense or CSR),
    targets ``y`` ``[n]`` of ``kind`` (``label``: ids ``0..n_classes-1``; else continuous,
    ``n_classes`` 1), the outer fold id of each row ``folds`` ``[n]`` and its prompt id
    ``groups`` ``[n]`` (a continuous target's prompt stays in one inner fold)."""

    X: Any
    y: np.ndarray
    folds: np.ndarray
    kind: str
    n_classes: int
    groups: np.ndarray | None = None


def cross_validate(data: CVData, cfg: ProbeConfig
                   ) -> tuple[list[dict[str, dict[str, float]]], list[FoldFit], np.ndarray]:
    """Outer CV over ``data.folds``.

    Returns per-fold ``{"train": metrics, "test": metrics}``, the fold fits, and out-of-fold
    scores: ``[n, n_classes]`` probabilities for labels, ``[n]`` predictions otherwise.
    """
    X, y, folds, kind, n_classes = data.X, data.y, data.folds, data.kind, data.n_classes
    per_fold, fits = [], []
    oof = np.zeros((y.size, n_classes) if kind == "label" else y.size)
    for k in range(int(folds.max()) + 1):
        train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        fit = fit_fold(X, y, train, kind, cfg, data.groups, n_classes)
        per_fold.append({"train": fold_metrics(kind, y[train], fit.pipeline, X[train], n_classes),
                         "test": fold_metrics(kind, y[test], fit.pipeline, X[test], n_classes)})
        oof[test] = predict_proba(fit.pipeline, X[test], n_classes) if kind == "label" \
            else fit.pipeline.predict(X[test])
        fits.append(fit)
    return per_fold, fits, oof


def _summarise_folds(per_fold: list[dict[str, dict[str, float]]], folds: np.ndarray
                     ) -> dict[str, Any]:
    """Per metric: train and test mean with corrected t-intervals over folds (the training
    scores get the same correction: their folds overlap even more), gap and fold values."""
    names = per_fold[0]["test"].keys()
    n_test = np.bincount(folds).astype(np.float64)
    ratio = float(n_test.mean() / (folds.size - n_test).mean())  # n_test / n_train
    out = {}
    for name in names:
        bounds = METRIC_RANGE.get(name, (0.0, 1.0))
        train = t_interval(np.array([f["train"][name] for f in per_fold]), bounds=bounds,
                           test_train_ratio=ratio)
        test = t_interval(np.array([f["test"][name] for f in per_fold]), bounds=bounds,
                          test_train_ratio=ratio)
        out[name] = {"train": train, "test": test, "gap": train["mean"] - test["mean"],
                     "folds": [f["test"][name] for f in per_fold]}
    return out


@dataclass
class ProbeResult:
    """Everything :func:`fit_probe` learned; :func:`saeflow.probe.fit_files.probe_record` makes it
    JSON."""

    dataset: ProbeDataset
    config: ProbeConfig
    folds: np.ndarray  # [n] fold id per row
    fits: list[FoldFit]
    metrics: dict[str, Any]
    baseline: dict[str, Any]
    oof: np.ndarray
    notes: list[str] = field(default_factory=list)
    normalise: str = ""  # the normaliser applied: config.normalise, or its SCALE_ONLY form

    @property
    def primary_metric(self) -> str:
        return "accuracy" if self.dataset.target_kind == "label" else "r2"


def _null_scores(permuted: CVData, cfg: ProbeConfig, names: list[str]) -> list[float]:
    """Mean test score per metric in ``names`` of the full procedure on permuted labels."""
    per_fold, _, _ = cross_validate(permuted, cfg)
    return [float(np.nanmean([f["test"][name] for f in per_fold])) for name in names]


def _run_all(data: CVData, cfg: ProbeConfig, shuffles: list[np.ndarray], names: list[str],
             n_jobs: int) -> tuple[tuple[Any, Any, Any], np.ndarray]:
    """The observed cross-validation and the permutation runs (``data`` with each of the
    ``shuffles`` as its targets), as ``n_jobs`` threads.

    Each thread gets a single-threaded BLAS: several BLAS thread pools spinning on the same
    few cores (or beside other jobs) made a small ridge fit ~40x slower on 2 cores.
    """
    with threadpool_limits(limits=1 if n_jobs > 1 else None, user_api="blas"):
        tasks = [delayed(cross_validate)(data, cfg)]
        tasks += [delayed(_null_scores)(replace(data, y=y_perm), cfg, names)
                  for y_perm in shuffles]
        # threads: no process start-up or copies of X; the heavy parts run without the GIL
        out = Parallel(n_jobs=n_jobs, prefer="threads")(tasks)
    return out[0], np.array(out[1:], dtype=np.float64).reshape(len(shuffles), len(names))


def _full_width(fit: FoldFit, live: np.ndarray, row: np.ndarray) -> FoldFit:
    """``fit`` (made on the ``live`` columns) with coefficients ``[n_outputs, d]`` and
    normaliser statistics ``[d]`` over all columns: a column constant over the whole dataset
    gets coefficient 0, shift = its value and factor 1, exactly what fitting it would give."""
    coef = np.zeros((fit.coef.shape[0], live.size), fit.coef.dtype)
    coef[:, live] = fit.coef
    normaliser = {}
    for key, value in fit.normaliser.items():
        full = row.astype(np.float64) if key == "shift" else np.ones(live.size)
        full[live] = value
        normaliser[key] = full
    return replace(fit, coef=coef, normaliser=normaliser)


def baseline_record(null: np.ndarray, observed: float, alpha: float) -> dict[str, Any]:
    """The permutation baseline of one metric: mean, SD and values ``[N]`` of the null
    scores, and the p-value ``(1 + #{null >= observed}) / (1 + N)`` where it can be small:
    its floor ``1/(N+1)`` must reach ``alpha``, else (3 permutations: p >= 0.25) it would be
    reported though it cannot say anything, so it is None with the reason."""
    floor = 1.0 / (1 + null.size)
    out: dict[str, Any] = {"mean": float(null.mean()) if null.size else float("nan"),
                           "std": float(null.std(ddof=1)) if null.size > 1 else float("nan"),
                           "values": null.tolist(), "min_attainable_p": floor,
                           "p_value": None, "p_value_note": None}
    if floor <= alpha:
        out["p_value"] = float((1 + np.sum(null >= observed)) / (1 + null.size))
    else:
        out["p_value_note"] = (f"not reported: {null.size} permutations give p >= {floor:.3g} > "
                               f"baseline_alpha {alpha}; n_permutations >= "
                               f"{int(np.ceil(1 / alpha - 1 - 1e-9))} report one")
    return out


def fit_probe(ds: ProbeDataset, cfg: ProbeConfig, n_jobs: int = 1) -> ProbeResult:
    """Nested-CV probe on ``ds`` plus a label-permutation baseline on the same folds.

    Cost: ``(1 + n_permutations) * n_folds * (len(grid) * inner_folds + 1)`` model fits; the
    observed run and the permutations run on ``n_jobs`` threads with one BLAS thread each
    (the shuffles are drawn up front, so the result does not depend on ``n_jobs``).
    Columns constant over the whole dataset (dead SAE features) cannot inform any fold and
    are left out of the fits; their coefficients are written as 0 (:func:`_full_width`).
    """
    check_dataset(ds, cfg.n_folds)
    kind = ds.target_kind
    y = ds.y.astype(np.int64) if kind == "label" else ds.y.astype(np.float64)
    n_classes = len(ds.class_names) if kind == "label" else 1
    if kind == "label" and np.unique(ds.sample_index).size != ds.sample_index.size:
        raise InputError(ds.name, "sample_index", "label datasets need one row per prompt")
    folds = make_folds(ds.sample_index, y if kind == "label" else None, cfg.n_folds, cfg.seed)
    groups = ds.sample_index
    primary = "accuracy" if kind == "label" else "r2"
    rng = np.random.default_rng(cfg.seed)
    names = [primary, "roc_auc"] if kind == "label" else [primary]
    shuffles = [permute_prompts(y, ds.sample_index, ds.row_position, rng)
                for _ in range(cfg.n_permutations)]
    live = ~constant_columns(ds.X)  # [d]
    X = ds.X if live.all() else ds.X[:, live]
    run_cfg = replace(cfg, normalise=SCALE_ONLY[cfg.normalise]) if scales_only(ds) else cfg
    (per_fold, fits, oof), null = _run_all(CVData(X, y, folds, kind, n_classes, groups), run_cfg,
                                           shuffles, names, n_jobs)
    if not live.all():
        # a constant column's fitted shift would be its value, when the normaliser centres
        row = np.zeros(live.size) if scales_only(ds) else dense_row(ds.X, 0)
        fits = [_full_width(f, live, row) for f in fits]
    metrics = _summarise_folds(per_fold, folds)
    baseline = {name: baseline_record(null[:, j], metrics[name]["test"]["mean"],
                                      cfg.baseline_alpha) for j, name in enumerate(names)}
    notes = [f"{int((~live).sum())} of {live.size} input columns are constant (e.g. dead "
             "features) and left out of the fit (coefficient 0)"] if not live.all() else []
    if run_cfg.normalise != cfg.normalise:
        notes.append(f"SAE-code inputs: normalise {cfg.normalise} applied as "
                     f"{run_cfg.normalise} (scaled, not centred: saeflow.probe.fit.SCALE_ONLY)")
    notes += [f"fold {k}: inner CV impossible, fixed strength {f.regularisation}"
             for k, f in enumerate(fits) if f.inner_folds == 0]
    notes += [f"fold {k}: solver hit max_iter={cfg.max_iter}" for k, f in enumerate(fits)
              if not f.converged]
    for note in notes:
        expected = "constant" in note or note.startswith("SAE-code")
        (log.info if expected else log.warning)("%s: %s", ds.name, note)
    return ProbeResult(ds, cfg, folds, fits, metrics, baseline, oof, notes,
                       normalise=run_cfg.normalise)
