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

Uncertainty has two sources, both resampled (seeded) and the system re-solved per draw: the
validation sample (its counts, multinomial) and, when the study gives it, the measurement of
the loss increases (normal with the study's ``delta_covariance``, prompts as the unit). The
naive estimate uses no labels, so its interval reflects the measurement alone; without a
measured covariance the losses are treated as exact and the naive estimate has no interval.

The study itself (data model, parsing, building it from the pipeline's results) is
:mod:`saeflow.labels.study`; this module solves it and, on the toy, compares with the truth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from scipy.optimize import nnls

from saeflow.core.errors import InputError
from saeflow.labels.study import OTHER, Confusion, Study

METHODS = ("naive", "two-bucket", "general")
MAX_CONDITION = 1e12  # beyond this the solution is noise in float64


class _Degenerate(Exception):
    """A system that cannot be solved (for a bootstrap draw: skip it)."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(problem)


# --- the systems ------------------------------------------------------------------------------

def deltas(study: Study, names: Sequence[str]) -> np.ndarray:
    """``[len(names)]`` loss increases over the baseline."""
    buckets = {**study.categories, **({OTHER: study.other} if study.other else {})}
    return np.array([buckets[n].ablated_loss - study.baseline_loss for n in names])


def contamination(conf: Confusion, name: str) -> float:
    """Share of a predicted bucket that the humans say is not the category: FP / (TP + FP)."""
    if conf.tp + conf.fp == 0:
        raise _Degenerate(f"categories.{name}.confusion", "tp + fp = 0: contamination undefined")
    return conf.fp / (conf.tp + conf.fp)


def two_bucket_system(study: Study) -> tuple[list[str], np.ndarray]:
    """``[[pure_A, contam_A], [contam_B, pure_B]]`` with ``pure = n (1 - r)``, ``contam = n r``."""
    names = list(study.categories)
    if len(names) != 2:
        raise InputError(study.source, "categories",
                         f"two-bucket needs exactly two categories, got {len(names)}")
    rows = []
    for name in names:
        bucket = study.categories[name]
        if bucket.confusion is None:
            raise InputError(study.source, f"categories.{name}.confusion", "required by two-bucket")
        r = contamination(bucket.confusion, name)
        rows.append((bucket.n * (1 - r), bucket.n * r))
    (pure_a, contam_a), (pure_b, contam_b) = rows
    return names, np.array([[pure_a, contam_a], [contam_b, pure_b]])


def composition(study: Study) -> tuple[list[str], np.ndarray]:
    """``[k+1, k+1]`` share of each bucket (row) that is truly each category (column).

    A validation feature counts in every bucket it was predicted into (no prediction: the
    ``other`` bucket); a feature the humans put in several categories splits its weight
    equally among them, and one in none is ``other``.
    """
    names = [*study.categories, OTHER]
    col = {n: i for i, n in enumerate(names)}
    weights = np.zeros((len(names), len(names)))
    for predicted, human, count in study.validation or ():
        truth = human or (OTHER,)
        for b in predicted or (OTHER,):
            for t in truth:
                weights[col[b], col[t]] += count / len(truth)
    totals = weights.sum(axis=1, keepdims=True)
    empty = [names[i] for i in np.nonzero(totals.ravel() == 0)[0]]
    if empty:
        raise _Degenerate("validation", f"no validation feature predicted in {empty}")
    return names, weights / totals


def general_system(study: Study) -> tuple[list[str], np.ndarray]:
    if study.other is None:
        raise InputError(study.source, OTHER, "general needs 'other' (a random matched-size set)")
    if not study.validation:
        raise InputError(study.source, "validation", "general needs the joint validation labels")
    names, comp = composition(study)
    sizes = np.array([*(b.n for b in study.categories.values()), study.other.n], dtype=float)
    return names, sizes[:, None] * comp


def system(study: Study, method: str) -> tuple[list[str], np.ndarray]:
    """Names and ``M`` (``[k, k]``) for ``method``."""
    if method == "naive":
        names = list(study.categories) + ([OTHER] if study.other else [])
        sizes = [*(b.n for b in study.categories.values()), *([study.other.n] if study.other else [])]
        return names, np.diag(np.array(sizes, dtype=float))
    if method == "two-bucket":
        return two_bucket_system(study)
    if method == "general":
        return general_system(study)
    raise InputError(study.source, "method", f"unknown method {method!r} (expected {METHODS})")


def solve(matrix: np.ndarray, rhs: np.ndarray, method: str) -> np.ndarray:
    """Exact solve for square systems, NNLS for ``general``; singular systems raise."""
    cond = float(np.linalg.cond(matrix))
    if not math.isfinite(cond) or cond > MAX_CONDITION:
        raise _Degenerate("categories", f"singular {method} system (condition number {cond:.3g}):"
                                        " the buckets' compositions cannot be told apart")
    if method == "general":
        return nnls(matrix, rhs)[0]
    return np.linalg.solve(matrix, rhs)


def estimate(study: Study, method: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Names, LPF vector and system matrix for one study."""
    names, matrix = system(study, method)
    return names, solve(matrix, deltas(study, names), method), matrix


# --- bootstrap --------------------------------------------------------------------------------

def _resample(study: Study, rng: np.random.Generator) -> Study:
    """A study whose validation counts are one multinomial draw from the observed ones and,
    if the study measured them, whose loss increases are one normal draw around the observed."""
    noise = {}
    if study.delta_covariance is not None:
        names, cov = study.delta_covariance
        noise = dict(zip(names, rng.multivariate_normal(np.zeros(len(names)), cov, method="eigh")))
    cats = {}
    for name, bucket in study.categories.items():
        conf = bucket.confusion
        if conf is not None:
            counts = np.array([conf.tp, conf.fp, conf.tn, conf.fn])
            bucket = replace(bucket, confusion=Confusion(*map(int, rng.multinomial(
                counts.sum(), counts / counts.sum()))))
        cats[name] = replace(bucket, ablated_loss=bucket.ablated_loss + noise.get(name, 0.0))
    other = study.other
    if other is not None:
        other = replace(other, ablated_loss=other.ablated_loss + noise.get(OTHER, 0.0))
    validation = study.validation
    if validation:
        counts = np.array([c for _, _, c in validation])
        draw = rng.multinomial(counts.sum(), counts / counts.sum())
        validation = tuple((p, h, int(k)) for (p, h, _), k in zip(validation, draw) if k > 0)
    return replace(study, categories=cats, other=other, validation=validation)


def bootstrap(study: Study, method: str, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, k]`` LPF draws; rows of NaN where a draw's system is degenerate."""
    rng = np.random.default_rng(seed)
    k = len(system(study, method)[0])
    draws = np.full((n_boot, k), np.nan)
    for i in range(n_boot):
        try:
            draws[i] = estimate(_resample(study, rng), method)[1]
        except _Degenerate:
            continue
    return draws


BOOTSTRAP = "percentile bootstrap, system re-solved per draw (degenerate draws dropped)"


def _interval(values: np.ndarray) -> tuple[list[float] | None, int]:
    """95% percentile interval of the finite draws and how many draws were not finite."""
    finite = values[np.isfinite(values)]
    ci = np.percentile(finite, [2.5, 97.5]).tolist() if len(finite) else None
    return ci, int(values.size - finite.size)


def _flags(value: float, ci: list[float] | None, method: str) -> list[str]:
    flags = ["negative"] if value < 0 else []
    if method == "general" and value == 0:
        flags.append("at_nnls_bound")  # NNLS cannot go below 0: a negative truth shows as 0
    if ci is not None and ci[0] <= 0 <= ci[1]:
        flags.append("ci_spans_zero")
    return flags


# --- the result -------------------------------------------------------------------------------

def correct(study: Study, method: str, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """``saeflow correct``: naive and corrected LPF per category, 95% bootstrap intervals,
    ratios to the first category (only where its LPF is positive) and the condition number."""
    try:
        names, lpf, matrix = estimate(study, method)
    except _Degenerate as err:
        raise InputError(study.source, err.field, err.problem) from None
    naive = dict(zip(*estimate(study, "naive")[:2]))
    draws = bootstrap(study, method, n_boot, seed)
    contam = _contamination_report(study, method, names)
    rhs = deltas(study, names)
    categories = {}
    # The naive estimate uses no human labels: only a measured covariance gives it an interval.
    measured = study.delta_covariance is not None
    has_ci = method != "naive" or measured
    for j, name in enumerate(names):
        ci, dropped = _interval(draws[:, j]) if has_ci else (None, None)
        bucket = study.categories.get(name) or study.other
        categories[name] = {"n_predicted": bucket.n, "delta_loss": float(rhs[j]),
                            "lpf_naive": float(naive[name]), "lpf_corrected": float(lpf[j]),
                            "contamination": contam.get(name), "ci95": ci,
                            "ci95_method": BOOTSTRAP if has_ci else None,
                            "ci95_n_dropped": dropped,  # degenerate draws left out
                            "flags": _flags(float(lpf[j]), ci, method)}
    ref = names[0]
    ratios = {}
    for j, name in enumerate(names[1:], 1):
        ok = draws[:, 0] > 0
        reported = bool(lpf[0] > 0)
        ratio_ci, dropped = (None, None)
        if reported and has_ci:
            ratio_ci, nonfinite = _interval(draws[ok, j] / draws[ok, 0])
            dropped = n_boot - int(ok.sum()) + nonfinite
        ratios[f"{name}/{ref}"] = {
            "naive": float(naive[name] / naive[ref]) if naive[ref] > 0 else None,
            "corrected": float(lpf[j] / lpf[0]) if reported else None,
            "ci95": ratio_ci,
            "ci95_method": BOOTSTRAP if reported and has_ci else None,
            # draws left out: degenerate, or the reference LPF not positive
            "ci95_n_dropped": dropped,
            "ci_draws": int(ok.sum()),  # draws where the reference LPF was positive
            "note": None if reported else f"not reported: corrected lpf of {ref} is not positive"}
    return {"method": method, "study": study.source, "baseline_loss": study.baseline_loss,
            "categories": categories, "ratios": ratios,
            "condition_number": float(np.linalg.cond(matrix)),
            "system": {"names": names, "matrix": matrix.tolist(), "rhs": rhs.tolist()},
            "bootstrap": {"n": n_boot, "seed": seed,
                          "n_failed": int(np.isnan(draws).any(axis=1).sum()),
                          "sources": ([] if method == "naive" else ["validation labels"])
                          + (["loss measurement"] if measured else [])}}


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


# The truth is measured on the same eval prompts as the buckets, so their prompt noise is shared
# and cancels in the error: an interval that resamples prompts too over-covers it.
GIVEN_PROMPTS = ("percentile bootstrap over the validation labels only, the loss increases held "
                 "at their measured values: the truth shares the eval prompts, so only the label "
                 "noise separates an estimate from it")
PLANTED = ("the keyword classifier's own contamination is small here, so this check barely tells "
           "the methods apart; the planted-noise validation (`snakemake validation`, "
           "correction/validation.json) plants contamination from 0 to 50% and scores bias, RMSE "
           "and coverage per method over replicates")


def compare_with_truth(results: Mapping[str, Mapping[str, Any]], truth: Mapping[str, float],
                       study: Study | None = None, n_boot: int = 2000, seed: int = 0
                       ) -> dict[str, Any]:
    """Per method and category: naive and corrected error against the true LPF, and whether
    the corrected 95% interval covers it (the dict for ``correction/summary.json``).

    With ``study`` (the one the results solved), coverage is also judged by an interval given
    the prompts (:data:`GIVEN_PROMPTS`), the one that matches a same-prompts truth; the full
    interval (labels and prompts) stays, marked as over-covering for this comparison."""
    def errors(estimate: float, true: float) -> dict[str, Any]:
        return {"estimate": estimate, "abs_error": abs(estimate - true),
                "rel_error": abs(estimate - true) / abs(true) if true else None}

    def covers(ci: Sequence[float] | None, value: float) -> bool | None:
        return None if ci is None else bool(ci[0] <= value <= ci[1])

    fixed = replace(study, delta_covariance=None) if study is not None else None
    summary: dict[str, Any] = {"true_lpf": dict(truth), "methods": {}, "planted_noise": PLANTED}
    for method, result in results.items():
        given = None
        if fixed is not None and method != "naive":  # naive uses no labels: nothing to resample
            given = bootstrap(fixed, method, n_boot, seed)
            given_names = system(fixed, method)[0]
        rows = {}
        for name, cat in result["categories"].items():
            if name not in truth:
                continue
            ci, true = cat["ci95"], truth[name]
            corrected = {**errors(cat["lpf_corrected"], true), "ci95": ci,
                         "covers_truth": covers(ci, true)}
            if study is not None:
                ci_given, dropped = ((None, None) if given is None
                                     else _interval(given[:, given_names.index(name)]))
                corrected |= {"ci95_given_prompts": ci_given, "ci95_given_prompts_n_dropped": dropped,
                              "covers_truth_given_prompts": covers(ci_given, true),
                              # no classifier error in the sample: nothing to resample, so
                              # the bucket's missed or extra members show as uncovered error
                              "given_prompts_degenerate": (None if ci_given is None
                                                           else bool(ci_given[1] - ci_given[0] <= 0))}
            rows[name] = {"true": true, "contamination": cat.get("contamination"),
                          "naive": errors(cat["lpf_naive"], true), "corrected": corrected,
                          # how far the correction moved the estimate, in units of the truth
                          "correction_shift": (abs(cat["lpf_corrected"] - cat["lpf_naive"]) / abs(true)
                                               if true else None)}
        ratios = {}
        for key, ratio in result["ratios"].items():
            num, ref = key.split("/")
            if num in truth and ref in truth and truth[ref] > 0:
                true_ratio = truth[num] / truth[ref]
                ci = ratio["ci95"]
                ratios[key] = {"true": true_ratio, "naive": ratio["naive"],
                               "corrected": ratio["corrected"], "ci95": ci,
                               "covers_truth": covers(ci, true_ratio)}
        summary["methods"][method] = {"categories": rows, "ratios": ratios}
    if study is not None:
        summary["intervals"] = {"ci95_given_prompts": GIVEN_PROMPTS,
                                "ci95": "labels and prompts resampled: wider than the error "
                                        "against a same-prompts truth, so it over-covers here",
                                "n_boot": n_boot, "seed": seed}
    return summary


# --- the rules' entry points ------------------------------------------------------------------

def correct_stage(study_path: str, method: str, cfg: Mapping[str, Any], out: str) -> None:
    """Rule ``correct``: :func:`correct` the study file ``study_path`` (correction/study.yaml)
    by ``method``; the result to ``out`` (correction/{method}.json). ``cfg``:
    ``config["labels"]["correction"]`` ({n_boot, seed, ...})."""
    from saeflow.core.io import write_json
    from saeflow.labels.study import load_study

    result = correct(load_study(study_path), method, cfg["n_boot"], cfg["seed"])
    write_json(out, result, {**cfg, "method": method})


def correction_summary_stage(results: Mapping[str, str], ablation: str, study_path: str,
                              cfg: Mapping[str, Any], out: str) -> None:
    """Rule ``correction_summary`` (toy only): :func:`compare_with_truth` of each method's
    result file (``results``: method -> correction/{method}.json, in config order) against the
    true LPF of ``ablation`` (ablation.json), with intervals given the prompts re-drawn from
    ``study_path`` (correction/study.yaml); ``cfg``: ``labels.correction``; the summary to ``out``."""
    from saeflow.core.io import read_json, write_json
    from saeflow.labels.study import load_study

    loaded = {m: read_json(p) for m, p in results.items()}
    summary = compare_with_truth(loaded, true_lpf(read_json(ablation)), load_study(study_path),
                                 cfg["n_boot"], cfg["seed"])
    write_json(out, summary, {"methods": list(results), "correction": dict(cfg)})
