"""Loss per feature (LPF) of feature categories, corrected for a noisy classifier.

Ablating the features a classifier puts in category c raises the loss by ``delta_c``; the
naive LPF is ``delta_c / n_c``. But the bucket also holds features of other categories
(contaminants), so its loss increase mixes their LPFs. Each method writes that mixture as a
linear system ``M @ lpf = delta`` whose rows say what each ablated bucket is made of, as
estimated from a human-labelled validation sample:

- ``naive``: ``M = diag(n_c)`` (no contamination).
- ``two-bucket`` (the published method): two categories; bucket A's contaminants are taken to
  be B features and vice versa, with contamination ``r_c = FP_c / (TP_c + FP_c)``.
- ``general``: k categories plus ``other`` (features in no category, measured by ablating a
  random matched-size set); bucket composition from the sample's joint labels; solved by
  non-negative least squares.

Intervals (:func:`posterior_draws`): each bucket's composition is drawn from its Jeffreys
posterior given the validation sample (two-bucket ``r_c ~ Beta(FP + 1/2, TP + 1/2)``, general
each row ``~ Dirichlet(counts + 1/2)``; a bootstrap of the counts cannot draw a rate the sample
never showed), the loss increases, if measured, from ``N(measured, delta_covariance)``; the
system is re-solved per draw, the interval is the draws' 2.5 and 97.5 percentiles. Naive uses
no labels: its interval is the measurement's (none without it). A ratio to the first category
gets its draws' percentiles where that category's interval lies above 0, else no interval (its
confidence set is unbounded: Fieller).

The study itself (data model, parsing, building it from the pipeline's results) is
:mod:`saeflow.labels.study`; this module solves it and, on the toy, compares with the truth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from scipy.optimize import nnls

from saeflow.core.errors import InputError
from saeflow.labels.study import OTHER, Bucket, Confusion, Study

METHODS = ("naive", "two-bucket", "general")
MAX_CONDITION = 1e12  # beyond this the solution is noise in float64


class _Degenerate(Exception):
    """A system that cannot be solved."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(problem)


# --- the systems ------------------------------------------------------------------------------

def _buckets(study: Study) -> dict[str, Bucket]:
    """Every ablated bucket by name: the categories, then ``other`` if measured."""
    return {**study.categories, **({OTHER: study.other} if study.other else {})}


def deltas(study: Study, names: Sequence[str]) -> np.ndarray:
    """``[len(names)]`` loss increases over the baseline."""
    return np.array([_buckets(study)[n].ablated_loss - study.baseline_loss for n in names])


def contamination(conf: Confusion, name: str) -> float:
    """Share of a predicted bucket that the humans say is not the category: FP / (TP + FP)."""
    if conf.tp + conf.fp == 0:
        raise _Degenerate(f"categories.{name}.confusion", "tp + fp = 0: contamination undefined")
    return conf.fp / (conf.tp + conf.fp)


def _two_bucket(sizes: Sequence[int], rates: Sequence[Any]) -> np.ndarray:
    """``[[n_A (1 - r_A), n_A r_A], [n_B r_B, n_B (1 - r_B)]]``, ``[..., 2, 2]``."""
    (n_a, n_b), (r_a, r_b) = sizes, rates
    return np.stack([np.stack([n_a * (1 - r_a), n_a * r_a], -1),
                     np.stack([n_b * r_b, n_b * (1 - r_b)], -1)], -2)


def two_bucket_system(study: Study) -> tuple[list[str], np.ndarray]:
    names = list(study.categories)
    if len(names) != 2:
        raise InputError(study.source, "categories",
                         f"two-bucket needs exactly two categories, got {len(names)}")
    for name in names:
        if study.categories[name].confusion is None:
            raise InputError(study.source, f"categories.{name}.confusion", "required by two-bucket")
    return names, _two_bucket([study.categories[n].n for n in names],
                              [contamination(study.categories[n].confusion, n) for n in names])


