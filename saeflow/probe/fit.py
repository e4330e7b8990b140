"""Cross-validated linear probes with nested regularisation search and a permutation baseline.

Labels get logistic regression (multinomial for >2 classes), continuous targets ridge. Outer
folds come from the prompt indices and a seed (:func:`saeflow.probe.crossval.make_folds`), never
from X, so every input kind built from the same prompts and target is scored on identical
folds. Inside each training fold a grid search over the regularisation strength runs its own
CV, and the normaliser (``standardize``, ``minmax``, ``none``) is part of the fitted pipeline,
so its statistics come from training rows only (of the inner training split during the search,
of the whole outer training fold for the refit). SAE-code inputs (CSR, or ``input_kind:
sae``) are scaled but never centred (:data:`SCALE_ONLY`), stored sparse or not, so a CSR
dataset and its dense copy get the same fit. The permutation baseline reruns the identical
procedure on shuffled targets over the same outer folds (whole prompts' targets move together,
as the folds keep a prompt's rows together): chance is measured, not assumed. Its p-value is
reported only where ``n_permutations`` lets it reach ``baseline_alpha``. Fold intervals are
Nadeau-Bengio corrected t-intervals (:func:`saeflow.probe.crossval.t_interval`).
Writing a fit to files is :mod:`saeflow.probe.fit_files`.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, log_loss,
                             mean_squared_error, precision_score, r2_score, recall_score,
                             roc_auc_score)
from sklearn.model_selection import GroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, MaxAbsScaler, MinMaxScaler, StandardScaler
from threadpoolctl import threadpool_limits

from saeflow.probe.crossval import make_folds, permute_prompts, t_interval
from saeflow.core.errors import InputError
from saeflow.probe.dataset import ProbeDataset, check_dataset, constant_columns, dense_row

log = logging.getLogger(__name__)

NORMALISERS = ("standardize", "minmax", "none")
# What each normaliser becomes for SAE codes: centring would turn every zero into a non-zero
# (a CSR X into a dense one), and it changes no fit, since the unpenalised intercept absorbs
# any shift. ``scale``: divide by the column SD; ``maxabs``: by the column's largest |value|,
# which is min-max scaling for a column whose minimum is 0 (almost every SAE feature).
SCALE_ONLY = {"standardize": "scale", "minmax": "maxabs", "none": "none"}


@dataclass(frozen=True)
class ProbeConfig:
    """CV settings (``probe.cv``), validated; their defaults and meaning are the schema's
    (workflow/schemas/config.schema.yaml), filled in by :meth:`from_dict`. ``Cs``: logistic
    inverse strengths; ``alphas``: ridge strengths; ``tol``: the logistic solver's stopping
    tolerance (1e-3 halves the time of wide SAE probes at equal test accuracy on the toy);
    ``baseline_alpha``: the baseline p is reported only if ``1/(n_permutations+1)`` reaches it."""

    n_folds: int
    inner_folds: int
    Cs: tuple[float, ...]
    alphas: tuple[float, ...]
    normalise: str
    n_permutations: int
    seed: int
    max_iter: int
    tol: float
    baseline_alpha: float

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, source: str = "config") -> ProbeConfig:
        """Build from ``probe.cv`` as validated (the schema, workflow/schemas/config.schema.yaml,
        is the one home of its defaults: :func:`saeflow.core.config.schema_defaults`
        ``("probe.cv")``); unknown or missing keys and bad values are errors."""
        from saeflow.core.config import strict_fields

        values = strict_fields(cls, values, "probe.cv", source)
        for key in ("Cs", "alphas"):
            values[key] = tuple(float(v) for v in values[key])
        cfg = cls(**values)
        if cfg.normalise not in NORMALISERS:
            raise InputError(source, "probe.cv.normalise", f"{cfg.normalise!r}; choose from "
                             f"{list(NORMALISERS)}")
        if cfg.n_folds < 2 or cfg.inner_folds < 2:
            raise InputError(source, "probe.cv", "n_folds and inner_folds must be >= 2")
        if cfg.n_permutations < 0 or not cfg.Cs or not cfg.alphas or not cfg.tol > 0 \
                or not 0 < cfg.baseline_alpha < 1:
            raise InputError(source, "probe.cv", "need n_permutations >= 0, non-empty grids, "
                             "tol > 0 and 0 < baseline_alpha < 1")
        return cfg


# ---------------------------------------------------------------------------- one fold


def make_normaliser(kind: str) -> Any:
    """A fresh sklearn transformer for ``kind`` (a :data:`NORMALISERS` entry, or ``scale`` /
    ``maxabs`` of :data:`SCALE_ONLY`, which take CSR input and keep it sparse)."""
    if kind == "none":
        return FunctionTransformer(accept_sparse=True)
    if kind == "scale":
        return StandardScaler(with_mean=False)
    return {"standardize": StandardScaler, "minmax": MinMaxScaler, "maxabs": MaxAbsScaler}[kind]()


def normaliser_params(step: Any) -> dict[str, np.ndarray]:
    """Fitted statistics ``[d]`` of a normaliser: ``x_norm = (x - shift) * factor``."""
    if isinstance(step, StandardScaler):
        shift = step.mean_ if step.with_mean else np.zeros_like(step.scale_)
        return {"shift": shift, "factor": 1.0 / step.scale_}
    if isinstance(step, MinMaxScaler):
        return {"shift": step.data_min_, "factor": step.scale_}
    if isinstance(step, MaxAbsScaler):
        return {"shift": np.zeros_like(step.scale_), "factor": 1.0 / step.scale_}
    return {}


def scales_only(ds: ProbeDataset) -> bool:
    """Whether ``ds``'s inputs are normalised by :data:`SCALE_ONLY`: SAE codes, or CSR."""
    return ds.sparse or ds.meta.get("input_kind") == "sae"


