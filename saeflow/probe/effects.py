"""Effect sizes and localisation: which SAE features (at which layer x position) separate two
classes, how sure we are, and where the strongest ones sit.

Per input column (an SAE feature at a layer and position, or a hidden dimension): Cohen's d
between the positive class and the rest, a two-sided permutation p-value (all permutations
batched through two matrix products), and Benjamini-Hochberg q-values over the tested
columns. Columns constant within both classes (dead features) have no defined d and are left
out of testing. The top-k columns by |d| are then tallied by layer, by position and on the
layer x position grid, each next to the share expected if the k were drawn at random from
the tested columns. :func:`toy_check` asks whether that tally (and a probe's weight) favours
known informative positions; it reports, and nothing is tuned on its answer.

CSR inputs (SAE codes) are never densified: the class sums are sparse products, and only the
``[permutations, d]`` sums are dense, as they are for dense inputs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.sparse as sp
from scipy import stats

from saeflow.core.errors import InputError
from saeflow.formats.descriptions import descriptions_by_hook
from saeflow.core.io import atomic_path, write_json
from saeflow.probe.dataset import (COLUMN_FIELDS, ProbeDataset, check_dataset, constant_columns,
                                   dense_column, read_probe_dataset)
from saeflow.core.provenance import provenance_json

log = logging.getLogger(__name__)

# |d_perm| >= |d_obs| - TIE counts a tie as "as extreme", keeping p conservative under
# floating-point noise between algebraically equal statistics
TIE = 1e-9
MAX_BATCH_CELLS = 2 ** 24  # permutations x columns per batch (~130 MB of float64 per array)


def binary_target(ds: ProbeDataset, positive_class: str | int | None = None
                  ) -> tuple[np.ndarray, str]:
    """One-vs-rest target ``[n]`` bool and the positive class's name.

    Binary labels default to class 1 (``wrong`` for the failure target); a multiclass concept
    needs ``positive_class`` (a class name or original value). Continuous targets, an unknown
    class or an empty side are InputErrors naming the dataset.
    """
    if ds.target_kind != "label":
        raise InputError(ds.name, "target", "effect sizes need a label target, not a "
                         "continuous one")
    names = ds.class_names
    values = [str(v) for v in ds.meta.get("class_values", [])]
    if positive_class is None:
        if len(names) != 2:
            raise InputError(ds.name, "effects.positive_class", f"{len(names)} classes {names}: "
                             "choose the class to contrast one-vs-rest")
        index = 1
    elif str(positive_class) in names:
        index = names.index(str(positive_class))
    elif str(positive_class) in values:
        index = values.index(str(positive_class))
    else:
        raise InputError(ds.name, "effects.positive_class", f"{positive_class!r} is not one of "
                         f"{names}")
    y = ds.y.astype(np.int64) == index
    if y.all() or not y.any():
        side = "rest" if y.all() else names[index]
        raise InputError(ds.name, "y", f"empty class {side!r} in the one-vs-rest contrast")
    if min(y.sum(), (~y).sum()) < 2:
        raise InputError(ds.name, "y", "a class with fewer than 2 samples has no variance")
    return y, names[index]


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


def _moments(X: np.ndarray | sp.spmatrix) -> tuple[Any, Any, np.ndarray, np.ndarray, np.ndarray]:
    """X and X² in float64 (centred when dense, CSR when X is), their column sums ``[d]`` and
    the constant columns ``[d]``: what the d of every class split is computed from."""
    if sp.issparse(X):
        # Centring would make the codes dense. d is shift-invariant and codes are O(1) values,
        # mostly 0, so uncentred float64 sums lose ~1e-16 x (mean / SD)² of d: nothing.
        Xf = sp.csr_matrix(X, dtype=np.float64)
        X2 = Xf.multiply(Xf).tocsr()
    else:
        Xf = X.astype(np.float64) - X.mean(axis=0, dtype=np.float64)  # limits cancellation
        X2 = Xf ** 2
    return Xf, X2, np.asarray(Xf.sum(0)).ravel(), np.asarray(X2.sum(0)).ravel(), \
        constant_columns(X)


def _split_d(moments: tuple[Any, ...], L: np.ndarray, n1: int) -> np.ndarray:
    """Cohen's d ``[B, d]`` of the splits ``L`` ``[B, n]`` (0/1 rows with ``n1`` ones)."""
    Xf, X2, S, Q, constant = moments
    if sp.issparse(Xf):  # (Xᵀ Lᵀ)ᵀ: sparse times dense, a dense [B, d] out
        S1, Q1 = np.asarray((Xf.T @ L.T).T), np.asarray((X2.T @ L.T).T)
    else:
        S1, Q1 = L @ Xf, L @ X2
    d = _d_from_sums(S1, Q1, S, Q, n1, L.shape[1])
    d[:, constant] = np.nan
    return d