def composition_weights(study: Study) -> tuple[list[str], np.ndarray]:
    """``[k+1, k+1]`` validation features in each bucket (row) that are truly each category
    (column). A feature counts in every bucket it was predicted into (no prediction: the
    ``other`` bucket); one the humans put in several categories splits its weight equally
    among them, and one in none is ``other``."""
    names = [*study.categories, OTHER]
    col = {n: i for i, n in enumerate(names)}
    weights = np.zeros((len(names), len(names)))
    for predicted, human, count in study.validation or ():
        truth = human or (OTHER,)
        for b in predicted or (OTHER,):
            for t in truth:
                weights[col[b], col[t]] += count / len(truth)
    empty = [names[i] for i in np.nonzero(weights.sum(axis=1) == 0)[0]]
    if empty:
        raise _Degenerate("validation", f"no validation feature predicted in {empty}")
    return names, weights


def composition(study: Study) -> tuple[list[str], np.ndarray]:
    """``[k+1, k+1]`` share of each bucket (row) that is truly each category (column)."""
    names, weights = composition_weights(study)
    return names, weights / weights.sum(axis=1, keepdims=True)


def general_system(study: Study) -> tuple[list[str], np.ndarray]:
    if study.other is None:
        raise InputError(study.source, OTHER, "general needs 'other' (a random matched-size set)")
    if not study.validation:
        raise InputError(study.source, "validation", "general needs the joint validation labels")
    names, comp = composition(study)
    return names, np.array([b.n for b in _buckets(study).values()], float)[:, None] * comp


def system(study: Study, method: str) -> tuple[list[str], np.ndarray]:
    """Names and ``M`` (``[k, k]``) for ``method``."""
    if method == "naive":
        buckets = _buckets(study)
        return list(buckets), np.diag([float(b.n) for b in buckets.values()])
    if method == "two-bucket":
        return two_bucket_system(study)
    if method == "general":
        return general_system(study)
    raise InputError(study.source, "method", f"unknown method {method!r} (expected {METHODS})")


def solve(matrices: np.ndarray, rhs: np.ndarray, method: str) -> np.ndarray:
    """``[n, k]`` solutions of the systems ``[n, k, k]`` (exact; NNLS for ``general``); NaN
    where one is degenerate (condition number over :data:`MAX_CONDITION`)."""
    singular = np.linalg.svd(matrices, compute_uv=False)
    with np.errstate(divide="ignore", invalid="ignore"):
        cond = singular[:, 0] / singular[:, -1]
    ok = np.isfinite(cond) & (cond <= MAX_CONDITION)
    out = np.full(rhs.shape, np.nan)
    if method == "general":
        for i in np.nonzero(ok)[0]:
            out[i] = nnls(matrices[i], rhs[i])[0]
    elif ok.any():
        out[ok] = np.linalg.solve(matrices[ok], rhs[ok][..., None])[..., 0]
    return out


