"""Planted data for the patching stage's intervals over pairs: the residual-patching cells, the
faithfulness curve and the circuit's faithfulness all resample pairs, or the templates they
come from, through :func:`saeflow.patch.resid.bootstrap_ci` and
:class:`saeflow.patch.bootstrap.Clusters`."""

from __future__ import annotations

from functools import partial

import numpy as np

from saeflow.calibration.check import COVERAGE, Check


def clustered_coverage(n_clusters: int, per_cluster: int, clustered: bool, reps: int = 400,
                       seed: int = 0, ratio: bool = False, n_boot: int = 400) -> tuple[int, int]:
    """How many of ``reps`` 95% intervals of the mean cover the true mean 0. Each replicate:
    ``n_clusters`` templates of ``per_cluster`` pairs, a template effect (sd 1) shared by its
    pairs plus each pair's own noise (sd 1), one column of an ``[n, reps]`` array, so one call
    of :func:`bootstrap_ci` computes every interval; ``clustered``: the cluster bootstrap
    over templates, else the bootstrap over pairs. ``ratio``: the normalised effect's ratio of
    means instead, ``mean(effect) / mean(gap)``, effects shifted to mean 1 and a gap of 4
    with a shared template shift (sd 1): true 1/4."""
    from saeflow.patch.bootstrap import Clusters
    from saeflow.patch.resid import bootstrap_ci

    rng = np.random.default_rng([seed, n_clusters, per_cluster])
    ids = np.repeat(np.arange(n_clusters), per_cluster)
    values = rng.normal(size=(n_clusters, reps))[ids] + rng.normal(size=(len(ids), reps))
    clusters = Clusters(tuple(f"t{i}" for i in ids), "template") if clustered else None
    truth = 0.0
    if ratio:  # one gap per pair, shared by the replicates: bootstrap_ci's [n] denominator
        gap, truth = 4 + rng.normal(size=n_clusters)[ids], 0.25
        _, lo, hi = bootstrap_ci(values + 1, n_boot, 0.95, seed + 1, gap, clusters=clusters)
    else:
        _, lo, hi = bootstrap_ci(values, n_boot, 0.95, seed + 1, clusters=clusters)
    return int(np.sum((lo <= truth) & (truth <= hi))), reps


def _independent(reps: int, seed: int, ratio: bool = False) -> tuple[int, int]:
    """Pairs that share nothing (600 clusters of one): the bootstrap over pairs' own case."""
    return clustered_coverage(600, 1, False, reps, seed, ratio)


def checks() -> list[Check]:
    what = "patching interval over pairs (patch/resid.h5 agg/*_lo, *_hi; faithfulness*_ci95)"
    templated = ("30 templates x 20 pairs, half the variance shared within a template; "
                 "cluster bootstrap over templates")
    return [
        Check(f"{what}: mean effect, independent pairs", COVERAGE, 0.95,
              "600 pairs that share nothing; bootstrap over pairs", 400, _independent),
        Check(f"{what}: ratio of means, independent pairs", COVERAGE, 0.95,
              "as above, the normalised effect mean(effect) / mean(gap)", 400,
              partial(_independent, ratio=True)),
        Check(f"{what}: mean effect, pairs from templates", COVERAGE, 0.95, templated, 400,
              lambda reps, seed: clustered_coverage(30, 20, True, reps, seed)),
        Check(f"{what}: ratio of means, pairs from templates", COVERAGE, 0.95,
              templated + " (normalised effect)", 400,
              lambda reps, seed: clustered_coverage(30, 20, True, reps, seed, ratio=True)),
        Check(f"{what}: mean effect, 4 templates (the toy's pairs)", COVERAGE, 0.95,
              "4 templates x 50 pairs: too few clusters for any bootstrap, as the interval's "
              "method string warns below 20", 400,
              lambda reps, seed: clustered_coverage(4, 50, True, reps, seed)),
    ]