def cohens_d(X: np.ndarray | sp.spmatrix, y: np.ndarray) -> np.ndarray:
    """Cohen's d per column ``[d]`` of ``X`` ``[n, d]`` (dense or CSR) between ``y`` ``[n]``
    true and false; NaN where the column is constant within both classes."""
    return _split_d(_moments(X), y.astype(np.float64)[None, :], int(y.sum()))[0]


@dataclass
class PermutationTest:
    """Per column ``[d]``: observed d, Monte Carlo p, and the permutation null's mean/SD."""

    d: np.ndarray
    p: np.ndarray
    null_mean: np.ndarray
    null_sd: np.ndarray

    def p_normal(self) -> np.ndarray:
        """Two-sided p from a normal fitted to each column's permutation null. Resolves
        p < 1/(N+1), which BH over thousands of columns needs, at the price of assuming a
        normal tail (optimistic for rarely-firing features, whose null is skewed)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.abs(self.d - self.null_mean) / self.null_sd
        return np.where(np.isfinite(z), 2 * stats.norm.sf(z), np.nan)


def permutation_test(X: np.ndarray | sp.spmatrix, y: np.ndarray, n_permutations: int,
                     seed: int, batch_size: int = 256) -> PermutationTest:
    """Cohen's d ``[d]`` and two-sided permutation p-values ``[d]`` (NaN where d is NaN);
    ``X`` ``[n, d]`` dense or CSR.

    Each batch of permutations is a 0/1 matrix ``L`` ``[B, n]``; ``L @ X`` and ``L @ X²``
    give every permuted class mean and variance at once. ``p = (1 + #{|d*| >= |d|}) / (1 + N)``;
    the draws are one seeded stream, so the batch size does not change the result.
    """
    moments = _moments(X)
    n1, n = int(y.sum()), y.size
    yf = y.astype(np.float64)
    d_obs = _split_d(moments, yf[None], n1)[0]
    threshold = np.abs(d_obs) - TIE
    exceed = np.zeros(X.shape[1], np.int64)
    null_n, null_s, null_s2 = (np.zeros(X.shape[1]) for _ in range(3))
    rng = np.random.default_rng(seed)
    batch = max(1, min(batch_size, MAX_BATCH_CELLS // max(1, X.shape[1])))
    done = 0
    while done < n_permutations:
        b = min(batch, n_permutations - done)
        L = yf[np.argsort(rng.random((b, n)), axis=1)]  # [b, n] shuffled labels
        d_perm = _split_d(moments, L, n1)
        exceed += np.sum(np.nan_to_num(np.abs(d_perm), nan=-1.0) >= threshold, axis=0)
        ok = np.isfinite(d_perm)
        null_n += ok.sum(0)
        null_s += np.where(ok, d_perm, 0.0).sum(0)
        null_s2 += np.where(ok, d_perm ** 2, 0.0).sum(0)
        done += b
    p = (1.0 + exceed) / (1.0 + n_permutations)
    p[np.isnan(d_obs)] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = null_s / null_n
        sd = np.sqrt(np.clip(null_s2 / null_n - mean ** 2, 0.0, None) * null_n / (null_n - 1))
    return PermutationTest(d_obs, p, mean, sd)


def bh_adjust(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values ``[d]`` over the finite entries of ``p``; NaN stays NaN."""
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(p[ok], method="bh")
    return q


@dataclass
class EffectsResult:
    """Per-column statistics ``[d]`` plus the top-k summary of one dataset."""

    dataset: ProbeDataset
    positive_class: str
    d: np.ndarray
    p: np.ndarray
    q: np.ndarray
    settings: dict[str, Any]
    top: list[dict[str, Any]]
    localisation: dict[str, Any]


def compute_effects(ds: ProbeDataset, *, positive_class: str | int | None = None,
                    n_permutations: int = 1000, seed: int = 0, alpha: float = 0.05,
                    top_k: int = 20, descriptions: dict[str, dict[int, str]] | None = None,
                    batch_size: int = 256, p_method: str = "permutation") -> EffectsResult:
    """Cohen's d, p, BH q for every column of ``ds``; top-k (by |d|) and localisation.

    ``p_method``: ``permutation`` (Monte Carlo, floor ``1/(N+1)``) or ``normal`` (normal tail
    of each column's permutation null, see :meth:`PermutationTest.p_normal`). With the
    Monte Carlo p, BH can reject nothing unless ``N >= n_tested / alpha``; the record's
    ``bh_can_reject`` says whether that holds.
    """
    check_dataset(ds)
    if n_permutations < 2 or top_k < 1:
        raise InputError(ds.name, "effects", "need n_permutations >= 2 and top_k >= 1")
    if p_method not in ("permutation", "normal"):
        raise InputError(ds.name, "effects.p_method", f"{p_method!r}: permutation or normal")
    y, positive = binary_target(ds, positive_class)
    perm = permutation_test(ds.X, y, n_permutations, seed, batch_size)
    d, p = perm.d, (perm.p if p_method == "permutation" else perm.p_normal())
    q = bh_adjust(p)
    tested = np.isfinite(d)
    order = np.flatnonzero(tested)[np.lexsort((p[tested], -np.abs(d[tested])))][:top_k]
    top = [_describe(ds, int(c), y, d, p, q, alpha, rank, descriptions or {})
           for rank, c in enumerate(order, 1)]
    floor = 1.0 / (1 + n_permutations) if p_method == "permutation" else 0.0
    settings = {"n_permutations": n_permutations, "seed": seed, "alpha": alpha, "top_k": top_k,
                "p_method": p_method, "min_attainable_p": floor,
                # BH's smallest threshold is alpha / n_tested
                "bh_can_reject": bool(floor <= alpha / max(1, int(tested.sum())))}
    if not settings["bh_can_reject"]:
        log.warning("%s: %d permutations cannot reach BH significance over %d columns; "
                    "raise n_permutations to >= %d or use p_method: normal", ds.name,
                    n_permutations, int(tested.sum()), int(np.ceil(tested.sum() / alpha)))
    return EffectsResult(ds, positive, d, p, q, settings, top,
                         localisation(ds.columns, order, tested, ds.layers, ds.positions))


def _describe(ds: ProbeDataset, c: int, y: np.ndarray, d: np.ndarray, p: np.ndarray,
              q: np.ndarray, alpha: float, rank: int, descriptions: dict[str, dict[int, str]]
              ) -> dict[str, Any]:
    hooks, positions = ds.meta.get("hooks", []), ds.positions
    hook = hooks[ds.columns["hook"][c]] if hooks else ""
    pos = int(ds.columns["position"][c])
    unit = int(ds.columns["unit"][c])
    col = dense_column(ds.X, c)
    return {"rank": rank, "column": c, "hook": hook, "layer": int(ds.columns["layer"][c]),
            "position": positions[pos] if pos >= 0 else None, "unit": unit,
            "d": float(d[c]), "p": float(p[c]), "q": float(q[c]),
            "significant": bool(q[c] <= alpha),
            "mean_positive": float(col[y].mean()), "mean_rest": float(col[~y].mean()),
            "active_positive": float((col[y] > 0).mean()),
            "active_rest": float((col[~y] > 0).mean()),
            "description": descriptions.get(hook, {}).get(unit)}


def localisation(columns: dict[str, np.ndarray], top: np.ndarray, tested: np.ndarray,
                 layers: list[int], positions: list[str]) -> dict[str, Any]:
    """Where the top columns ``top`` (indices) sit: counts and shares by layer, by position
    and on the ``[n_layers, n_positions]`` grid, each with the share expected by chance
    (the share of tested columns there). ``tested`` ``[d]`` bool."""
    lay = columns["layer"].astype(np.int64)
    pos = columns["position"].astype(np.int64)
    layers = layers or sorted(set(lay.tolist()))
    li = {layer: i for i, layer in enumerate(layers)}
    grid = np.zeros((len(layers), len(positions)), np.int64)
    expected = np.zeros_like(grid)
    for cell, idx in ((grid, top), (expected, np.flatnonzero(tested))):
        for c in idx:
            if pos[c] >= 0 and int(lay[c]) in li:
                cell[li[int(lay[c])], pos[c]] += 1
    k, n_tested = max(1, int(grid.sum())), max(1, int(expected.sum()))
    share, chance = grid / k, expected / n_tested
    hot = [{"layer": layers[i], "position": positions[j], "count": int(grid[i, j]),
            "share": float(share[i, j]), "expected_share": float(chance[i, j]),
            "enrichment": float(share[i, j] / chance[i, j]) if chance[i, j] > 0 else None}
           for i, j in zip(*np.nonzero(grid), strict=True)]
    hot.sort(key=lambda h: -h["count"])
    return {"k": int(grid.sum()), "n_tested": int(expected.sum()), "layers": layers,
            "positions": positions, "grid_count": grid.tolist(), "grid_share": share.tolist(),
            "grid_expected_share": chance.tolist(), "tested_by_position": expected.sum(0).tolist(),
            "by_layer": dict(zip(map(str, layers), share.sum(1).tolist(), strict=True)),
            "by_position": dict(zip(positions, share.sum(0).tolist(), strict=True)),
            "expected_by_layer": dict(zip(map(str, layers), chance.sum(1).tolist(), strict=True)),
            "expected_by_position": dict(zip(positions, chance.sum(0).tolist(), strict=True)),
            "hot_spots": hot}


def toy_check(loc: dict[str, Any], informative_positions: list[str], *,
              probe_weights: np.ndarray | None = None,
              columns: dict[str, np.ndarray] | None = None, alpha: float = 0.05,
              source: str = "toy_check") -> dict[str, Any]:
    """Do the top-k features (and, if given, a probe's |weights| ``[d]``) favour the known
    informative positions more than chance?

    Effects: observed share of the top-k at informative positions vs the share of tested
    columns there, with a one-sided hypergeometric p (k drawn without replacement). Probe:
    share of summed |coefficient| on informative columns vs their share of columns
    (descriptive; meaningful with ``standardize`` normalisation). ``undetermined`` when every
    or no tested column is at an informative position.
    """
    positions = list(loc["positions"])
    unknown = [p for p in informative_positions if p not in positions]
    if unknown:
        raise InputError(source, "informative_positions", f"{unknown} not among {positions}")
    info = np.isin(positions, informative_positions)
    tested = np.asarray(loc["tested_by_position"], dtype=np.int64)
    counts = np.asarray(loc["grid_count"], dtype=np.int64).sum(0)
    N, K = int(tested.sum()), int(tested[info].sum())  # tested columns: all, informative
    k, x = int(counts.sum()), int(counts[info].sum())  # top-k: all, informative
    expected = K / N if N else float("nan")
    out: dict[str, Any] = {"informative_positions": list(informative_positions), "k": k,
                           "top_k_share": x / k if k else float("nan"), "expected_share": expected}
    if 0 < K < N and k:
        p = float(stats.hypergeom.sf(x - 1, N, K, k))
        out.update(p_value=p, verdict="points_to_informative" if p < alpha and x / k > expected
                   else "not_enriched")
    else:
        out.update(p_value=None, verdict="undetermined")
    if probe_weights is not None and columns is not None:
        col_info = np.isin(columns["position"], np.flatnonzero(info))
        total = float(probe_weights.sum())
        out["probe_weight_share"] = float(probe_weights[col_info].sum() / total) if total else None
        out["probe_expected_share"] = float(col_info.mean())
    return out


def coefficient_weights(h5_path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Mean over folds of the summed |coefficient| per input column ``[d]``, and the columns.

    Coefficients live on the normalised scale, so with ``standardize`` they compare across
    columns; this is what the toy check uses to ask where a probe puts its weight.
    """
    try:
        with h5py.File(h5_path, "r") as h5:
            coefs = [np.abs(h5[k]["coef"][()]).sum(axis=0) for k in h5 if k.startswith("fold_")]
            columns = {c: h5[f"columns/{c}"][()] for c in COLUMN_FIELDS}
    except (OSError, KeyError) as err:
        raise InputError(h5_path, "<file>", f"not a probe fit file ({err})") from None
    return np.mean(coefs, axis=0), columns


def effects_record(res: EffectsResult) -> dict[str, Any]:
    """JSON record (``probe/effects/{name}.json``): settings, counts, top-k, localisation."""
    tested = np.isfinite(res.d)
    ds = res.dataset
    return {"name": ds.name, "prompt_set": ds.meta.get("prompt_set"),
            "strategy": ds.meta.get("strategy"),
            "input_kind": ds.meta.get("input_kind"), "positive_class": res.positive_class,
            "n_samples": int(ds.X.shape[0]), "n_positive": int((ds.y == ds.class_names.index(
                res.positive_class)).sum()), "n_columns": int(res.d.size),
            "n_tested": int(tested.sum()),
            "n_significant": int(np.sum(res.q <= res.settings["alpha"])),
            **res.settings, "top": res.top, "localisation": res.localisation}


def write_effects(res: EffectsResult, json_path: str | Path, h5_path: str | Path,
                  config: dict[str, Any] | None = None,
                  extra: dict[str, Any] | None = None) -> None:
    """Write full per-column arrays (HDF5 ``d``, ``p``, ``q`` ``[d]``, ``columns/*``) and the
    JSON record (plus ``extra`` keys, e.g. the toy check); no half-written pair on error."""
    with atomic_path(h5_path) as tmp, h5py.File(tmp, "w") as h5:
        for key, value in (("d", res.d), ("p", res.p), ("q", res.q)):
            h5.create_dataset(key, data=value)
        for key, value in res.dataset.columns.items():
            h5.create_dataset(f"columns/{key}", data=value)
        h5.attrs.update(name=res.dataset.name, positive_class=res.positive_class,
                        prompt_set=str(res.dataset.meta.get("prompt_set")),
                        alpha=res.settings["alpha"], positions=json.dumps(res.dataset.positions),
                        layers=json.dumps(res.dataset.layers), provenance=provenance_json(config))
    try:
        write_json(json_path, {**effects_record(res), **(extra or {})}, config)
    except BaseException:
        Path(h5_path).unlink(missing_ok=True)
        raise


def read_effect_arrays(h5_path: str | Path) -> dict[str, Any]:
    """``d``, ``p``, ``q`` ``[d]`` and attributes of a file from :func:`write_effects`."""
    try:
        with h5py.File(h5_path, "r") as h5:
            return {"d": h5["d"][()], "p": h5["p"][()], "q": h5["q"][()],
                    "name": str(h5.attrs["name"]), "alpha": float(h5.attrs["alpha"]),
                    "prompt_set": str(h5.attrs.get("prompt_set", ""))}
    except (OSError, KeyError) as err:
        raise InputError(h5_path, "<file>", f"not an effects file ({err})") from None


def run_effects(dataset_path: str | Path, json_out: str | Path, h5_out: str | Path, *,
                settings: dict[str, Any] | None = None, positive_class: str | int | None = None,
                descriptions: str | Path | None = None, descriptions_hook: str | None = None,
                fit_h5: str | Path | None = None,
                informative_positions: list[str] | None = None,
                config: dict[str, Any] | None = None) -> EffectsResult:
    """Rule ``probe_effects``: effects of one dataset, plus the toy check when the
    informative positions are known (with the fitted probe's weights if ``fit_h5`` is given).
    ``settings`` keys: ``n_permutations``, ``seed``, ``alpha``, ``top_k``, ``batch_size``,
    ``p_method``."""
    settings = dict(settings or {})
    allowed = {"n_permutations", "seed", "alpha", "top_k", "batch_size", "p_method"}
    if set(settings) - allowed:
        raise InputError("config", "probe.effects",
                         f"unknown key(s) {sorted(set(settings) - allowed)}")
    ds = read_probe_dataset(dataset_path)
    res = compute_effects(ds, positive_class=positive_class,
                          descriptions=descriptions_by_hook(descriptions, descriptions_hook),
                          **settings)
    extra: dict[str, Any] = {}
    if informative_positions:
        weights, columns = coefficient_weights(fit_h5) if fit_h5 else (None, None)
        extra["toy_check"] = toy_check(res.localisation, list(informative_positions),
                                       probe_weights=weights, columns=columns,
                                       alpha=res.settings["alpha"], source=ds.name)
    write_effects(res, json_out, h5_out, config, extra)
    return res
