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
``[permutations, d]`` sums are dense, as they are for dense inputs. Writing and reading the
results, and the rule's entry point: :mod:`saeflow.probe.effects_files`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy import stats

from saeflow.core.errors import InputError
from saeflow.probe.dataset import ProbeDataset, check_dataset, dense_column
from saeflow.probe.permutation import (P_KINDS, bh_adjust, bh_min_rejections, cohens_d,
                                       permutation_test, permutation_test_columns)

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


@dataclass(frozen=True)
class EffectSettings:
    """``probe.effects``, typed (keys and meaning: the schema, workflow/schemas/config.schema.yaml;
    the defaults here are the schema's, for direct calls). ``n_permutations``: most label
    permutations per Monte Carlo column; ``alpha``: the BH false discovery rate; ``top_k``:
    columns reported and localised; ``batch_size``: permutations per batch; ``p_method``:
    :data:`P_METHODS`; ``stop_after``: a Monte Carlo column stops at this many as extreme
    draws; ``exact_max_k``: columns with at most this many values off their mode get the
    exact p."""

    n_permutations: int = 20000
    seed: int = 0
    alpha: float = 0.05
    top_k: int = 20
    batch_size: int = 256
    p_method: str = "permutation"
    stop_after: int = 20
    exact_max_k: int = 10

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, source: str = "config") -> EffectSettings:
        """From ``probe.effects`` (keys left out keep their default); an unknown key is an
        InputError."""
        from saeflow.core.config import strict_fields

        return cls(**strict_fields(cls, values, "probe.effects", source, asdict(cls())))

    def check(self, source: str) -> None:
        """Values no computation can use are an InputError naming ``source`` (the dataset)."""
        if self.n_permutations < 2 or self.top_k < 1 or self.stop_after < 1 \
                or self.exact_max_k < 0:
            raise InputError(source, "effects", "need n_permutations >= 2, top_k >= 1, "
                             "stop_after >= 1 and exact_max_k >= 0")
        if self.p_method not in P_METHODS:
            raise InputError(source, "effects.p_method",
                             f"{self.p_method!r}: one of {list(P_METHODS)}")


@dataclass(frozen=True)
class _Columns:
    """Per-column statistics ``[d]``: Cohen's d, p, BH q and how each p was found (index into
    :data:`saeflow.probe.permutation.P_KINDS`, -1 = normal)."""

    d: np.ndarray
    p: np.ndarray
    q: np.ndarray
    kinds: np.ndarray


def compute_effects(ds: ProbeDataset, settings: EffectSettings | None = None, *,
                    positive_class: str | int | None = None,
                    descriptions: dict[str, dict[int, str]] | None = None,
                    **overrides: Any) -> EffectsResult:
    """Cohen's d, p, BH q for every column of ``ds``; top-k (by |d|) and localisation.

    ``settings`` (default :class:`EffectSettings`), with ``overrides`` of its fields (direct
    calls: ``compute_effects(ds, n_permutations=200)``). ``p_method``: ``permutation``
    (valid: exact where the column allows, else sequential Monte Carlo with at most
    ``n_permutations`` draws, stopping a column at its ``stop_after``-th as extreme draw;
    :func:`saeflow.probe.permutation.permutation_test`) or ``normal`` (approximate,
    anti-conservative for sparse columns: the normal tail of each column's permutation null).
    A Monte Carlo p is at least ``1/(N+1)``, so BH rejects such a column only together with
    ``bh_min_rejections`` others at that floor; the record says so.
    """
    check_dataset(ds)
    s = replace(settings or EffectSettings(), **overrides)
    s.check(ds.name)
    n_permutations, alpha, p_method = s.n_permutations, s.alpha, s.p_method
    y, positive = binary_target(ds, positive_class)
    if p_method == "normal":
        perm = permutation_test_columns(ds.X, y, n_permutations, s.seed, s.batch_size, None, 0)
        p = perm.p_normal()
        log.warning("%s: p_method normal is approximate and anti-conservative for rarely "
                    "firing features; use p_method: permutation for valid p-values", ds.name)
    else:
        perm = permutation_test_columns(ds.X, y, n_permutations, s.seed, s.batch_size,
                                        s.stop_after, s.exact_max_k)
        p = perm.p
    d = perm.d
    q = bh_adjust(p)
    tested = np.isfinite(d)
    n_tested = int(tested.sum())
    order = np.flatnonzero(tested)[np.lexsort((p[tested], -np.abs(d[tested])))][:s.top_k]
    kinds = perm.kind if p_method == "permutation" else np.where(tested, -1, 0)
    stats_ = _Columns(d, p, q, kinds)
    top = [_describe(ds, int(c), rank, y, stats_, alpha, descriptions or {})
           for rank, c in enumerate(order, 1)]
    floor = 1.0 / (1 + n_permutations) if p_method == "permutation" else 0.0
    mc = perm.kind == P_KINDS.index("monte_carlo")
    record = {"n_permutations": n_permutations, "seed": s.seed, "alpha": alpha,
              "top_k": s.top_k, "p_method": p_method, "stop_after": s.stop_after,
              "exact_max_k": s.exact_max_k,
              "p_kinds": perm.counts() if p_method == "permutation" else {"normal": n_tested},
              "n_draws_max": int(perm.n_draws.max(initial=0)),
              "n_draws_mean": float(perm.n_draws[mc].mean()) if mc.any() else 0.0,
              "min_attainable_p": floor,
              "bh_min_rejections": bh_min_rejections(floor, n_tested, alpha)}
    if p_method == "permutation" and mc.any() and record["bh_min_rejections"] != 1:
        k = record["bh_min_rejections"]
        log.warning("%s: a Monte Carlo p is >= 1/(%d + 1), so BH over %d columns rejects such "
                    "a column only %s; n_permutations >= %d lets a single column through",
                    ds.name, n_permutations, n_tested,
                    f"when at least {k} columns reach that floor" if k else "never",
                    int(np.ceil(n_tested / alpha)) - 1)
    return EffectsResult(ds, positive, d, p, q, record, top,
                         localisation(ds.columns, order, tested, ds.layers, ds.positions),
                         kinds.astype(np.int8))


def _describe(ds: ProbeDataset, c: int, rank: int, y: np.ndarray, stats_: _Columns, alpha: float,
              descriptions: dict[str, dict[int, str]]) -> dict[str, Any]:
    """The record of column ``c``, ranked ``rank``: where it sits, its statistics, its class
    means and firing rates (``y`` ``[n]``: the positive class) and its description."""
    d, p, q, kinds = stats_.d, stats_.p, stats_.q, stats_.kinds
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
