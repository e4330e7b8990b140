"""Permutation p-values: exact paths against full enumeration, sequential Monte Carlo, BH's
smallest rejection, and calibration under null labels."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
from scipy import stats

from saeflow.calibration.probe import null_columns
from saeflow.probe.effects import compute_effects
from saeflow.probe.permutation import (P_KINDS, TIE, bh_adjust, bh_min_rejections, cohens_d,
                                       permutation_test)
from test_probing import _dataset


def _brute_force_p(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-sided permutation p over every labelling with ``y.sum()`` positives."""
    n, n1 = y.size, int(y.sum())
    threshold = np.abs(cohens_d(X, y)) - TIE
    hits, total = np.zeros(X.shape[1]), 0
    for chosen in itertools.combinations(range(n), n1):
        yy = np.zeros(n, bool)
        yy[list(chosen)] = True
        # both classes constant: infinitely extreme (perfect separation)
        hits += np.nan_to_num(np.abs(cohens_d(X, yy)), nan=np.inf) >= threshold
        total += 1
    return hits / total


def test_exact_p_equals_the_full_permutation_distribution():
    rng = np.random.default_rng(0)
    n, n1 = 12, 5
    y = np.arange(n) < n1
    X = np.zeros((n, 5))
    X[[1, 3, 7, 9], 0] = rng.exponential(size=4)  # 4 entries off the mode: enumeration
    X[[0, 2, 8], 1] = 2.0  # two values: hypergeometric
    X[:, 2] = rng.normal(size=n)  # dense: Monte Carlo
    X[:5, 3] = 1.0  # two values, perfectly separating the classes
    X[[0, 5, 6], 4] = [1.0, 2.0, 3.0]
    X[:, 4] += 7.0  # the mode need not be 0
    res = permutation_test(X, y, 20000, seed=0)
    kinds = [P_KINDS[k] for k in res.kind]
    assert kinds == ["enumeration", "hypergeometric", "monte_carlo", "hypergeometric",
                     "enumeration"]
    brute = _brute_force_p(X, y)
    exact = res.kind != P_KINDS.index("monte_carlo")
    np.testing.assert_allclose(res.p[exact], brute[exact], rtol=1e-9)
    assert res.p[3] == pytest.approx(1 / 792)  # only the observed split is as extreme
    # Monte Carlo stops at 20 hits: p = 20 / L is within a few relative SEs (1/sqrt(20))
    assert abs(res.p[2] / brute[2] - 1) < 3 / np.sqrt(20)


def test_a_rarely_firing_feature_gets_its_exact_p_where_the_normal_is_far_too_small():
    # fires in 5 of 1,000 prompts, 300 positive (issue 14's example): column x holds x of the
    # 5 firing prompts in the positive class, so the columns span the whole null distribution
    n, n1, K = 1000, 300, 5
    y = np.arange(n) < n1
    X = np.zeros((n, K + 1))
    for x in range(K + 1):
        X[n1 - x:n1 - x + K, x] = 1.0
    X_valued = X * np.linspace(0.5, 3.0, n)[:, None]  # same pattern, distinct values
    pmf = stats.hypergeom.pmf(np.arange(K + 1), n, K, n1)
    res = permutation_test(np.hstack([X, X_valued]), y, 2000, seed=0)
    assert [P_KINDS[k] for k in res.kind] == ["hypergeometric"] * 6 + ["enumeration"] * 6
    assert res.p[5] == pytest.approx(pmf[5], rel=1e-9)  # x = 0 is less extreme than x = 5
    normal = permutation_test(X, y, 5000, 0, stop_after=None, exact_max_k=0).p_normal()
    assert normal[5] < res.p[5] / 3  # what p_method: normal reported

    def size(p: np.ndarray, t: float) -> float:  # exact P(p <= t) under the null
        return float(pmf @ (p <= t))

    for t in np.unique(np.r_[res.p, normal]):
        assert size(res.p[:6], t) <= t * (1 + 1e-9)
    assert size(normal, normal[5]) > 3 * normal[5]  # the normal p is 3-5x too small