@dataclass
class FoldFit:
    """A probe fitted on one outer training fold (all arrays on the normalised scale)."""

    pipeline: Pipeline
    regularisation: float
    inner_folds: int
    normaliser: dict[str, np.ndarray]
    coef: np.ndarray  # [n_outputs, d]
    intercept: np.ndarray  # [n_outputs]
    converged: bool = True


def _model(kind: str, cfg: ProbeConfig, strength: float, warm: bool = False) -> Any:
    if kind == "label":
        # newton-cg: several times faster than lbfgs here at equal solutions (small n, wide d)
        return LogisticRegression(C=strength, max_iter=cfg.max_iter, solver="newton-cg",
                                  tol=cfg.tol, warm_start=warm)
    return Ridge(alpha=strength)


def choose_strength(X: np.ndarray, y: np.ndarray, kind: str, cfg: ProbeConfig, n_classes: int,
                    groups: np.ndarray | None = None) -> tuple[float, int]:
    """Regularisation strength by CV inside the rows given (one outer training fold).

    ``X`` ``[m, d]``, ``y`` ``[m]``, ``groups`` ``[m]`` prompt ids (continuous targets: a
    prompt's rows stay in one inner fold). The normaliser is refitted on each inner training
    split. Scores: mean log-loss (labels) or R² over inner folds; the grid runs from strong to
    weak regularisation with warm starts, and ties go to the stronger. Returns the strength
    and the number of inner folds; 0 when a class is too rare to split again, in which case
    the grid's middle value is used.
    """
    grid = sorted(cfg.Cs) if kind == "label" else sorted(cfg.alphas, reverse=True)
    if kind == "label":
        inner = min(cfg.inner_folds, int(np.bincount(y, minlength=n_classes).min()))
        splits = StratifiedKFold(max(inner, 2), shuffle=True, random_state=cfg.seed).split(X, y)
    else:
        g = np.arange(y.size) if groups is None else groups
        inner = min(cfg.inner_folds, np.unique(g).size)
        splits = GroupKFold(max(inner, 2)).split(X, y, g)
    if inner < 2:
        return float(grid[len(grid) // 2]), 0
    scores = np.zeros(len(grid))
    key = "C" if kind == "label" else "alpha"
    for tr, va in splits:
        norm = make_normaliser(cfg.normalise)
        X_tr = norm.fit_transform(X[tr])
        X_va = norm.transform(X[va])
        model = _model(kind, cfg, grid[0], warm=True)
        for i, strength in enumerate(grid):
            model.set_params(**{key: strength}).fit(X_tr, y[tr])
            if kind == "label":
                proba = predict_proba(model, X_va, n_classes)
                scores[i] -= log_loss(y[va], proba, labels=list(range(n_classes)))
            else:
                scores[i] += r2_score(y[va], model.predict(X_va))
    return float(grid[int(np.argmax(scores))]), inner


def fit_fold(X: np.ndarray, y: np.ndarray, train: np.ndarray, kind: str, cfg: ProbeConfig,
             groups: np.ndarray | None = None, n_classes: int | None = None) -> FoldFit:
    """Fit normaliser + probe on rows ``train`` with the strength chosen by inner CV.

    ``X`` ``[n, d]``, ``y`` ``[n]``, ``train`` row indices, ``groups`` ``[n]`` prompt ids.
    Only ``X[train]`` is ever seen, so no test row informs the normaliser or the strength.
    """
    Xt, yt = X[train], y[train]
    n_classes = n_classes or (int(y.max()) + 1 if kind == "label" else 1)
    with warnings.catch_warnings():
        # non-convergence is recorded per fold (FoldFit.converged) instead of spamming logs
        warnings.simplefilter("ignore", ConvergenceWarning)
        strength, inner = choose_strength(Xt, yt, kind, cfg, n_classes,
                                          None if groups is None else groups[train])
        pipe = Pipeline([("norm", make_normaliser(cfg.normalise)),
                         ("model", _model(kind, cfg, strength))]).fit(Xt, yt)
    est = pipe.named_steps["model"]
    converged = kind != "label" or int(np.max(est.n_iter_)) < cfg.max_iter
    return FoldFit(pipe, strength, inner, normaliser_params(pipe.named_steps["norm"]),
                   np.atleast_2d(est.coef_), np.atleast_1d(est.intercept_), converged)


def fold_metrics(kind: str, y_true: np.ndarray, fitted: Pipeline, X: np.ndarray,
                 n_classes: int) -> dict[str, float]:
    """Metrics of a fitted pipeline on rows ``X`` ``[m, d]`` with targets ``[m]``.

    Binary: precision/recall of class 1, ROC-AUC from its probability. Multiclass: macro
    averages, ROC-AUC macro one-vs-rest (NaN where a class is missing from ``y_true``).
    """
    if kind != "label":
        pred = fitted.predict(X)
        r = float(np.corrcoef(pred, y_true)[0, 1]) if np.std(pred) > 0 and np.std(y_true) > 0 \
            else float("nan")
        return {"r2": float(r2_score(y_true, pred)), "mse": float(mean_squared_error(y_true, pred)),
                "pearson_r": r}
    proba = predict_proba(fitted, X, n_classes)
    pred = proba.argmax(axis=1)
    average = "binary" if n_classes == 2 else "macro"
    labels = list(range(n_classes))
    out = {"accuracy": float(accuracy_score(y_true, pred)),
           "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
           "precision": float(precision_score(y_true, pred, average=average, labels=labels,
                                              zero_division=0)),
           "recall": float(recall_score(y_true, pred, average=average, labels=labels,
                                        zero_division=0))}
    if np.unique(y_true).size < n_classes:
        out["roc_auc"] = float("nan")
    elif n_classes == 2:
        out["roc_auc"] = float(roc_auc_score(y_true, proba[:, 1]))
    else:
        out["roc_auc"] = float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro",
                                             labels=labels))
    return out


