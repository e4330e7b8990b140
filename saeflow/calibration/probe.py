"""Null data for the probe stage's p-values: the cross-validated probe's permutation baseline
(:func:`saeflow.probe.fit.fit_probe`) and the effect sizes' permutation p-values with
Benjamini-Hochberg (:func:`saeflow.probe.effects.compute_effects`).

Cheap fits for the baseline: one regularisation strength (no inner CV), 2 outer folds, 19
permutations (the fewest that let p reach 0.05), normalise none, solver tolerance 1e-2, three
columns; the procedure is the pipeline's, only its grids are small.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import scipy.sparse as sp

from saeflow.calibration.check import FPR, Check
from saeflow.probe.dataset import ProbeDataset

ALPHA = 0.05


def cheap_config():
    """``probe.cv`` at the schema's defaults with the small grids above."""
    from saeflow.core.config import schema_defaults
    from saeflow.probe.crossval import ProbeConfig

    return ProbeConfig.from_dict({**schema_defaults("probe.cv"), "n_folds": 2, "Cs": [0.01],
                                  "alphas": [1.0], "n_permutations": 19, "normalise": "none",
                                  "tol": 0.01, "seed": 0})


def null_dataset(seed: int, kind: str, sparse: bool) -> ProbeDataset:
    """Targets independent of the inputs. Labels: 60 prompts, 2 balanced classes, 3 columns;
    continuous: 30 prompts x 2 positions (rows), 3 columns. CSR: sparse non-negative codes."""
    rng = np.random.default_rng(seed)
    if kind == "label":
        n, idx, pos = 60, np.arange(60), np.full(60, -1)
        y = rng.permutation(np.arange(n) % 2)
    else:
        n, idx, pos = 60, np.repeat(np.arange(30), 2), np.tile(np.arange(2), 30)
        y = rng.normal(size=n)
    X = rng.normal(size=(n, 3))
    if sparse:
        X = sp.csr_matrix(np.maximum(X - 0.3, 0.0))
    meta = {"target_kind": kind, "positions": ["a", "b"], "layers": [0], "strategy": "test",
            "input_kind": "sae" if sparse else "hidden",
            "class_names": ["0", "1"] if kind == "label" else []}
    cols = {key: np.zeros(3, np.int32) for key in ("hook", "layer", "position")}
    cols["unit"] = np.arange(3, dtype=np.int32)
    return ProbeDataset(f"null{seed}", X, y, idx, pos.astype(np.int32), cols, meta)


def baseline_p(ds: ProbeDataset, grouped: bool = False) -> tuple[float, float]:
    """The baseline p and null mean of the primary metric, as ``fit_probe`` reports them;
    ``grouped``: folds by 12 groups of 5 prompts (labels independent of the groups)."""
    from saeflow.probe.fit import Grouping, fit_probe

    grouping = Grouping(np.repeat(np.arange(12), 5), "template", "null") if grouped else None
    res = fit_probe(ds, cheap_config(), grouping=grouping)
    base = res.baseline[res.primary_metric]
    return base["p_value"], base["mean"]


def _baseline(kind: str, sparse: bool, grouped: bool, reps: int, seed: int) -> tuple[int, int]:
    ps = [baseline_p(null_dataset(seed * 100_003 + i, kind, sparse), grouped)[0]
          for i in range(reps)]
    return int(np.sum(np.asarray(ps) <= ALPHA)), reps


def null_columns(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns ``[n, 200]`` of the shapes that matter for the effect sizes' p-values (rare,
    sparse, dense, skewed), and which of them fire rarely."""
    rare_binary = np.zeros((n, 50))
    rare_valued = np.zeros((n, 50))
    for j in range(50):
        rare_binary[rng.choice(n, rng.integers(4, 9), replace=False), j] = 1.0
        rows = rng.choice(n, rng.integers(4, 9), replace=False)
        rare_valued[rows, j] = rng.exponential(size=rows.size)
    sparse = np.where(rng.random((n, 40)) < 0.03, rng.exponential(size=(n, 40)), 0.0)
    dense = np.concatenate([rng.normal(size=(n, 40)), rng.lognormal(size=(n, 20))], axis=1)
    rare = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    return np.concatenate([rare_binary, rare_valued, sparse, dense], axis=1), rare


def effect_dataset(X: np.ndarray, y: np.ndarray) -> ProbeDataset:
    """A label dataset of one row per prompt over columns ``X``."""
    n, d = X.shape
    meta = {"target_kind": "label", "positions": ["final"], "layers": [0], "strategy": "test",
            "input_kind": "sae", "class_names": ["0", "1"]}
    cols = {key: np.zeros(d, np.int32) for key in ("hook", "layer", "position")}
    cols["unit"] = np.arange(d, dtype=np.int32)
    return ProbeDataset("null", X, y, np.arange(n), np.full(n, -1, np.int32), cols, meta)


def null_effects(seed: int, n: int = 1000, n1: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Per-column permutation p and BH q of :func:`compute_effects` on one null dataset
    (labels shuffled against 200 columns of every shape)."""
    from saeflow.probe.effects import compute_effects

    rng = np.random.default_rng(seed)
    X, _ = null_columns(rng, n)
    y = np.zeros(n, int)
    y[rng.choice(n, n1, replace=False)] = 1
    res = compute_effects(effect_dataset(X, y), n_permutations=2000, seed=seed, alpha=ALPHA)
    return res.p, res.q


def _effects_p(reps: int, seed: int) -> tuple[int, int]:
    """Reps null datasets, pooling every column's p (columns are drawn independently)."""
    p = np.concatenate([null_effects(seed * 1000 + i)[0] for i in range(max(1, reps // 200))])
    p = p[np.isfinite(p)]
    return int(np.sum(p <= ALPHA)), int(p.size)


def _effects_bh(reps: int, seed: int) -> tuple[int, int]:
    """Under the complete null every BH rejection is false: the share of datasets with any."""
    hits = sum(bool(np.any(null_effects(seed * 1000 + 500 + i)[1] <= ALPHA)) for i in range(reps))
    return hits, reps


def checks() -> list[Check]:
    base = "probe baseline p (probe/fit/*.json, baseline.<metric>.p_value)"
    design = ("{what}, targets independent of 3 input columns; nested CV with 2 folds and "
              "19 label permutations")
    out = []
    for kind, sparse, what in (("label", False, "60 prompts, 2 classes, dense"),
                               ("label", True, "60 prompts, 2 classes, CSR"),
                               ("continuous", False, "30 prompts x 2 positions, dense"),
                               ("continuous", True, "30 prompts x 2 positions, CSR")):
        out.append(Check(f"{base}: {kind}, {'CSR' if sparse else 'dense'}", FPR, ALPHA,
                         design.format(what=what), 200,
                         partial(_baseline, kind, sparse, False)))
    out.append(Check(f"{base}: folds grouped (probe.cv.group_by)", FPR, ALPHA,
                     design.format(what="60 prompts in 12 groups, 2 classes, dense"), 100,
                     partial(_baseline, "label", False, True)))
    out.append(Check("effect size permutation p (probe/effects/*.json, p)", FPR, ALPHA,
                     "1,000 prompts, 300 positive, labels independent of 200 columns (rare "
                     "binary, rare valued, sparse, dense, skewed); 2,000 permutations; p "
                     "pooled over columns", 4000, _effects_p))
    out.append(Check("effect size BH q <= 0.05 anywhere (probe/effects/*.json, q)", FPR, ALPHA,
                     "as above, one dataset per replicate: any rejection is false (BH's FDR "
                     "is its family-wise rate under the complete null)", 40, _effects_bh))
    return out
