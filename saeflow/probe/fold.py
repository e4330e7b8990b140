"""One outer fold of a cross-validated probe: the normaliser, the regularisation strength by
inner CV, the fit, and its metrics.

Labels get logistic regression (multinomial for >2 classes), continuous targets ridge. Inside
the outer training fold a grid search over the regularisation strength runs its own CV
(:func:`choose_strength`), and the normaliser (:data:`saeflow.probe.crossval.NORMALISERS`, or the scale-only forms
``scale``/``maxabs`` the fit uses for SAE codes) is part of the fitted pipeline, so its
statistics come from training rows only: of the inner training split during the search, of
the whole outer training fold for the refit (:func:`fit_fold`). :func:`fold_metrics` scores a
fitted pipeline; the outer CV, the permutation baseline and the whole fit are
:mod:`saeflow.probe.fit`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, log_loss,
                             mean_squared_error, precision_score, r2_score, recall_score)
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, MaxAbsScaler, MinMaxScaler, StandardScaler

from saeflow.probe.crossval import ProbeConfig


def make_normaliser(kind: str) -> Any:
    """A fresh sklearn transformer for ``kind`` (a :data:`NORMALISERS` entry, or ``scale`` /
    ``maxabs`` of :data:`saeflow.probe.fit.SCALE_ONLY`, which take CSR input and keep it
    sparse)."""
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

    ``X`` ``[m, d]``, ``y`` ``[m]``, ``groups`` ``[m]``: rows of one group stay in one inner
    fold (continuous targets: prompt ids unless ``probe.cv.group_by`` groups them; labels:
    None, or the ``group_by`` groups, split like the outer folds). The normaliser is refitted
    on each inner training split. Scores: mean log-loss (labels) or R² over inner folds; the
    grid runs from strong to weak regularisation with warm starts, and ties go to the
    stronger. Returns the strength and the number of inner folds; 0 when a class is too rare
    (or the groups too few) to split again, in which case the grid's middle value is used,
    or when the grid holds one value, as there is nothing to choose.
    """
    grid = sorted(cfg.Cs) if kind == "label" else sorted(cfg.alphas, reverse=True)
    if len(grid) == 1:
        return float(grid[0]), 0
    if kind == "label" and groups is not None:
        inner = min(cfg.inner_folds, np.unique(groups).size, int(np.bincount(y).max()))
        splits = StratifiedGroupKFold(max(inner, 2), shuffle=True,
                                      random_state=cfg.seed).split(X, y, groups)
    elif kind == "label":
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
        # grouped inner folds: a class of fewer rows than inner folds is expected there
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        strength, inner = choose_strength(Xt, yt, kind, cfg, n_classes,
                                          None if groups is None else groups[train])
        pipe = Pipeline([("norm", make_normaliser(cfg.normalise)),
                         ("model", _model(kind, cfg, strength))]).fit(Xt, yt)
    est = pipe.named_steps["model"]
    converged = kind != "label" or int(np.max(est.n_iter_)) < cfg.max_iter
    return FoldFit(pipe, strength, inner, normaliser_params(pipe.named_steps["norm"]),
                   np.atleast_2d(est.coef_), np.atleast_1d(est.intercept_), converged)


def fold_metrics(kind: str, y_true: np.ndarray, fitted: Pipeline, X: np.ndarray,
                 n_classes: int, only: tuple[str, ...] | None = None) -> dict[str, float]:
    """Metrics of a fitted pipeline on rows ``X`` ``[m, d]`` with targets ``[m]``.

    Binary: precision/recall of class 1, ROC-AUC from its probability. Multiclass: macro
    averages, ROC-AUC macro one-vs-rest (NaN where a class is missing from ``y_true``).
    ``only``: just these of ``accuracy``, ``roc_auc``, ``r2`` (what a permutation run keeps;
    the rest cost more than its fit).
    """
    if only is not None:
        return _some_metrics(kind, y_true, fitted, X, n_classes, only)
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
    with warnings.catch_warnings():
        # a fold of held-out groups may hold one class, or miss one it predicts: expected
        warnings.simplefilter("ignore", UserWarning)
        out = {"accuracy": float(accuracy_score(y_true, pred)),
               "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
               "precision": float(precision_score(y_true, pred, average=average, labels=labels,
                                                  zero_division=0)),
               "recall": float(recall_score(y_true, pred, average=average, labels=labels,
                                            zero_division=0))}
    out["roc_auc"] = _roc_auc(y_true, proba, n_classes)
    return out


def _roc_auc(y_true: np.ndarray, proba: np.ndarray, n_classes: int) -> float:
    """ROC-AUC of ``proba`` ``[m, n_classes]``: of class 1's probability when binary, else
    the macro one-vs-rest mean over classes (sklearn's ``roc_auc_score`` with
    ``multi_class="ovr"``); NaN where a class is missing from ``y_true``.

    Written as the Mann-Whitney identity, ``(rank sum of the class - n1 (n1 + 1) / 2) /
    (n1 n0)`` with tied scores ranked by their average (what the ROC curve's trapezoids
    give), because ``roc_auc_score``'s input checks cost 20x this sum and it runs for every
    fold of every permutation; it equals ``roc_auc_score`` (tests/probe/test_calibration.py).
    """
    if np.unique(y_true).size < n_classes:
        return float("nan")
    classes = [1] if n_classes == 2 else range(n_classes)
    aucs = []
    for c in classes:
        ranks = rankdata(proba[:, c])
        hit = y_true == c
        n1 = int(hit.sum())
        aucs.append((ranks[hit].sum() - n1 * (n1 + 1) / 2) / (n1 * (y_true.size - n1)))
    return float(np.mean(aucs))


def _some_metrics(kind: str, y_true: np.ndarray, fitted: Pipeline, X: np.ndarray,
                  n_classes: int, names: tuple[str, ...]) -> dict[str, float]:
    """The metrics ``names`` of :func:`fold_metrics`, and no other."""
    if kind != "label":
        return {"r2": float(r2_score(y_true, fitted.predict(X)))} if "r2" in names else {}
    proba = predict_proba(fitted, X, n_classes)
    out = {}
    if "accuracy" in names:  # accuracy_score's input checks cost 10x this mean
        out["accuracy"] = float(np.mean(proba.argmax(axis=1) == y_true))
    if "roc_auc" in names:
        out["roc_auc"] = _roc_auc(y_true, proba, n_classes)
    return out


def predict_proba(fitted: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities ``[m, n_classes]``; a class unseen in training gets 0."""
    proba = np.zeros((X.shape[0], n_classes))
    proba[:, fitted.classes_] = fitted.predict_proba(X)
    # float32 inputs give float32 probabilities whose rows miss 1 by more than sklearn allows
    return proba / proba.sum(axis=1, keepdims=True)
