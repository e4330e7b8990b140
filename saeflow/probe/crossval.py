"""Cross-validation settings (:class:`ProbeConfig`, ``probe.cv``), folds from prompt ids or
from a metadata column's groups, t-intervals of per-fold scores, and prompt-level permutations
of a target.

Knowing nothing of models: :mod:`saeflow.probe.fit` deals its outer folds with
:func:`make_folds` (checked by :func:`check_groups` when they group by a column), summarises
the folds' metrics with :func:`t_interval` and shuffles the baseline's targets with
:func:`permute_prompts`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from saeflow.core.errors import InputError

NORMALISERS = ("standardize", "minmax", "none")


@dataclass(frozen=True)
class ProbeConfig:
    """CV settings (``probe.cv``), validated; their defaults and meaning are the schema's
    (workflow/schemas/config.schema.yaml), filled in by :meth:`from_dict`. ``Cs``: logistic
    inverse strengths; ``alphas``: ridge strengths; ``tol``: the logistic solver's stopping
    tolerance (1e-3 halves the time of wide SAE probes at equal test accuracy on the toy);
    ``baseline_alpha``: the baseline p is reported only if ``1/(n_permutations+1)`` reaches it;
    ``group_by``: a prompt-file column (``meta/<column>`` of the activation file) whose groups
    never straddle folds, or None (folds by prompt)."""

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
    group_by: str | None

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
        if cfg.group_by is not None and not str(cfg.group_by).strip():
            raise InputError(source, "probe.cv.group_by", "empty: a prompt-file column, or null")
        return cfg


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A fixed integer hash ``[n] uint64 -> [n] uint64`` (wrapping arithmetic is intended)."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def make_folds(sample_index: np.ndarray, y: np.ndarray | None, n_folds: int, seed: int,
               groups: np.ndarray | None = None) -> np.ndarray:
    """Fold id per row ``[n]`` from prompt indices ``[n]`` and a seed, stratified by ``y``.

    Each prompt gets a pseudo-random key ``hash(prompt ^ hash(seed))``; within each class the
    prompts are ranked by key and dealt round-robin, continuing where the previous class
    stopped so folds stay balanced. Rows of one prompt share its fold. ``y=None`` (continuous
    targets) deals all prompts in one round: plain k-fold. Nothing depends on X or row order.
    ``groups`` ``[n]`` (a group id per row, one per prompt): whole groups are dealt instead
    (:func:`group_folds`).

    The folds depend on ``y``, so a permutation baseline must build each shuffled target's
    folds with this same call: reusing the observed folds leaves a permuted target's classes
    unbalanced across them (a training fold rich in a class its test fold lacks), which biases
    the null's accuracy below chance and its p-value low (tests/probe/test_calibration.py).
    """
    if groups is not None:
        return group_folds(groups, y, n_folds, seed)
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


def group_folds(groups: np.ndarray, y: np.ndarray | None, n_folds: int, seed: int
                ) -> np.ndarray:
    """Fold id per row ``[n]``, whole groups ``[n]`` to a fold: sklearn's
    ``StratifiedGroupKFold`` for labels ``y`` (each group goes where it evens out the classes'
    shares across folds, so a class of several groups lands in several folds), its
    ``GroupKFold`` for continuous targets (``y`` None), both shuffled by ``seed``.

    Deterministic given the (group, y) pairs and the seed, whatever the row order. With at
    least ``n_folds`` groups no fold is empty: a group's class counts add the least spread to
    an empty fold, which the splitter then prefers (ties go to the smallest fold).
    """
    codes = np.unique(groups, return_inverse=True)[1].ravel()
    splitter = GroupKFold(n_folds, shuffle=True, random_state=seed) if y is None else \
        StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
    folds = np.full(codes.size, -1, np.int64)
    with warnings.catch_warnings():
        # "the least populated class has fewer members than n_splits": check_groups says it
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, test) in enumerate(splitter.split(codes, y, codes)):
            folds[test] = k
    return folds


def check_groups(groups: np.ndarray, y: np.ndarray | None, n_folds: int, where: tuple[str, str],
                 class_names: list[str] | None = None) -> None:
    """Raise ``InputError(file, "probe.cv.group_by", ...)`` where grouped folds cannot work:
    fewer groups than ``n_folds``, or (labels ``y``) a class living in a single group, which
    is then missing from every training fold whenever it is tested, so no probe can predict
    it there. ``groups`` ``[n]``; ``where``: (the file the groups come from, the dataset)."""
    source, dataset = where
    present = np.unique(groups)
    if present.size < n_folds:
        raise InputError(source, "probe.cv.group_by", f"dataset {dataset!r}: {present.size} "
                         f"group(s) {_shown(present)}, fewer than the {n_folds} folds "
                         "(probe.cv.n_folds); lower n_folds or group by another column")
    if y is None:
        return
    for c in np.unique(y):
        held = np.unique(groups[y == c])
        if held.size < 2:
            name = class_names[int(c)] if class_names else str(c)
            raise InputError(source, "probe.cv.group_by", f"dataset {dataset!r}: class "
                             f"{name!r} lives in one group ({_shown(held)}), so no training "
                             "fold holds it when its group is tested; grouped folds need each "
                             "class in >= 2 groups (leave it out with target.classes)")


def _shown(values: np.ndarray, most: int = 6) -> str:
    items = [str(v) for v in values[:most]]
    return ", ".join(items) + (", ..." if values.size > most else "")


NAIVE_T = "t over folds, folds treated as independent"
CORRECTED_T = ("Nadeau-Bengio corrected resampled t over folds: variance of the fold mean "
               "x (1/k + n_test/n_train) instead of 1/k, as the folds' training sets overlap")


def t_interval(values: np.ndarray, level: float = 0.95,
               bounds: tuple[float, float] = (-np.inf, np.inf),
               test_train_ratio: float | None = None) -> dict[str, Any]:
    """Mean and two-sided t-interval over folds ``[k]`` (NaN folds dropped), clipped to
    ``bounds``, with the method in ``interval_method``.

    ``test_train_ratio`` (``n_test / n_train`` of a fold) gives the Nadeau-Bengio (2003)
    corrected interval: fold scores share most of their training rows, so they are
    positively correlated and ``s^2 / k`` understates the variance of their mean; the
    correction uses ``s^2 (1/k + n_test/n_train)``. None: the naive interval.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    method = NAIVE_T if test_train_ratio is None else CORRECTED_T
    out: dict[str, Any] = {"mean": float("nan"), "ci_low": float("nan"),
                           "ci_high": float("nan"), "n": int(v.size), "interval_method": method}
    if v.size == 0:
        return out
    out["mean"] = mean = float(v.mean())
    if v.size < 2:
        return out
    factor = 1.0 / v.size + (test_train_ratio or 0.0)
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) * np.sqrt(factor))
    out.update(ci_low=max(mean - half, bounds[0]), ci_high=min(mean + half, bounds[1]))
    return out


def permute_prompts(y: np.ndarray, sample_index: np.ndarray, row_position: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """``y`` ``[n]`` with whole prompts' targets shuffled among prompts.

    Rows are (prompt ``sample_index``, position ``row_position``); folds keep a prompt's rows
    together, so the null must too: prompt ``i`` takes over prompt ``pi(i)``'s target at each
    of its positions, keeping the within-prompt structure a row shuffle would destroy.
    Prompts swap only with prompts holding the same positions (a prompt missing a position
    has no target there to give). One row per prompt: a plain permutation of ``y``.
    """
    order = np.lexsort((row_position, sample_index))  # rows grouped by prompt, by position
    _, start, count = np.unique(sample_index[order], return_index=True, return_counts=True)
    groups: dict[bytes, list[int]] = {}  # a prompt layout (the positions it holds) -> prompts
    for i, (a, c) in enumerate(zip(start, count, strict=True)):
        groups.setdefault(row_position[order[a:a + c]].tobytes(), []).append(i)
    out = np.empty_like(y)
    for members in map(np.asarray, groups.values()):
        donors = rng.permutation(members)
        offsets = np.arange(int(count[members[0]]))
        out[order[start[members][:, None] + offsets]] = y[order[start[donors][:, None] + offsets]]
    return out
