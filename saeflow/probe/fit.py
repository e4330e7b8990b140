"""Cross-validated linear probes with nested regularisation search and a permutation baseline.

Outer folds come from the prompt indices and a seed (:func:`saeflow.probe.crossval.make_folds`),
never from X, so every input kind built from the same prompts and target is scored on
identical folds. Each outer fold is fitted by :func:`saeflow.probe.fold.fit_fold`: logistic
regression for labels (multinomial for >2 classes), ridge for continuous targets, the
regularisation strength chosen by CV inside the training fold and the normaliser
(``standardize``, ``minmax``, ``none``) part of the fitted pipeline, so its statistics come
from training rows only. SAE-code inputs (CSR, or ``input_kind: sae``) are scaled but never
centred (:data:`SCALE_ONLY`), stored sparse or not, so a CSR dataset and its dense copy get
the same fit. The permutation baseline reruns the identical procedure on shuffled targets,
each with its outer folds built from it exactly as the observed target's are (stratified
folds built on the observed labels and reused would leave a shuffled target unbalanced
across them and bias the null low); whole prompts' targets move together, as the folds keep
a prompt's rows together: chance is measured, not assumed. Its p-value is reported only where
``n_permutations`` lets it reach ``baseline_alpha``. With ``probe.cv.group_by`` (a
:class:`Grouping`) whole groups (e.g. a prompt's template) stay in one fold, outer and inner,
and a metadata-only baseline (the same procedure on the group's one-hot) says what the group
alone predicts. Fold intervals are Nadeau-Bengio corrected t-intervals
(:func:`saeflow.probe.crossval.t_interval`). Writing a fit to files is
:mod:`saeflow.probe.fit_files`.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp
import sklearn
from joblib import Parallel, delayed
from threadpoolctl import threadpool_limits

from saeflow.probe.crossval import (ProbeConfig, check_groups, make_folds, permute_prompts,
                                    t_interval)
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
    ``n_classes`` 1), the outer fold id of each row ``folds`` ``[n]`` and the group each row
    keeps to in the inner CV ``groups`` ``[n]``: the ``group_by`` group, else the prompt for
    continuous targets (None: labels, one row per prompt)."""

    X: Any
    y: np.ndarray
    folds: np.ndarray
    kind: str
    n_classes: int
    groups: np.ndarray | None = None


def cross_validate(data: CVData, cfg: ProbeConfig, only: tuple[str, ...] | None = None
                   ) -> tuple[list[dict[str, dict[str, float]]], list[FoldFit], np.ndarray]:
    """Outer CV over ``data.folds``.

    Returns per-fold ``{"train": metrics, "test": metrics}``, the fold fits, and out-of-fold
    scores: ``[n, n_classes]`` probabilities for labels, ``[n]`` predictions otherwise.
    ``only``: just these test metrics, no training metrics and no out-of-fold scores (zeros),
    all a permutation run needs.
    """
    X, y, folds, kind, n_classes = data.X, data.y, data.folds, data.kind, data.n_classes
    per_fold, fits = [], []
    oof = np.zeros((y.size, n_classes) if kind == "label" else y.size)
    # check_dataset has checked X and y (finite) and our estimator parameters are fixed:
    # sklearn's own checks of them, per call, cost as much as these small fits (thread-local,
    # so set here, in the thread that fits)
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        for k in range(int(folds.max()) + 1):
            train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
            fit = fit_fold(X, y, train, kind, cfg, data.groups, n_classes)
            scores = {"test": fold_metrics(kind, y[test], fit.pipeline, X[test], n_classes,
                                           only)}
            if only is None:
                scores["train"] = fold_metrics(kind, y[train], fit.pipeline, X[train],
                                               n_classes)
                oof[test] = predict_proba(fit.pipeline, X[test], n_classes) \
                    if kind == "label" else fit.pipeline.predict(X[test])
            per_fold.append(scores)
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
    metadata: dict[str, Any] | None = None  # the metadata-only baseline (group_by), or None

    @property
    def primary_metric(self) -> str:
        return "accuracy" if self.dataset.target_kind == "label" else "r2"


