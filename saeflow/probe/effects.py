"""Effect sizes and localisation: which SAE features (at which layer x position) separate two
classes, how sure we are, and where the strongest ones sit.

Per input column (an SAE feature at a layer and position, or a hidden dimension): Cohen's d
between the positive class and the rest, a two-sided permutation p-value (exact for sparse and
two-valued columns, sequential Monte Carlo batched through matrix products for the rest:
:mod:`saeflow.probe.permutation`), and Benjamini-Hochberg q-values over the tested
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
from saeflow.probe.dataset import (COLUMN_FIELDS, ProbeDataset, check_dataset, dense_column,
                                   read_probe_dataset)
from saeflow.probe.permutation import (P_KINDS, bh_adjust, bh_min_rejections, cohens_d,
                                       permutation_test, permutation_test_columns)
from saeflow.core.provenance import provenance_json

__all__ = ["bh_adjust", "cohens_d", "compute_effects", "permutation_test"]

log = logging.getLogger(__name__)


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
    # [d] how each p was found: index into saeflow.probe.permutation.P_KINDS, -1 = normal
    p_kind: np.ndarray | None = None


P_METHODS = ("permutation", "normal")


def compute_effects(ds: ProbeDataset, *, positive_class: str | int | None = None,
                    n_permutations: int = 20000, seed: int = 0, alpha: float = 0.05,
                    top_k: int = 20, descriptions: dict[str, dict[int, str]] | None = None,
                    batch_size: int = 256, p_method: str = "permutation",
                    stop_after: int = 20, exact_max_k: int = 10) -> EffectsResult:
    """Cohen's d, p, BH q for every column of ``ds``; top-k (by |d|) and localisation.

    ``p_method``: ``permutation`` (valid: exact where the column allows, else sequential
    Monte Carlo with at most ``n_permutations`` draws, stopping a column at its
    ``stop_after``-th as extreme draw; :func:`saeflow.probe.permutation.permutation_test`)
    or ``normal`` (approximate, anti-conservative for sparse columns: the normal tail of each
    column's permutation null). A Monte Carlo p is at least ``1/(N+1)``, so BH rejects such a
    column only together with ``bh_min_rejections`` others at that floor; the record says so.
    (The keyword defaults here are for direct calls; the pipeline passes the schema's.)
    """
    check_dataset(ds)
    if n_permutations < 2 or top_k < 1 or stop_after < 1 or exact_max_k < 0:
        raise InputError(ds.name, "effects", "need n_permutations >= 2, top_k >= 1, "
                         "stop_after >= 1 and exact_max_k >= 0")
    if p_method not in P_METHODS:
        raise InputError(ds.name, "effects.p_method", f"{p_method!r}: one of {list(P_METHODS)}")
    y, positive = binary_target(ds, positive_class)
    if p_method == "normal":
        perm = permutation_test_columns(ds.X, y, n_permutations, seed, batch_size, None, 0)
        p = perm.p_normal()
        log.warning("%s: p_method normal is approximate and anti-conservative for rarely "
                    "firing features; use p_method: permutation for valid p-values", ds.name)
    else:
        perm = permutation_test_columns(ds.X, y, n_permutations, seed, batch_size, stop_after,
                                        exact_max_k)
        p = perm.p
    d = perm.d
    q = bh_adjust(p)
    tested = np.isfinite(d)
    n_tested = int(tested.sum())
    order = np.flatnonzero(tested)[np.lexsort((p[tested], -np.abs(d[tested])))][:top_k]
    kinds = perm.kind if p_method == "permutation" else np.where(tested, -1, 0)
    top = [_describe(ds, int(c), y, d, p, q, alpha, rank, descriptions or {}, kinds)
           for rank, c in enumerate(order, 1)]
    floor = 1.0 / (1 + n_permutations) if p_method == "permutation" else 0.0
    mc = perm.kind == P_KINDS.index("monte_carlo")
    settings = {"n_permutations": n_permutations, "seed": seed, "alpha": alpha, "top_k": top_k,
                "p_method": p_method, "stop_after": stop_after, "exact_max_k": exact_max_k,
                "p_kinds": perm.counts() if p_method == "permutation" else {"normal": n_tested},
                "n_draws_max": int(perm.n_draws.max(initial=0)),
                "n_draws_mean": float(perm.n_draws[mc].mean()) if mc.any() else 0.0,
                "min_attainable_p": floor,
                "bh_min_rejections": bh_min_rejections(floor, n_tested, alpha)}
    if p_method == "permutation" and mc.any() and settings["bh_min_rejections"] != 1:
        k = settings["bh_min_rejections"]
        log.warning("%s: a Monte Carlo p is >= 1/(%d + 1), so BH over %d columns rejects such "
                    "a column only %s; n_permutations >= %d lets a single column through",
                    ds.name, n_permutations, n_tested,
                    f"when at least {k} columns reach that floor" if k else "never",
                    int(np.ceil(n_tested / alpha)) - 1)
    return EffectsResult(ds, positive, d, p, q, settings, top,
                         localisation(ds.columns, order, tested, ds.layers, ds.positions),
                         kinds.astype(np.int8))


def _describe(ds: ProbeDataset, c: int, y: np.ndarray, d: np.ndarray, p: np.ndarray,
              q: np.ndarray, alpha: float, rank: int, descriptions: dict[str, dict[int, str]],
              kinds: np.ndarray) -> dict[str, Any]:
    hooks, positions = ds.meta.get("hooks", []), ds.positions
    hook = hooks[ds.columns["hook"][c]] if hooks else ""
    pos = int(ds.columns["position"][c])
    unit = int(ds.columns["unit"][c])
    col = dense_column(ds.X, c)
    return {"rank": rank, "column": c, "hook": hook, "layer": int(ds.columns["layer"][c]),
            "position": positions[pos] if pos >= 0 else None, "unit": unit,
            "d": float(d[c]), "p": float(p[c]), "q": float(q[c]),
            "p_kind": P_KINDS[kinds[c]] if kinds[c] >= 0 else "normal",
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
    """Write full per-column arrays (HDF5 ``d``, ``p``, ``q``, ``p_kind`` ``[d]``,
    ``columns/*``) and the JSON record (plus ``extra`` keys, e.g. the toy check); no
    half-written pair on error."""
    with atomic_path(h5_path) as tmp, h5py.File(tmp, "w") as h5:
        for key, value in (("d", res.d), ("p", res.p), ("q", res.q)):
            h5.create_dataset(key, data=value)
        if res.p_kind is not None:
            h5.create_dataset("p_kind", data=res.p_kind)
            h5["p_kind"].attrs["names"] = json.dumps({"-1": "normal", **{
                str(i): name for i, name in enumerate(P_KINDS)}})
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


def probe_effects_stage(dataset_path: str | Path, json_out: str | Path, h5_out: str | Path, *,
                settings: dict[str, Any] | None = None, positive_class: str | int | None = None,
                descriptions: str | Path | None = None, descriptions_hook: str | None = None,
                fit_h5: str | Path | None = None,
                informative_positions: list[str] | None = None,
                config: dict[str, Any] | None = None) -> EffectsResult:
    """Rule ``probe_effects``: effects of one dataset, plus the toy check when the
    informative positions are known (with the fitted probe's weights if ``fit_h5`` is given).
    ``settings`` keys: ``n_permutations``, ``seed``, ``alpha``, ``top_k``, ``batch_size``,
    ``p_method``, ``stop_after``, ``exact_max_k``."""
    settings = dict(settings or {})
    allowed = {"n_permutations", "seed", "alpha", "top_k", "batch_size", "p_method",
               "stop_after", "exact_max_k"}
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
