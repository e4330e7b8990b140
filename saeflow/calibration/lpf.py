"""Planted data for the loss-per-feature correction's intervals
(:func:`saeflow.labels.correction.correct`): studies whose true LPFs, bucket contamination and
validation sample are drawn from a known truth, so coverage is counted, not assumed."""

from __future__ import annotations

from functools import partial

import numpy as np

from saeflow.calibration.check import COVERAGE, Check
from saeflow.labels.study import Study

SIM_LPF = np.array([1e-4, 3e-4])
SIM_N, SIM_SAMPLE = 80, 300  # features per bucket, validation labels per category
SIM_P_PRED, SIM_P_FN = 80 / 300, 25 / 300  # shares of the sample predicted in, and missed


def simulated_two_bucket(r: float, rng: np.random.Generator
                         ) -> tuple[Study, np.ndarray, np.ndarray]:
    """Buckets of 80 features, a share ``r`` of each the other category's (two-bucket's model
    holds), losses exact from the true LPFs :data:`SIM_LPF`; 300 validation labels per
    category drawn from the truth (a share 80/300 predicted into the bucket, as in a
    population of 300 features). Returns the study, its confusion counts ``[2, 4]`` (tp, fp,
    tn, fn) and its loss increases ``[2]``."""
    from saeflow.labels.correction import _two_bucket
    from saeflow.labels.study import parse_study

    delta = _two_bucket([SIM_N, SIM_N], [r, r]) @ SIM_LPF
    conf = rng.multinomial(SIM_SAMPLE, [SIM_P_PRED * (1 - r), SIM_P_PRED * r,
                                        1 - SIM_P_PRED - SIM_P_FN, SIM_P_FN], size=2)
    cats = {name: {"n_predicted": SIM_N, "ablated_loss": 3.0 + float(d),
                   "confusion": dict(zip(("tp", "fp", "tn", "fn"), map(int, c)))}
            for name, d, c in zip(("a", "b"), delta, conf)}
    return parse_study({"baseline_loss": 3.0, "categories": cats}, "sim"), conf, delta


def simulated_general(r: float, source: str, rng: np.random.Generator
                      ) -> tuple[Study, np.ndarray]:
    """General's model holds: buckets a, b and other of 80 features; a share ``r`` of a's and
    b's buckets from ``source`` (``category``: the other category; ``other``: features in no
    category), the other bucket holding 4% of each category's missed members; losses exact;
    300 joint validation labels drawn from the truth (80, 80 and 140 of them predicted into
    a, b and none). Returns the study and the true LPFs of a, b and other."""
    from saeflow.labels.study import parse_study

    lpf, names = np.array([1e-4, 3e-4, 1e-5]), ["a", "b", "other"]
    cross, out = (r, 0.0) if source == "category" else (0.0, r)
    comp = np.array([[1 - r, cross, out], [cross, 1 - r, out], [0.04, 0.04, 0.92]])
    delta = 80 * comp @ lpf
    counts = rng.multinomial(300, (np.array([80, 80, 140])[:, None] / 300 * comp).ravel())
    rows = [{"predicted": names[i:i + 1] if i < 2 else [], "human": names[j:j + 1] if j < 2 else [],
             "count": int(k)} for (i, j), k in np.ndenumerate(counts.reshape(3, 3)) if k]
    buckets = {n: {"n_predicted": 80, "ablated_loss": 3.0 + float(d)} for n, d in zip(names, delta)}
    other = buckets.pop("other")
    return parse_study({"baseline_loss": 3.0, "categories": buckets, "other": other,
                        "validation": rows}, "sim"), lpf


