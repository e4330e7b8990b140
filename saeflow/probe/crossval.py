"""Cross-validation folds from prompt ids, and t-intervals of per-fold scores.

Both are pure numpy/scipy and know nothing of models: :mod:`saeflow.probe.fit` deals its outer
folds with :func:`make_folds` and summarises the folds' metrics with :func:`t_interval`.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A fixed integer hash ``[n] uint64 -> [n] uint64`` (wrapping arithmetic is intended)."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def make_folds(sample_index: np.ndarray, y: np.ndarray | None, n_folds: int, seed: int
               ) -> np.ndarray:
    """Fold id per row ``[n]`` from prompt indices ``[n]`` and a seed, stratified by ``y``.

    Each prompt gets a pseudo-random key ``hash(prompt ^ hash(seed))``; within each class the
    prompts are ranked by key and dealt round-robin, continuing where the previous class
    stopped so folds stay balanced. Rows of one prompt share its fold. ``y=None`` (continuous
    targets) deals all prompts in one round: plain k-fold. Nothing depends on X or row order.
    """
    prompts, first = np.unique(sample_index, return_index=True)
    with np.errstate(over="ignore"):
        keys = _splitmix64(prompts.astype(np.uint64) ^ _splitmix64(np.array([seed]))[0])
    groups = [np.arange(prompts.size)] if y is None else \
        [np.flatnonzero(y[first] == c) for c in np.unique(y[first])]
    prompt_fold = np.empty(prompts.size, np.int64)
    offset = 0
    for members in groups:
        ranked = members[np.argsort(keys[members], kind="stable")]
        prompt_fold[ranked] = (offset + np.arange(ranked.size)) % n_folds
        offset = (offset + ranked.size) % n_folds
    return prompt_fold[np.searchsorted(prompts, sample_index)]


def t_interval(values: np.ndarray, level: float = 0.95,
               bounds: tuple[float, float] = (-np.inf, np.inf)) -> dict[str, float]:
    """Mean and two-sided t-interval over folds ``[k]`` (NaN folds dropped), clipped to
    ``bounds``."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    mean = float(v.mean())
    if v.size < 2:
        return {"mean": mean, "ci_low": float("nan"), "ci_high": float("nan"), "n": int(v.size)}
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return {"mean": mean, "ci_low": max(mean - half, bounds[0]),
            "ci_high": min(mean + half, bounds[1]), "n": int(v.size)}