def estimate(study: Study, method: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Names, LPF vector and system matrix for one study; a singular system raises."""
    names, matrix = system(study, method)
    lpf = solve(matrix[None], deltas(study, names)[None], method)[0]
    if np.isnan(lpf).any():
        raise _Degenerate("categories", f"singular {method} system (condition number "
                          f"{np.linalg.cond(matrix):.3g}): the buckets' compositions cannot be "
                          "told apart")
    return names, lpf, matrix


# --- intervals --------------------------------------------------------------------------------

PRIOR = 0.5  # Jeffreys: Beta(1/2, 1/2) on a rate, Dirichlet(1/2, ...) on a composition row


def _matrix_draws(study: Study, method: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, k, k]`` systems with each bucket's composition drawn from its Jeffreys posterior.
    By hand: scipy.stats has the Beta and Dirichlet but no posterior pushed through a system."""
    names, matrix = system(study, method)
    if method == "naive":
        return np.broadcast_to(matrix, (n, *matrix.shape))
    if method == "two-bucket":  # r ~ Beta(FP + 1/2, TP + 1/2): Dirichlet(counts + 1/2), merged
        confs = [study.categories[name].confusion for name in names]
        return _two_bucket([study.categories[name].n for name in names],
                           [rng.beta(c.fp + PRIOR, c.tp + PRIOR, n) for c in confs])
    rows = np.stack([rng.dirichlet(w + PRIOR, n) for w in composition_weights(study)[1]], 1)
    return np.array([b.n for b in _buckets(study).values()], float)[None, :, None] * rows


def posterior_draws(study: Study, method: str, n_draws: int, seed: int,
                    delta_noise: np.ndarray | None = None) -> np.ndarray:
    """``[n_draws, k]`` LPF draws (module docstring); rows of NaN where a draw's system is
    degenerate. ``delta_noise`` ``[n_draws, k]`` (the system's names' order), when given, is
    added to the loss increases instead of draws from the study's covariance."""
    rng = np.random.default_rng(seed)
    names = system(study, method)[0]
    matrices = _matrix_draws(study, method, n_draws, rng)
    rhs = np.broadcast_to(deltas(study, names), (n_draws, len(names)))
    if delta_noise is not None:
        rhs = rhs + delta_noise
    elif study.delta_covariance is not None:
        cov_names, cov = study.delta_covariance
        noise = rng.multivariate_normal(np.zeros(len(cov_names)), cov, n_draws, method="eigh")
        rhs = rhs + noise[:, [cov_names.index(n) for n in names]]
    return solve(matrices, rhs, method)


# What the draws of each method's interval hold (``ci95_method``).
LABEL_POSTERIOR = {"two-bucket": "contamination ~ Beta(fp + 1/2, tp + 1/2) per bucket (Jeffreys)",
                   "general": "each bucket's composition row ~ Dirichlet(validation counts + 1/2) "
                              "(Jeffreys)"}
MEASUREMENT = "loss increases ~ N(measured, delta_covariance)"


def percentile_interval(values: np.ndarray, estimate: float) -> tuple[list[float] | None, int]:
    """The finite draws' 2.5 and 97.5 percentiles, widened to hold the point ``estimate``, and
    how many draws were not finite. Widened: a sample with no contaminant has a posterior that
    excludes contamination 0 by a hair, so a truth of 0 would never be covered (the fix of Brown,
    Cai and DasGupta's modified Jeffreys interval, lower end 0 when x = 0; else mostly a no-op)."""
    finite = values[np.isfinite(values)]
    ci = np.percentile(finite, [2.5, 97.5]).tolist() if len(finite) else None
    ci = ci and [float(min(ci[0], estimate)), float(max(ci[1], estimate))]
    return ci, int(values.size - finite.size)


def _flags(value: float, ci: list[float] | None, method: str) -> list[str]:
    flags = ["negative"] if value < 0 else []
    if method == "general" and value == 0:
        flags.append("at_nnls_bound")  # NNLS cannot go below 0: a negative truth shows as 0
    if ci is not None and ci[0] <= 0 <= ci[1]:
        flags.append("ci_spans_zero")
    return flags


RATIO_METHOD = "2.5-97.5 percentiles of the ratio's draws (all kept: the reference's interval > 0)"


def _ratio(draws: np.ndarray, j: int, lpf: np.ndarray, ref_ci: list[float] | None, ref: str
           ) -> dict[str, Any]:
    """The corrected ratio of bucket ``j`` to bucket 0 (``ref``) and its 95% interval from the
    draws ``[n, k]``: their ratios' percentiles when ``ref_ci`` lies above 0; where it reaches
    0 the ratio may be any size (Fieller's confidence set is unbounded): no interval."""
    out = dict.fromkeys("corrected ci95 ci95_unbounded ci95_method ci95_n_dropped note".split())
    if lpf[0] <= 0:  # an interval holding the estimate reaches 0 too: the set is unbounded
        return out | {"ci95_unbounded": True if ref_ci is not None else None,
                      "note": f"not reported: corrected lpf of {ref} is not positive"}
    out["corrected"] = float(lpf[j] / lpf[0])
    if ref_ci is None:
        return out
    if ref_ci[0] <= 0:
        return out | {"ci95_unbounded": True, "note": f"the 95% interval of {ref}'s LPF reaches "
                      "0, so the ratio's 95% confidence set is unbounded (Fieller)"}
    with np.errstate(divide="ignore", invalid="ignore"):
        ci, dropped = percentile_interval(draws[:, j] / draws[:, 0], out["corrected"])
    return out | {"ci95": ci, "ci95_unbounded": False, "ci95_method": RATIO_METHOD,
                  "ci95_n_dropped": dropped}


# --- the result -------------------------------------------------------------------------------

def correct(study: Study, method: str, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """``saeflow correct``: naive and corrected LPF per category, 95% intervals from
    ``n_boot`` posterior draws, ratios to the first category (only where its LPF is
    positive; unbounded where its interval reaches 0) and the condition number."""
    try:
        names, lpf, matrix = estimate(study, method)
    except _Degenerate as err:
        raise InputError(study.source, err.field, err.problem) from None
    naive = dict(zip(*estimate(study, "naive")[:2]))
    draws = posterior_draws(study, method, n_boot, seed)
    contam = _contamination_report(study, method, names)
    rhs = deltas(study, names)
    measured = study.delta_covariance is not None
    drawn = [d for d in (LABEL_POSTERIOR.get(method), measured and MEASUREMENT) if d]
    how = ("2.5-97.5 percentiles of draws (widened to hold the estimate): " + "; ".join(drawn)
           + "; system re-solved per draw, degenerate ones dropped") if drawn else None
    categories = {}
    for j, name in enumerate(names):
        ci, dropped = percentile_interval(draws[:, j], lpf[j]) if how else (None, None)
        categories[name] = {"n_predicted": _buckets(study)[name].n, "delta_loss": float(rhs[j]),
                            "lpf_naive": float(naive[name]), "lpf_corrected": float(lpf[j]),
                            "contamination": contam.get(name), "ci95": ci, "ci95_method": how,
                            "ci95_n_dropped": dropped,  # degenerate draws left out
                            "flags": _flags(float(lpf[j]), ci, method)}
    ref = names[0]
    ratios = {f"{name}/{ref}": {"naive": float(naive[name] / naive[ref]) if naive[ref] > 0 else None,
                                **_ratio(draws, j, lpf, categories[ref]["ci95"], ref)}
              for j, name in enumerate(names[1:], 1)}
    return {"method": method, "study": study.source, "baseline_loss": study.baseline_loss,
            "categories": categories, "ratios": ratios,
            "condition_number": float(np.linalg.cond(matrix)),
            "system": {"names": names, "matrix": matrix.tolist(), "rhs": rhs.tolist()},
            "draws": {"n": n_boot, "seed": seed, "method": how,
                      "n_failed": int(np.isnan(draws).any(axis=1).sum()),
                      "sources": ["validation labels"] * (method != "naive")
                      + ["loss measurement"] * measured}}


def _contamination_report(study: Study, method: str, names: list[str]) -> dict[str, float | None]:
    """Per bucket, the share the validation sample says is not its own category."""
    if method == "general":
        return {n: float(1 - w) for n, w in zip(names, np.diag(composition(study)[1]))}
    confs = {n: b.confusion for n, b in study.categories.items()}
    return {n: (c.fp / (c.tp + c.fp) if c is not None and c.tp + c.fp else None)
            for n in names for c in [confs.get(n)]}


# --- the toy's truth --------------------------------------------------------------------------

def true_lpf(ablation: Mapping[str, Any]) -> dict[str, float]:
    """Toy truth: ``delta / n`` of each ``truth:<name>`` set ablated."""
    return {key.split(":", 1)[1]: entry["delta"] / entry["n_features"]
            for key, entry in ablation["sets"].items()
            if key.startswith("truth:") and entry["n_features"] > 0}


GIVEN_PROMPTS = ("posterior draws of the validation labels only (Jeffreys), the loss increases "
                 "held at their measured values: the truth shares the eval prompts, so only the "
                 "label noise separates an estimate from it")
PLANTED = ("the keyword classifier's own contamination is small here, so this check barely tells "
           "the methods apart; the planted-noise validation (`snakemake validation`, "
           "correction/validation.json) plants contamination from 0 to 50% and scores bias, RMSE "
           "and coverage per method over replicates")


def _covers(ci: Sequence[float] | None, value: float) -> bool | None:
    return None if ci is None else bool(ci[0] <= value <= ci[1])


def _errors(estimate: float, true: float) -> dict[str, Any]:
    return {"estimate": estimate, "abs_error": abs(estimate - true),
            "rel_error": abs(estimate - true) / abs(true) if true else None}


def compare_with_truth(results: Mapping[str, Mapping[str, Any]], truth: Mapping[str, float],
                       study: Study | None = None, n_boot: int = 2000, seed: int = 0
                       ) -> dict[str, Any]:
    """Per method and category: naive and corrected error against the true LPF, and whether
    the corrected 95% interval covers it (``correction/summary.json``). With ``study`` (the one
    the results solved), also by an interval given the prompts (:data:`GIVEN_PROMPTS`), the one
    a same-prompts truth calls for; the full interval stays, marked as over-covering here."""
    fixed = replace(study, delta_covariance=None) if study is not None else None
    summary: dict[str, Any] = {"true_lpf": dict(truth), "methods": {}, "planted_noise": PLANTED}
    for method, result in results.items():
        given = None  # naive uses no labels: nothing to draw given the prompts
        if fixed is not None and method != "naive":
            given = dict(zip(system(fixed, method)[0],
                             posterior_draws(fixed, method, n_boot, seed).T))
        rows = {}
        for name, cat in result["categories"].items():
            if name not in truth:
                continue
            ci, true = cat["ci95"], truth[name]
            corrected = {**_errors(cat["lpf_corrected"], true), "ci95": ci,
                         "covers_truth": _covers(ci, true)}
            if study is not None:
                ci_given, dropped = ((None, None) if given is None else
                                     percentile_interval(given[name], cat["lpf_corrected"]))
                corrected |= {"ci95_given_prompts": ci_given, "ci95_given_prompts_n_dropped": dropped,
                              "covers_truth_given_prompts": _covers(ci_given, true)}
            rows[name] = {"true": true, "contamination": cat.get("contamination"),
                          "naive": _errors(cat["lpf_naive"], true), "corrected": corrected,
                          # how far the correction moved the estimate, in units of the truth
                          "correction_shift": (abs(cat["lpf_corrected"] - cat["lpf_naive"]) / abs(true)
                                               if true else None)}
        ratios = {}
        for key, ratio in result["ratios"].items():
            num, ref = key.split("/")
            if num in truth and ref in truth and truth[ref] > 0:
                true_ratio = truth[num] / truth[ref]
                ratios[key] = {"true": true_ratio, "naive": ratio["naive"],
                               "corrected": ratio["corrected"], "ci95": ratio["ci95"],
                               "ci95_unbounded": ratio.get("ci95_unbounded"),
                               "covers_truth": _covers(ratio["ci95"], true_ratio)}
        summary["methods"][method] = {"categories": rows, "ratios": ratios}
    if study is not None:
        summary["intervals"] = {"ci95_given_prompts": GIVEN_PROMPTS,
                                "ci95": "labels and prompt noise drawn: wider than the error "
                                        "against a same-prompts truth, so it over-covers here",
                                "n_draws": n_boot, "seed": seed}
    return summary


# --- the rules' entry points ------------------------------------------------------------------

def correct_stage(study_path: str, method: str, cfg: Mapping[str, Any], out: str) -> None:
    """Rule ``correct``: :func:`correct` the study ``study_path`` (correction/study.yaml) by
    ``method`` with ``cfg`` (``labels.correction``); to ``out`` (correction/{method}.json)."""
    from saeflow.core.io import write_json
    from saeflow.labels.study import load_study

    result = correct(load_study(study_path), method, cfg["n_boot"], cfg["seed"])
    write_json(out, result, {**cfg, "method": method})


def correction_summary_stage(results: Mapping[str, str], ablation: str, study_path: str,
                              cfg: Mapping[str, Any], out: str) -> None:
    """Rule ``correction_summary`` (toy only): :func:`compare_with_truth` of each method's result
    (``results``: method -> correction/{method}.json) against the true LPF of ``ablation``, the
    intervals given the prompts re-drawn from ``study_path``; ``cfg``: ``labels.correction``."""
    from saeflow.core.io import read_json, write_json
    from saeflow.labels.study import load_study

    loaded = {m: read_json(p) for m, p in results.items()}
    summary = compare_with_truth(loaded, true_lpf(read_json(ablation)), load_study(study_path),
                                 cfg["n_boot"], cfg["seed"])
    write_json(out, summary, {"methods": list(results), "correction": dict(cfg)})