def ratio_study(lpf_a: float, rng: np.random.Generator, se: float = 0.02) -> Study:
    """Two buckets (900 and 1200 features, catB's LPF 3e-4), no contamination, losses
    measured with noise of standard error ``se`` (catA's LPF: se / 900 = 2.2e-5)."""
    from saeflow.labels.study import parse_study

    cats = {name: {"n_predicted": n, "delta_se": se,
                   "ablated_loss": float(3.0 + n * lpf + rng.normal(0, se))}
            for name, n, lpf in (("catA", 900, lpf_a), ("catB", 1200, 3e-4))}
    return parse_study({"baseline_loss": 3.0, "categories": cats}, "sim")


def _covers(ci: list[float] | None, truth: float) -> bool:
    return ci is not None and ci[0] <= truth <= ci[1]


def _two_bucket(r: float, reps: int, seed: int) -> tuple[int, int]:
    from saeflow.labels.correction import correct

    rng = np.random.default_rng([seed, 23, round(r * 1000)])
    hits = 0
    for i in range(reps):
        cats = correct(simulated_two_bucket(r, rng)[0], "two-bucket", 1000, seed=i)["categories"]
        hits += sum(_covers(cats[c]["ci95"], t) for c, t in zip("ab", SIM_LPF))
    return hits, 2 * reps


def _general(source: str, reps: int, seed: int) -> tuple[int, int]:
    from saeflow.labels.correction import correct

    rng = np.random.default_rng([seed, 5])
    hits = 0
    for i in range(reps):
        study, lpf = simulated_general(0.02, source, rng)
        cats = correct(study, "general", 500, seed=i)["categories"]
        hits += sum(_covers(cats[c]["ci95"], t) for c, t in zip("ab", lpf))
    return hits, 2 * reps


def _ratio_unbounded(reps: int, seed: int) -> tuple[int, int]:
    """catA's true LPF is 0, so the true ratio is infinite: only an unbounded set covers it."""
    from saeflow.labels.correction import correct

    rng = np.random.default_rng([seed, 3])
    hits = sum(correct(ratio_study(0.0, rng), "naive", 1000, seed=i)["ratios"]["catB/catA"]
               ["ci95_unbounded"] is True for i in range(reps))
    return hits, reps


def _ratio_finite(reps: int, seed: int) -> tuple[int, int]:
    from saeflow.labels.correction import correct

    rng = np.random.default_rng([seed, 4])
    hits = sum(_covers(correct(ratio_study(2e-4, rng), "naive", 1000, seed=i)["ratios"]
                       ["catB/catA"]["ci95"], 3e-4 / 2e-4) for i in range(reps))
    return hits, reps


def checks() -> list[Check]:
    lpf = "LPF 95% interval (correction/{method}.json, categories.<c>.ci95)"
    out = [Check(f"{lpf.format(method='two-bucket')}: contamination {r:.0%}", COVERAGE, 0.95,
                 f"buckets of 80, a share {r:.0%} of each the other category's; 300 validation "
                 "labels per category; losses exact; both categories' intervals counted",
                 600, partial(_two_bucket, r)) for r in (0.01, 0.02, 0.05)]
    out += [Check(f"{lpf.format(method='general')}: contaminants from {what}", COVERAGE, 0.95,
                  f"buckets a, b, other of 80, 2% of a's and b's from {what}; 300 joint "
                  "validation labels; losses exact; a's and b's intervals counted",
                  400, partial(_general, source))
            for source, what in (("category", "the other category"), ("other", "no category"))]
    ratio = "LPF ratio 95% set (correction/{method}.json, ratios.catB/catA)"
    out.append(Check(f"{ratio}: reference LPF 0 (true ratio infinite)", COVERAGE, 0.95,
                     "naive LPFs measured with noise (se 2.2e-5 on catA); only an unbounded set "
                     "(ci95_unbounded) contains an infinite ratio", 400, _ratio_unbounded))
    out.append(Check(f"{ratio}: reference LPF 9 standard errors from 0", COVERAGE, 0.95,
                     "as above with catA's LPF 2e-4: the percentile interval of the ratio's "
                     "draws against the true 1.5", 400, _ratio_finite))
    return out