@dataclass(frozen=True)
class Grouping:
    """The groups ``probe.cv.group_by`` keeps whole: ``values`` ``[n]``, one per row (a
    prompt's rows share it), read from ``meta/<column>`` of ``source`` (named in errors)."""

    values: np.ndarray
    column: str
    source: str


def _null_scores(permuted: CVData, cfg: ProbeConfig, names: list[str]) -> list[float]:
    """Mean test score per metric in ``names`` of the full procedure on permuted labels."""
    per_fold, _, _ = cross_validate(permuted, cfg, only=tuple(names))
    return [float(np.nanmean([f["test"][name] for f in per_fold])) for name in names]


def observed_and_null(data: CVData, cfg: ProbeConfig, permuted: list[CVData], names: list[str],
                      n_jobs: int = 1, metadata: CVData | None = None
                      ) -> tuple[tuple[Any, Any, Any], np.ndarray, list[dict[str, Any]] | None]:
    """The observed cross-validation, the permutation runs (each of ``permuted``: ``data``
    with a shuffled target and that target's own folds; their mean test ``names`` ``[N,
    len(names)]``) and the metadata-only run's per-fold scores (None without ``metadata``,
    whose CSR one-hot inputs get the normaliser's scale-only form: for a 0/1 column it gives
    the fit the configured one would), as ``n_jobs`` threads.

    Each thread gets a single-threaded BLAS: several BLAS thread pools spinning on the same
    few cores (or beside other jobs) made a small ridge fit ~40x slower on 2 cores.
    """
    with threadpool_limits(limits=1, user_api="blas") if n_jobs > 1 else nullcontext():
        tasks = [delayed(cross_validate)(data, cfg)]
        if metadata is not None:
            meta_cfg = replace(cfg, normalise=SCALE_ONLY.get(cfg.normalise, cfg.normalise))
            tasks.append(delayed(cross_validate)(metadata, meta_cfg))
        tasks += [delayed(_null_scores)(p, cfg, names) for p in permuted]
        # threads: no process start-up or copies of X; the heavy parts run without the GIL
        out = Parallel(n_jobs=n_jobs, prefer="threads")(tasks)
    meta = out.pop(1)[0] if metadata is not None else None
    return out[0], np.array(out[1:], dtype=np.float64).reshape(len(permuted), len(names)), meta


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


def fit_probe(ds: ProbeDataset, cfg: ProbeConfig, n_jobs: int = 1,
              grouping: Grouping | None = None) -> ProbeResult:
    """Nested-CV probe on ``ds`` plus a label-permutation baseline, each shuffled target on
    folds built from it as the observed target's are, and, with ``grouping``
    (``probe.cv.group_by``), folds that keep each group whole and a metadata-only baseline.

    Cost: ``(1 + n_permutations) * n_folds * (len(grid) * inner_folds + 1)`` model fits (a
    grid of one value skips the inner CV: ``len(grid) * inner_folds`` is 0), plus one
    cross-validation of the groups' one-hot with ``grouping``; they run on ``n_jobs`` threads
    with one BLAS thread each (the shuffles are drawn up front, so the result does not depend
    on ``n_jobs``). Columns constant over the whole dataset (dead SAE features) cannot inform
    any fold and are left out of the fits; their coefficients are written as 0
    (:func:`_full_width`).
    """
    check_dataset(ds, cfg.n_folds)
    kind = ds.target_kind
    y = ds.y.astype(np.int64) if kind == "label" else ds.y.astype(np.float64)
    n_classes = len(ds.class_names) if kind == "label" else 1
    if kind == "label" and np.unique(ds.sample_index).size != ds.sample_index.size:
        raise InputError(ds.name, "sample_index", "label datasets need one row per prompt")
    group_ids = None
    if grouping is not None:
        check_groups(grouping.values, y if kind == "label" else None, cfg.n_folds,
                     (grouping.source, ds.name), ds.class_names)
        group_ids = np.unique(grouping.values, return_inverse=True)[1].ravel()

    def folds_of(target: np.ndarray) -> np.ndarray:  # the observed target's and every shuffle's
        return make_folds(ds.sample_index, target if kind == "label" else None, cfg.n_folds,
                          cfg.seed, group_ids)

    folds = folds_of(y)
    primary = "accuracy" if kind == "label" else "r2"
    rng = np.random.default_rng(cfg.seed)
    names = [primary, "roc_auc"] if kind == "label" else [primary]
    shuffles = [permute_prompts(y, ds.sample_index, ds.row_position, rng)
                for _ in range(cfg.n_permutations)]
    live = ~constant_columns(ds.X)  # [d]
    X = ds.X if live.all() else ds.X[:, live]
    run_cfg = replace(cfg, normalise=SCALE_ONLY[cfg.normalise]) if scales_only(ds) else cfg
    data = CVData(X, y, folds, kind, n_classes, group_ids if group_ids is not None else
                  None if kind == "label" else ds.sample_index)
    permuted = [replace(data, y=y_perm, folds=folds_of(y_perm) if kind == "label" else folds)
                for y_perm in shuffles]
    meta_data = None if group_ids is None else replace(data, X=sp.csr_matrix(  # [n, groups]
        (np.ones(group_ids.size), (np.arange(group_ids.size), group_ids))))
    (per_fold, fits, oof), null, meta_folds = observed_and_null(data, run_cfg, permuted, names,
                                                                 n_jobs, meta_data)
    if not live.all():
        # a constant column's fitted shift would be its value, when the normaliser centres
        row = np.zeros(live.size) if scales_only(ds) else dense_row(ds.X, 0)
        fits = [_full_width(f, live, row) for f in fits]
    metrics = _summarise_folds(per_fold, folds)
    baseline = {name: baseline_record(null[:, j], metrics[name]["test"]["mean"],
                                      cfg.baseline_alpha) for j, name in enumerate(names)}
    metadata = None if grouping is None or meta_folds is None else \
        metadata_record(_summarise_folds(meta_folds, folds), primary, grouping)
    notes = _notes(ds, cfg, run_cfg, fits, live, folds)
    return ProbeResult(ds, cfg, folds, fits, metrics, baseline, oof, notes,
                       normalise=run_cfg.normalise, metadata=metadata)


