"""Cohen's d per column and two-sided permutation p-values that stay valid at any sparsity.

A normal fitted to each column's permutation null (:meth:`PermutationTest.p_normal`) is
3-5x too small for features that fire in a handful of prompts (their null is a few discrete,
skewed values), and a plain Monte Carlo p cannot go below ``1/(N+1)``. So each column gets
the cheapest valid p its values allow:

- ``hypergeometric`` (exact): two distinct values. d is monotone in the number ``x`` of
  minority entries in the positive class, ``x ~ Hypergeom(n, K, n1)`` under permutation, so
  the p sums the pmf over the outcomes at least as extreme.
- ``enumeration`` (exact): at most ``exact_max_k`` entries off the column's most common value
  (a feature firing in at most that many prompts). d depends only on which of those ``K``
  entries land in the positive class; the ``2^K`` subsets are enumerated, a subset of size
  ``s`` having probability ``C(n-K, n1-s) / C(n, n1)``.
- ``monte_carlo``: the rest, by sequential Monte Carlo (Besag & Clifford 1991): one seeded
  stream of permutations; a column stops at the ``stop_after``-th permuted ``|d|`` reaching
  its observed one, with ``p = stop_after / L`` (``L`` draws so far), else after
  ``n_permutations`` draws with ``p = (1 + G) / (1 + N)``. Both are valid p-values; stopping
  the null columns early is what lets ``N`` be large: only small-p columns use every draw.

A permutation under which both classes are constant has an infinite |d| (perfect
separation) and counts as at least as extreme as the observed one.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Any

import numpy as np
from scipy import special, stats

# |d_perm| >= |d_obs| - TIE counts a tie as "as extreme", keeping p conservative under
# floating-point noise between algebraically equal statistics
TIE = 1e-9
MAX_BATCH_CELLS = 2 ** 24  # permutations x columns per batch (~130 MB of float64 per array)
MAX_SUBSET_CELLS = 2 ** 22  # columns x subsets per enumeration chunk
P_KINDS = ("untested", "hypergeometric", "enumeration", "monte_carlo")


def _d_from_sums(S1: np.ndarray, Q1: np.ndarray, S: np.ndarray, Q: np.ndarray,
                 n1: int, n: int) -> np.ndarray:
    """Cohen's d ``[B, d]`` from class-1 sums ``S1``/``Q1`` ``[B, d]`` of centred X and X²
    and the totals ``S``/``Q`` ``[d]``; pooled SD with ``n - 2`` degrees of freedom."""
    n0 = n - n1
    m1, m0 = S1 / n1, (S - S1) / n0
    ss = (Q1 - n1 * m1 ** 2) + ((Q - Q1) - n0 * m0 ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = np.sqrt(np.clip(ss, 0.0, None) / (n - 2))
        d = (m1 - m0) / pooled
    d[~(pooled > 1e-12 * (1.0 + np.abs(m1) + np.abs(m0)))] = np.nan
    return d


def cohens_d(X: Any, y: np.ndarray) -> np.ndarray:
    """Cohen's d per column ``[d]`` of ``X`` ``[n, d]`` (dense or CSR) between ``y`` ``[n]``
    true and false; NaN where the column is constant."""
    import scipy.sparse as sp

    from saeflow.probe.dataset import constant_columns

    L = y.astype(np.float64)[None, :]
    if sp.issparse(X):
        # Centring would make the codes dense. d is shift-invariant and codes are O(1) values,
        # mostly 0, so uncentred float64 sums lose ~1e-16 x (mean / SD)^2 of d: nothing.
        Xf = sp.csr_matrix(X, dtype=np.float64)
        X2 = Xf.multiply(Xf).tocsr()
        d = _d_from_sums(np.asarray((Xf.T @ L.T).T), np.asarray((X2.T @ L.T).T),
                         np.asarray(Xf.sum(0)).ravel(), np.asarray(X2.sum(0)).ravel(),
                         int(y.sum()), y.size)[0]
    else:
        Xc = X.astype(np.float64) - X.mean(axis=0, dtype=np.float64)  # limits cancellation
        d = _d_from_sums(L @ Xc, L @ Xc ** 2, Xc.sum(0), (Xc ** 2).sum(0), int(y.sum()),
                         y.size)[0]
    d[constant_columns(X)] = np.nan  # a stored constant's rounding must not give it a d
    return d


def _as_extreme(d: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """``|d| >= threshold``, with an undefined d (both classes constant) as infinitely far,
    in the permutation and in the observed statistic behind ``threshold``."""
    return np.nan_to_num(np.abs(d), nan=np.inf) >= np.nan_to_num(threshold, nan=np.inf)


@dataclass
class PermutationTest:
    """Per column ``[d]``: observed d, p, how it was found (``kind``: index into
    :data:`P_KINDS`), Monte Carlo draws used (0 for exact columns), and, for Monte Carlo
    columns run without stopping, the permutation null's mean/SD (NaN otherwise)."""

    d: np.ndarray
    p: np.ndarray
    kind: np.ndarray
    n_draws: np.ndarray
    null_mean: np.ndarray
    null_sd: np.ndarray

    def p_normal(self) -> np.ndarray:
        """Two-sided p from a normal fitted to each column's permutation null. Approximate:
        anti-conservative for rarely-firing features, whose null is skewed and discrete (one
        firing in 5 of 1,000 prompts, 300 positive: exact p 0.0022, normal 0.00063)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.abs(self.d - self.null_mean) / self.null_sd
        return np.where(np.isfinite(z), 2 * stats.norm.sf(z), np.nan)

    def counts(self) -> dict[str, int]:
        """Columns per kind of p (``untested``: no defined d)."""
        return {name: int(np.sum(self.kind == i)) for i, name in enumerate(P_KINDS)}


def column_shapes(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column ``[d]``: its median value (the mode wherever fewer than half the entries
    differ from it), the count ``K`` of entries off that value, and whether it holds exactly
    two distinct values."""
    srt = np.sort(X, axis=0)
    base = srt[X.shape[0] // 2]
    off = np.sum(X != base, axis=0)
    two = np.sum(srt[1:] != srt[:-1], axis=0) == 1
    return base, off, two


def hypergeometric_p(X: np.ndarray, y: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Exact permutation p ``[c]`` of two-valued columns ``X [n, c]``; ``base [c]`` is one of
    the two values, the other counted in ``x``."""
    n, n1 = y.size, int(y.sum())
    off = X != base
    K = off.sum(0)
    v = (X - base).max(0) + (X - base).min(0)  # the other value minus base (one term is 0)
    x_obs = (off & y[:, None]).sum(0)
    x = np.arange(int(K.max()) + 1)[None, :]  # [1, K_max + 1] outcomes
    Kc, vc = K[:, None], v[:, None].astype(np.float64)
    d_all = _d_from_sums(x * vc, x * vc ** 2, Kc * vc, Kc * vc ** 2, n1, n)
    d_obs = _d_from_sums(x_obs[:, None] * vc, x_obs[:, None] * vc ** 2, Kc * vc,
                         Kc * vc ** 2, n1, n)
    pmf = stats.hypergeom.pmf(x, n, Kc, n1)  # 0 outside each column's support
    extreme = _as_extreme(d_all, np.abs(d_obs) - TIE)
    return np.minimum(1.0, np.sum(np.where(extreme, pmf, 0.0), axis=1))


def enumeration_p(X: np.ndarray, y: np.ndarray, base: np.ndarray, k: int) -> np.ndarray:
    """Exact permutation p ``[c]`` of columns ``X [n, c]`` with exactly ``k`` entries off
    ``base [c]``, by enumerating the ``2^k`` subsets of them that the positive class holds."""
    n, n1 = y.size, int(y.sum())
    off = X != base
    # per column, its k off-base rows in row order: values (shifted by base) and labels
    order = np.argsort(~off, axis=0, kind="stable")[:k]  # [k, c]
    V = (np.take_along_axis(X, order, 0) - base).T.astype(np.float64)  # [c, k]
    Yk = y[order].T.astype(np.float64)  # [c, k]
    bits = ((np.arange(2 ** k)[:, None] >> np.arange(k)) & 1).astype(np.float64)  # [2^k, k]
    size = bits.sum(1).astype(np.int64)
    # probability of the positive class holding exactly this subset of the k entries
    possible = (size <= n1) & (k - size <= n - n1)
    s = np.where(possible, size, 0)
    weight = np.where(possible, np.exp(
        special.gammaln(n - k + 1) - special.gammaln(n1 - s + 1)
        - special.gammaln(n - k - n1 + s + 1) - special.gammaln(n + 1)
        + special.gammaln(n1 + 1) + special.gammaln(n - n1 + 1)), 0.0)
    S, Q = V.sum(1, keepdims=True), (V ** 2).sum(1, keepdims=True)
    d_obs = _d_from_sums((V * Yk).sum(1, keepdims=True), (V ** 2 * Yk).sum(1, keepdims=True),
                         S, Q, n1, n)
    d_all = _d_from_sums(V @ bits.T, V ** 2 @ bits.T, S, Q, n1, n)  # [c, 2^k]
    extreme = _as_extreme(d_all, np.abs(d_obs) - TIE)
    return np.minimum(1.0, extreme @ weight)


def monte_carlo_p(X: np.ndarray, y: np.ndarray, n_permutations: int, seed: int,
                  batch_size: int = 256, stop_after: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sequential Monte Carlo p ``[c]`` of every column of ``X [n, c]`` (see the module doc),
    draws used ``[c]``, and the null's mean and SD ``[c]`` (NaN unless ``stop_after`` is None,
    which runs every column for all ``n_permutations``).

    Each batch of permutations is a 0/1 matrix ``L`` ``[B, n]``; ``L @ Xc`` and ``L @ Xc²``
    give every permuted class mean and variance at once. The draws are one seeded stream, so
    neither the batch size nor which columns are still running changes a column's result.
    """
    Xc = X.astype(np.float64) - X.mean(axis=0, dtype=np.float64)
    X2 = Xc ** 2
    S, Q, n1, n = Xc.sum(0), X2.sum(0), int(y.sum()), y.size
    yf = y.astype(np.float64)
    c = X.shape[1]
    threshold = np.abs(_d_from_sums(yf[None] @ Xc, yf[None] @ X2, S, Q, n1, n)[0]) - TIE
    exceed = np.zeros(c, np.int64)
    p = np.full(c, np.nan)
    used = np.zeros(c, np.int64)
    null_n, null_s, null_s2 = (np.zeros(c) for _ in range(3))
    active = np.arange(c)
    rng = np.random.default_rng(seed)
    batch = max(1, min(batch_size, MAX_BATCH_CELLS // max(1, c)))
    done = 0
    while done < n_permutations and active.size:
        b = min(batch, n_permutations - done)
        L = rng.permuted(np.broadcast_to(yf, (b, n)), axis=1)  # [b, n] shuffled labels
        Xa, X2a = Xc[:, active], X2[:, active]
        d_perm = _d_from_sums(L @ Xa, L @ X2a, S[active], Q[active], n1, n)
        hits = _as_extreme(d_perm, threshold[active])
        if stop_after is None:
            ok = np.isfinite(d_perm)
            null_n[active] += ok.sum(0)
            null_s[active] += np.where(ok, d_perm, 0.0).sum(0)
            null_s2[active] += np.where(ok, d_perm ** 2, 0.0).sum(0)
            exceed[active] += hits.sum(0)
        else:
            running = exceed[active][None, :] + np.cumsum(hits, axis=0)  # [b, |active|]
            stopped = running[-1] >= stop_after
            at = np.argmax(running >= stop_after, axis=0)  # draw of the stop_after-th hit
            cols = active[stopped]
            p[cols] = stop_after / (done + at[stopped] + 1.0)
            used[cols] = done + at[stopped] + 1
            exceed[active] = running[-1]
            active = active[~stopped]
        done += b
    used[active] = done
    p[active] = (1.0 + exceed[active]) / (1.0 + n_permutations)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(null_n > 0, null_s / null_n, np.nan)
        sd = np.sqrt(np.clip(null_s2 / null_n - mean ** 2, 0.0, None) * null_n / (null_n - 1))
    return p, used, mean, sd


def permutation_test(X: np.ndarray, y: np.ndarray, n_permutations: int, seed: int,
                     batch_size: int = 256, stop_after: int | None = 20,
                     exact_max_k: int = 10) -> PermutationTest:
    """Cohen's d ``[d]`` and two-sided permutation p ``[d]`` of ``X [n, d]`` against ``y
    [n]`` (NaN where d is NaN): exact for two-valued columns and for those with at most
    ``exact_max_k`` entries off their mode, sequential Monte Carlo for the rest.
    ``exact_max_k=0`` and ``stop_after=None``: plain Monte Carlo of every column with all
    ``n_permutations`` draws (what :meth:`PermutationTest.p_normal` needs)."""
    d = cohens_d(X, y)
    c = X.shape[1]
    tested = np.isfinite(d)
    kind = np.zeros(c, np.int8)
    p, used = np.full(c, np.nan), np.zeros(c, np.int64)
    mean, sd = np.full(c, np.nan), np.full(c, np.nan)
    base, off, two = column_shapes(X)
    if exact_max_k > 0:
        hyper = tested & two
        kind[hyper] = 1
        enum = tested & ~two & (off <= exact_max_k)
        kind[enum] = 2
    mc = tested & (kind == 0)
    kind[mc] = 3
    y = np.asarray(y, dtype=bool)
    for chunk in _chunks(np.flatnonzero(kind == 1), X.shape[0]):
        p[chunk] = hypergeometric_p(X[:, chunk], y, base[chunk])
    for k in np.unique(off[kind == 2]):
        for chunk in _chunks(np.flatnonzero((kind == 2) & (off == k)), 2 ** int(k)):
            p[chunk] = enumeration_p(X[:, chunk], y, base[chunk], int(k))
    if mc.any():
        cols = np.flatnonzero(mc)
        p[cols], used[cols], mean[cols], sd[cols] = monte_carlo_p(
            X[:, cols], y, n_permutations, seed, batch_size, stop_after)
    return PermutationTest(d, p, kind, used, mean, sd)


def permutation_test_columns(X: Any, y: np.ndarray, n_permutations: int, seed: int,
                             batch_size: int = 256, stop_after: int | None = 20,
                             exact_max_k: int = 10, max_cells: int = 1 << 25) -> PermutationTest:
    """:func:`permutation_test` of a dense or CSR ``X``: a CSR matrix (SAE codes, mostly
    columns that never fire) is tested a block of its non-constant columns at a time, each
    block made dense (at most ``max_cells`` values), so memory stays bounded. Every block
    sees the same seeded permutation stream, so the result equals one dense call's."""
    import scipy.sparse as sp

    if not sp.issparse(X):
        return permutation_test(X, y, n_permutations, seed, batch_size, stop_after, exact_max_k)
    X = sp.csc_matrix(X)
    n, c = X.shape
    nnz = np.diff(X.indptr)
    # a column is constant when it never fires or fires (one value) on every row
    live = np.flatnonzero((nnz > 0) & ~((nnz == n) & (X.max(0).toarray().ravel() ==
                                                      X.min(0).toarray().ravel())))
    out = PermutationTest(np.full(c, np.nan), np.full(c, np.nan), np.zeros(c, np.int8),
                          np.zeros(c, np.int64), np.full(c, np.nan), np.full(c, np.nan))
    step = max(1, max_cells // max(n, 1))
    for start in range(0, live.size, step):
        cols = live[start:start + step]
        part = permutation_test(X[:, cols].toarray(), y, n_permutations, seed, batch_size,
                                stop_after, exact_max_k)
        for name in ("d", "p", "kind", "n_draws", "null_mean", "null_sd"):
            getattr(out, name)[cols] = getattr(part, name)
    return out


def _chunks(cols: np.ndarray, cells_per_column: int) -> list[np.ndarray]:
    """``cols`` split so each piece has at most ``MAX_SUBSET_CELLS`` outcome cells."""
    if not cols.size:
        return []
    return np.array_split(cols, -(-cols.size * cells_per_column // MAX_SUBSET_CELLS))


def bh_adjust(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values ``[d]`` over the finite entries of ``p``; NaN stays NaN."""
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(p[ok], method="bh")
    return q


def bh_min_rejections(p_floor: float, m: int, alpha: float) -> int | None:
    """The fewest columns BH at level ``alpha`` over ``m`` tests can reject when no p is
    below ``p_floor``: the smallest ``k`` with ``p_floor <= k * alpha / m`` (k columns at the
    floor are then all rejected, fewer are not); None when not even ``k = m`` suffices."""
    if m < 1 or p_floor <= 0:
        return 1
    k = max(1, int(np.ceil(p_floor * m / alpha)))
    while k > 1 and p_floor * m / (k - 1) <= alpha:  # the same comparison as BH's q <= alpha
        k -= 1
    while k <= m and p_floor * m / k > alpha:
        k += 1
    return k if k <= m else None