def test_sequential_monte_carlo_stops_null_columns_and_is_batch_invariant():
    rng = np.random.default_rng(1)
    y = np.arange(60) % 2 == 0
    X = rng.normal(size=(60, 40))
    X[:, 0] += 3.0 * y
    res = permutation_test(X, y, 5000, seed=5, batch_size=64)
    again = permutation_test(X, y, 5000, seed=5, batch_size=700)
    np.testing.assert_array_equal(res.p, again.p)
    np.testing.assert_array_equal(res.n_draws, again.n_draws)
    assert res.p[0] == pytest.approx(1 / 5001) and res.n_draws[0] == 5000
    # null columns stop at their 20th hit: p = 20 / L, after far fewer draws than N
    assert np.median(res.n_draws[1:]) < 200
    np.testing.assert_allclose(res.p[1:], 20 / res.n_draws[1:])
    t_p = stats.ttest_ind(X[y, 1:], X[~y, 1:]).pvalue
    assert np.median(np.abs(np.log(res.p[1:] / t_p))) < 0.3


def test_bh_rejects_k_columns_at_the_floor_once_k_reaches_the_minimum(caplog):
    # m = 100, N = 99, alpha = 0.05: k columns at p = 1/(N+1) = 0.01 pass when k >= 20
    assert bh_min_rejections(0.01, 100, 0.05) == 20
    assert bh_min_rejections(1 / 1001, 10, 0.05) == 1
    assert bh_min_rejections(0.1, 100, 0.05) is None  # the floor is above alpha itself
    p = np.full(100, 0.5)
    p[:25] = 0.01
    assert np.all(bh_adjust(p)[:25] <= 0.05)
    p[19:25] = 0.5  # 19 at the floor: 0.01 > 19 * 0.05 / 100, none passes
    assert not np.any(bh_adjust(p) <= 0.05)
    rng = np.random.default_rng(0)
    y = np.arange(200) % 2
    X = rng.normal(size=(200, 100))
    X[:, :25] += 4.0 * y[:, None]
    with caplog.at_level(logging.WARNING):
        res = compute_effects(_dataset(X, y), n_permutations=99, exact_max_k=0, top_k=25)
    assert res.settings["bh_min_rejections"] == 20 and "bh_can_reject" not in res.settings
    assert np.all(res.p[:25] == pytest.approx(0.01)) and np.all(res.q[:25] <= 0.05)
    assert all(t["significant"] for t in res.top)
    assert "at least 20 columns" in caplog.text


def test_p_values_are_calibrated_under_null_labels():
    """Shuffled labels, 20 seeds x 200 columns: BH rejects something (every rejection is
    false) in at most alpha of the seeds, and P(p <= t) <= t, each up to a 3-SE Monte Carlo
    margin ``3 sqrt(t (1 - t) / M)`` over M independent trials (seeds, or p-values: the
    columns are drawn independently)."""
    n, n1, alpha, seeds = 1000, 300, 0.05, 20
    p_all, any_rejection = [], []
    for seed in range(seeds):
        rng = np.random.default_rng(100 + seed)
        X, _ = null_columns(rng, n)
        y = np.zeros(n, bool)
        y[rng.choice(n, n1, replace=False)] = True
        res = compute_effects(_dataset(X, y.astype(int)), n_permutations=2000, seed=seed,
                              alpha=alpha)
        p_all.append(res.p[np.isfinite(res.p)])
        any_rejection.append(bool(np.any(res.q <= alpha)))
    assert np.mean(any_rejection) <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / seeds)
    p = np.concatenate(p_all)
    for t in (0.001, 0.01, 0.05, 0.2, 0.5):
        assert np.mean(p <= t) <= t + 3 * np.sqrt(t * (1 - t) / p.size), t