def predict_proba(fitted: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities ``[m, n_classes]``; a class unseen in training gets 0."""
    proba = np.zeros((X.shape[0], n_classes))
    proba[:, fitted.classes_] = fitted.predict_proba(X)
    # float32 inputs give float32 probabilities whose rows miss 1 by more than sklearn allows
    return proba / proba.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------- cross-validation


# metric ranges: intervals are clipped to them (a t-interval knows nothing of [0, 1])
METRIC_RANGE = {"r2": (-np.inf, 1.0), "mse": (0.0, np.inf), "pearson_r": (-1.0, 1.0)}


def cross_validate(X: np.ndarray, y: np.ndarray, folds: np.ndarray, kind: str,
                   cfg: ProbeConfig, n_classes: int, groups: np.ndarray | None = None
                   ) -> tuple[list[dict[str, dict[str, float]]], list[FoldFit], np.ndarray]:
    """Outer CV over the given fold ids ``[n]``.

    Returns per-fold ``{"train": metrics, "test": metrics}``, the fold fits, and out-of-fold
    scores: ``[n, n_classes]`` probabilities for labels, ``[n]`` predictions otherwise.
    """
    per_fold, fits = [], []
    oof = np.zeros((y.size, n_classes) if kind == "label" else y.size)
    for k in range(int(folds.max()) + 1):
        train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        fit = fit_fold(X, y, train, kind, cfg, groups, n_classes)
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


def _null_scores(X: np.ndarray, y_perm: np.ndarray, folds: np.ndarray, kind: str,
                 cfg: ProbeConfig, n_classes: int, groups: np.ndarray, names: list[str]
                 ) -> list[float]:
    """Mean test score per metric in ``names`` of the full procedure on permuted labels."""
    per_fold, _, _ = cross_validate(X, y_perm, folds, kind, cfg, n_classes, groups)
    return [float(np.nanmean([f["test"][name] for f in per_fold])) for name in names]


def _run_all(X: np.ndarray, y: np.ndarray, shuffles: list[np.ndarray], folds: np.ndarray,
             kind: str, cfg: ProbeConfig, n_classes: int, groups: np.ndarray, names: list[str],
             n_jobs: int) -> tuple[tuple[Any, Any, Any], np.ndarray]:
    """The observed cross-validation and the permutation runs, as ``n_jobs`` threads.

    Each thread gets a single-threaded BLAS: several BLAS thread pools spinning on the same
    few cores (or beside other jobs) made a small ridge fit ~40x slower on 2 cores.
    """
    with threadpool_limits(limits=1 if n_jobs > 1 else None, user_api="blas"):
        tasks = [delayed(cross_validate)(X, y, folds, kind, cfg, n_classes, groups)]
        tasks += [delayed(_null_scores)(X, y_perm, folds, kind, cfg, n_classes, groups, names)
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
    (per_fold, fits, oof), null = _run_all(X, y, shuffles, folds, kind, run_cfg, n_classes,
                                           groups, names, n_jobs)
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
