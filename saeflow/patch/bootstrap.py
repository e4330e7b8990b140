"""Bootstrap resampling over the pairs of a patching run, by cluster.

Pairs are rarely independent draws: a pairs file is usually a few templates filled in many
times, and pairs of one template share their effect far more than pairs of different ones. A
bootstrap that resamples pairs then treats 200 pairs of 4 templates as 200 independent units,
and its intervals are too narrow (``tests/patch/test_bootstrap.py`` measures how much). So
every interval over pairs in :mod:`saeflow.patch` resamples *clusters*: clusters are drawn
with replacement, as many as there are, and every pair of a drawn cluster is kept (a cluster
bootstrap). Where the pairs file names no cluster each pair is its own, and the resample is
the ordinary bootstrap over pairs, draw for draw.

A pair's cluster (:data:`CLUSTER_SOURCES`) is its ``group`` where the pairs file has that
column, else its clean row's ``template`` (the toy world's pairs have both rows' templates,
and they differ within a pair: clean ``len_bracket_clean``, corrupted ``len_bracket``),
else the pair itself. :func:`saeflow.patch.pairs.load_pairs` keeps it on each
:class:`~saeflow.patch.pairs.PairBatch`.

Every resampled statistic is a weighted mean: a draw is a vector of weights over pairs (how
often the pair's cluster was drawn), so a statistic's draws are one matrix product. Written
here rather than with ``scipy.stats.bootstrap``, which resamples observations one by one (no
clusters) and computes one statistic per call, while a resid.h5 holds a ratio of means per
layer x position cell, NaN where a pair lacks the position, all from the same draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from saeflow.patch.pairs import PairBatch

# what defines a pair's cluster, by the pairs file's columns (PairBatch.cluster_by)
CLUSTER_SOURCES = {
    "group": "the pairs file's `group` column",
    "template": "the clean row's `template` (the file has no `group` column; a pair's "
                "corrupted row may name another template)",
    "pair": "none named (no `group` or `template` column): each pair its own cluster",
}
# The unit resampled, as an interval's method names it.
UNITS = {"group": "groups", "template": "templates", "pair": "pairs"}
# Fewer clusters than this and a cluster bootstrap itself under-covers: about 0.80 for a
# nominal 0.95 at 4 clusters with plain percentiles (tests/patch/test_bootstrap.py).
FEW_CLUSTERS = 20
# The interval of a run whose pairs name no clusters (Clusters.method gives each run's).
PAIRS_METHOD = "expanded percentile bootstrap (Hesterberg 2015) over pairs"


@dataclass(frozen=True)
class Clusters:
    """Each pair's cluster id (``ids``, one per pair, in the order of the per-pair values a
    statistic is computed from) and what defined it (``by``, a key of :data:`CLUSTER_SOURCES`)."""

    ids: tuple[str, ...]
    by: str = "pair"

    @classmethod
    def of(cls, batches: Sequence[PairBatch]) -> Clusters:
        """The clusters of ``batches``' pairs, batch by batch (the order every stage iterates
        pairs in: chunks keep it)."""
        by = {b.cluster_by for b in batches}
        if len(by) > 1:
            raise ValueError(f"batches define clusters differently: {sorted(by)}")
        return cls(tuple(c for b in batches for c in b.clusters), by.pop() if by else "pair")

    @classmethod
    def pairs(cls, n: int) -> Clusters:
        """``n`` pairs, each its own cluster."""
        return cls(tuple(str(i) for i in range(n)), "pair")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def index(self) -> np.ndarray:
        """``[n]``: each pair's cluster as 0..C-1, clusters numbered by first appearance (so
        with one pair per cluster the draws are those of a bootstrap over pairs in order)."""
        _, first, inverse = np.unique(np.asarray(self.ids, dtype=object).astype(str),
                                      return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        return rank[inverse.reshape(-1)]

    @property
    def n_clusters(self) -> int:
        return len(set(self.ids))

    def weights(self, n_boot: int, seed: int) -> np.ndarray:
        """``[n_boot, n]`` float: per draw, how many times each pair is in the resample (its
        cluster's draw count: ``C`` clusters drawn uniformly with replacement)."""
        index = self.index
        C = int(index.max()) + 1 if len(index) else 0
        counts = np.random.default_rng(seed).multinomial(C, np.full(C, 1.0 / C), size=n_boot)
        return counts[:, index].astype(np.float64)

    def method(self, n_boot: int | None = None) -> str:
        """The interval method, naming the unit resampled."""
        draws = f"; {n_boot} draws" if n_boot else ""
        if self.by == "pair":
            return f"{PAIRS_METHOD} ({CLUSTER_SOURCES['pair']}{draws})"
        few = (f"; fewer than {FEW_CLUSTERS} clusters: the interval under-covers"
               if self.n_clusters < FEW_CLUSTERS else "")
        return (f"expanded percentile (Hesterberg 2015) cluster bootstrap over "
                f"{UNITS[self.by]} ({self.n_clusters} "
                f"clusters drawn with replacement, every pair of a drawn cluster kept; "
                f"cluster = {CLUSTER_SOURCES[self.by]}{draws}{few})")

    def record(self) -> dict[str, Any]:
        """The JSON record of the resampling unit."""
        return {"unit": UNITS[self.by], "cluster_by": self.by,
                "cluster_rule": CLUSTER_SOURCES[self.by], "n_clusters": self.n_clusters,
                "n_pairs": len(self)}


def expanded_tail(ci: float, n_units: int | None) -> float:
    """The lower tail probability of Hesterberg's expanded percentile interval (Hesterberg
    2015, "What teachers should know about the bootstrap", sec. 5): a percentile interval of
    a mean over ``n`` resampled units is too narrow by about ``sqrt((n - 1) / n)`` and by the
    normal quantile's place of Student's t, so the tails move to ``Phi(sqrt(n / (n - 1)) *
    t_{n-1}((1 - ci) / 2))``. Written here because neither numpy nor scipy has it (scipy's
    ``bootstrap`` resamples rows, not clusters through count vectors). With 30 templates a
    plain percentile interval covered 0.91 where this one covers near 0.95 (the calibration
    table); ``None`` or fewer than 2 units: the plain tail."""
    from scipy import stats

    alpha = (1 - ci) / 2
    if not n_units or n_units < 2:
        return alpha
    return float(stats.norm.cdf(np.sqrt(n_units / (n_units - 1))
                                * stats.t.ppf(alpha, n_units - 1)))


def percentile_interval(boots: np.ndarray, ci: float, n_units: int | None = None) -> np.ndarray:
    """``[2, ...]`` nan-aware percentile interval of ``boots [n_boot, ...]`` (NaN where every
    draw is NaN); with ``n_units`` (the clusters or pairs resampled) Hesterberg's expanded
    percentile interval (:func:`expanded_tail`)."""
    tail = 100 * expanded_tail(ci, n_units)
    flat = boots.reshape(boots.shape[0], -1)
    out = np.full((2, flat.shape[1]), np.nan)
    ok = ~np.all(np.isnan(flat), axis=0)
    if ok.any():
        out[:, ok] = np.nanpercentile(flat[:, ok], [tail, 100 - tail], axis=0)
    return out.reshape(2, *boots.shape[1:])