def metadata_record(metrics: dict[str, Any], primary: str, grouping: Grouping
                    ) -> dict[str, Any]:
    """The metadata-only baseline: the probe's procedure on the one-hot of the
    ``group_by`` column, on the same folds; what the group alone predicts."""
    return {"column": grouping.column, "input": f"one-hot of meta/{grouping.column}",
            "n_groups": int(np.unique(grouping.values).size), "metric": primary,
            "mean": metrics[primary]["test"]["mean"], "test": metrics[primary]["test"],
            "folds": metrics[primary]["folds"],
            "metrics": {name: m["test"] for name, m in metrics.items()}}


def _notes(ds: ProbeDataset, cfg: ProbeConfig, run_cfg: ProbeConfig, fits: list[FoldFit],
           live: np.ndarray, folds: np.ndarray) -> list[str]:
    """What a reader of the fit should know, each logged (a warning where unexpected)."""
    notes = [f"{int((~live).sum())} of {live.size} input columns are constant (e.g. dead "
             "features) and left out of the fit (coefficient 0)"] if not live.all() else []
    if run_cfg.normalise != cfg.normalise:
        notes.append(f"SAE-code inputs: normalise {cfg.normalise} applied as "
                     f"{run_cfg.normalise} (scaled, not centred: saeflow.probe.fit.SCALE_ONLY)")
    grid = cfg.Cs if ds.target_kind == "label" else cfg.alphas
    notes += [f"fold {k}: inner CV impossible, fixed strength {f.regularisation}"
              for k, f in enumerate(fits) if f.inner_folds == 0 and len(grid) > 1]
    notes += [f"fold {k}: solver hit max_iter={cfg.max_iter}" for k, f in enumerate(fits)
              if not f.converged]
    if ds.target_kind == "label":  # only grouped folds can leave a class out of training
        y = ds.y.astype(np.int64)
        for k in range(int(folds.max()) + 1):
            gone = np.setdiff1d(np.unique(y), y[folds != k])
            if gone.size:
                notes.append(f"fold {k}: class(es) {[ds.class_names[c] for c in gone]} absent "
                             "from its training rows")
    for note in notes:
        expected = "constant" in note or note.startswith("SAE-code")
        (log.info if expected else log.warning)("%s: %s", ds.name, note)
    return notes
