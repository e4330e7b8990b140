"""Planted label noise, measured and scored: the loss-per-feature corrections against
classifiers with known errors.

The planted classifiers (:mod:`saeflow.labels.planting`: each bucket keeps a share
``1 - false_negative_rate`` of its category's true members and takes contaminants making up
a share ``contamination`` of it, from the other categories or from features in no category)
are really ablated and measured (:func:`measure`: one batched
:func:`saeflow.labels.ablation.ablation_losses`, with several random ``other`` draws pooled),
a validation sample is labelled from the truth (as the oracle labels a human's sample), and
every method is solved by :func:`saeflow.labels.correction.correct`, the code the pipeline
runs (:func:`solve_replicate`). The truth is measured as well, not assumed: ablating exactly
the true members of a category, its LPF is the loss increase over their number
(:func:`true_lpf`).

The truth shares the buckets' eval prompts, so most of their prompt noise cancels in the
error, and the pipeline's interval (labels and all of the prompt noise) would cover a biased
method. Coverage is scored by an interval for the same-prompts truth instead
(:func:`same_prompt_intervals`, :data:`SAME_PROMPTS`): the same label draws, with only the
prompt noise the estimate does not share with the truth. Over replicates, per condition,
method and category: bias, RMSE and the coverage of the true LPF by that interval, with a
Wilson interval on the coverage (the Monte-Carlo error of checking it with few replicates;
:func:`score`, :func:`summarise`). Conditions that break a method's model of a bucket are
marked (``assumption_violated``): there the method is expected to fail, not to cover
(:func:`verdict`). :func:`validate` is the whole check, :func:`validate_correction_stage` the
rule.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from saeflow.core.errors import InputError
from saeflow.labels.ablation import (AblationSettings, EvalSet, ablation_losses,
                                     category_feature_sets, pool_draws)
from saeflow.labels.planting import (MEMBERS, Condition, Replicate, ValidationConfig, conditions,
                                     oracle_validation, plan)
from saeflow.labels.study import OTHER, Study

if TYPE_CHECKING:
    from saeflow.core.bundle import ModelSAEs

log = logging.getLogger(__name__)

# Random draws whose mean stands for the true LPF of features in no category: a set of a few
# features from a pool of very unequal ones (most all but dead) is a noisy stand-in.
TRUE_OTHER_DRAWS = 8
TRUE = "truth:"  # prefix of a category's true set among a replicate's measured sets
# What each method takes a bucket to be made of; a condition outside it is marked violated.
ASSUMES = {
    "naive": "a bucket holds only its own category (no contamination)",
    "two-bucket": "exactly two categories, and each bucket's contaminants are members of the "
                  "other category",
    "general": "the validation sample is a uniform draw of the features, so its compositions "
               "stand for the buckets'; every LPF is >= 0 (non-negative least squares)",
}
# Not planted, so no condition marks it: the validation measures how much it costs.
SHARED_ASSUMPTION = ("ablation effects add up over features, and the members of a category in a "
                     "bucket have that category's mean LPF")
TRUTH_NOTE = ("measured, not assumed: the loss increase of ablating exactly the true members of "
              "the category together, divided by their number, on the same eval prompts")
SAME_PROMPTS = ("ci95 (scored): the method's label draws (correct's, same seed), the loss "
                "increases drawn jointly with the truth's on the same prompts and the truth's "
                "draw subtracted: only the prompt noise the estimate does not share with the "
                "truth; ci95_in_bucket: the same against the members the bucket held; ci95_full: "
                "the pipeline's interval (labels and all prompt noise), which over-covers a "
                "same-prompts truth (coverage_full)")


def violation(method: str, condition: Condition, n_categories: int) -> str | None:
    """Why ``condition`` breaks ``method``'s model of a bucket (:data:`ASSUMES`), or None."""
    if method == "two-bucket" and n_categories != 2:
        return f"two-bucket needs exactly two categories, the config has {n_categories}"
    if condition.contamination == 0:
        return None
    if method == "naive":
        return "the buckets are contaminated"
    if method == "two-bucket" and condition.source == "other":
        return "contaminants come from 'other', which two-bucket counts as the other category"
    return None

@dataclass(frozen=True)
class ValidationSettings:
    """Everything :func:`validate` is configured by, built once: ``config``
    (``labels.validation``), ``ablation`` (``labels.ablation``: its eval mode, device, batch
    size and ``other`` size), the correction ``methods`` (``labels.correction.methods``) and
    ``sample_n``, the size of the human sample the oracle's mirrors (``labels.sample.n``)."""

    config: ValidationConfig
    ablation: AblationSettings
    methods: tuple[str, ...]
    sample_n: int

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> ValidationSettings:
        """From the rule's params ``validation``, ``ablation``, ``sample`` and ``methods``."""
        return cls(ValidationConfig.from_dict(values["validation"], source),
                   AblationSettings.from_dict(values["ablation"], source),
                   tuple(values["methods"]), int(values["sample"]["n"]))


@dataclass(frozen=True)
class Measurement:
    """One batched :func:`ablation_losses` over every distinct set (``result``, with its
    ``seconds``), the covariance ``[k, k]`` of its k increases and each set's row in it."""

    result: Mapping[str, Any]
    cov: np.ndarray
    index: Mapping[str, int]

    def select(self, names: Mapping[str, str]) -> dict[str, Any]:
        """An :func:`ablation_losses`-shaped result holding the measured sets ``names.values()``
        under the names ``names.keys()`` (with their covariance block)."""
        rows = [self.index[m] for m in names.values()]
        return {**self.result, "sets": {n: self.result["sets"][m] for n, m in names.items()},
                "delta_covariance": {"names": list(names),
                                     "matrix": self.cov[np.ix_(rows, rows)].tolist()}}


def measure(model: Any, sae: Any, eval_set: EvalSet, replicates: Sequence[Replicate],
            truth: Mapping[str, Sequence[int]], batch_size: int, sets_per_pass: int
            ) -> tuple[Measurement, dict[str, str], list[dict[str, str]]]:
    """One batched :func:`ablation_losses` over every distinct set, the true sets ``truth``
    among them; returns it, the true sets' names -> the measured set's name, and the same per
    replicate (a set planted twice is measured once)."""
    unique: dict[tuple[int, ...], str] = {}

    def name_of(features: Sequence[int]) -> str:
        return unique.setdefault(tuple(sorted(set(map(int, features)))), f"set{len(unique)}")

    truth_names = {c: name_of(m) for c, m in truth.items()}
    names = [{n: name_of(s) for n, s in rep.sets.items()} for rep in replicates]
    start = time.perf_counter()
    result = ablation_losses(model, sae, eval_set, {v: list(k) for k, v in unique.items()},
                             batch_size=batch_size, sets_per_pass=sets_per_pass)
    result["seconds"] = time.perf_counter() - start
    log.info("measured %d distinct ablations in %.1f s", len(unique), result["seconds"])
    cov = np.asarray(result["delta_covariance"]["matrix"], dtype=float)
    index = {n: i for i, n in enumerate(result["delta_covariance"]["names"])}
    return Measurement(result, cov, index), truth_names, names


def true_lpf(measured: Measurement, truth_names: Mapping[str, str]
             ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Each category's measured truth, ``delta / n`` of its true members ablated together, and
    that of features in no category (draws ``other@i`` pooled; not scored, but a negative one
    breaks general's non-negativity)."""
    sets = pool_draws(measured.select(truth_names), OTHER)["sets"]
    out = {}
    for name, entry in sets.items():
        n = entry["n_features"]
        out[name] = {"lpf": entry["delta"] / n, "lpf_se": entry["delta_se"] / n,
                     "delta": entry["delta"], "n_members": n, "how": TRUTH_NOTE}
    return out, {**out.pop(OTHER), "n_draws": sets[OTHER]["draws"]["n"], "how": "the mean "
                 "of random draws of features in no category, each ablated alone; delta / n"}


def same_prompt_intervals(study: Study, method: str, joint: Mapping[str, Any],
                          targets: Mapping[str, Mapping[str, tuple[str, int]]], n_draws: int,
                          seed: int) -> dict[str, dict[str, list[float] | None]]:
    """Per category and target, the 95% interval for a target measured on the same prompts
    (:data:`SAME_PROMPTS`). ``joint``: ``{names, matrix}``, the covariance of the buckets' and
    the targets' loss increases; ``targets``: category -> target -> (its set in ``joint``, its
    size). The label draws are :func:`correct`'s (same seed); the loss noise is drawn jointly
    for buckets and targets, and each target's own ``noise / size`` is subtracted."""
    from saeflow.labels.correction import estimate, percentile_interval, posterior_draws, system

    names = system(study, method)[0]
    index = {n: i for i, n in enumerate(joint["names"])}
    noise = np.random.default_rng([seed, 1]).multivariate_normal(
        np.zeros(len(index)), np.asarray(joint["matrix"], dtype=float), n_draws, method="eigh")
    draws = posterior_draws(study, method, n_draws, seed, noise[:, [index[n] for n in names]])
    lpf = estimate(study, method)[1]
    return {c: {t: percentile_interval(draws[:, j] - noise[:, index[s]] / size, lpf[j])[0]
                for t, (s, size) in sets.items()}
            for c, sets in targets.items() for j in [names.index(c)]}


def solve_replicate(measured: Measurement, names: Mapping[str, str], rep: Replicate,
                    truth: Mapping[str, Sequence[int]], truth_names: Mapping[str, str],
                    records: Sequence[Mapping[str, Any]], settings: ValidationSettings
                    ) -> dict[str, Any]:
    """One planted classifier through the pipeline's own study and correction: its measured
    buckets (``other`` draws pooled), the oracle's sample, each method's LPF, the pipeline's
    95% interval and those scored (:func:`same_prompt_intervals`; or the one-line reason it
    could not be solved). ``truth_names``: each category's true set's measured name."""
    from saeflow.labels.correction import correct
    from saeflow.labels.study import parse_study, study_from_results

    ablation = pool_draws(measured.select({**names, **{f"{TRUE}{c}": truth_names[c]
                                                       for c in truth}}), OTHER)
    agreements, rows = oracle_validation({c: rep.sets[c] for c in truth}, truth, records,
                                         settings.sample_n, rep.seed)
    study = parse_study(study_from_results(ablation, agreements, rows),
                        f"validation {rep.condition.key} #{rep.index}")
    sets = ablation["sets"]
    targets = {c: {"truth": (f"{TRUE}{c}", sets[f"{TRUE}{c}"]["n_features"]),
                   "in_bucket": (f"{MEMBERS}{c}", sets[f"{MEMBERS}{c}"]["n_features"])}
               for c in truth}
    estimates: dict[str, Any] = {}
    for method in settings.methods:
        try:
            solved = correct(study, method, settings.config.n_boot, rep.seed)
        except InputError as err:  # a singular system: counted as a failure of the method
            estimates[method] = {"error": str(err)}
            continue
        scored = same_prompt_intervals(study, method, ablation["delta_covariance"], targets,
                                       settings.config.n_boot, rep.seed)
        estimates[method] = {n: {"estimate": c["lpf_corrected"], "ci95_full": c["ci95"],
                                 **({"ci95": scored[n]["truth"], "ci95_in_bucket":
                                     scored[n]["in_bucket"]} if n in scored else {}),
                                 **({"flags": c["flags"]} if c["flags"] else {})}
                             for n, c in solved["categories"].items()}
    members = {c: sets[f"{MEMBERS}{c}"] for c in truth}
    return {"condition": rep.condition.key, "replicate": rep.index, "seed": rep.seed,
            "n_predicted": {c: len(rep.sets[c]) for c in truth},
            "lpf_in_bucket": {c: m["delta"] / m["n_features"] for c, m in members.items()},
            "realised_contamination": rep.realised, "estimates": estimates}


def _coverage(intervals: Sequence[Sequence[float] | None], targets: Sequence[float]) -> dict[str, Any]:
    """Share of the intervals holding their target (to float rounding: an interval's end can
    be the estimate, which a target equals when nothing is planted), with its Wilson 95%
    interval."""
    from saeflow.labels.agreement import wilson_interval

    pairs = [(ci, t) for ci, t in zip(intervals, targets) if ci is not None]
    tol = [1e-9 * max(abs(ci[0]), abs(ci[1])) for ci, _ in pairs]
    k = sum(bool(ci[0] - e <= t <= ci[1] + e) for (ci, t), e in zip(pairs, tol))
    return {"coverage": k / len(pairs) if pairs else None,
            "coverage_ci95": wilson_interval(k, len(pairs)), "n_intervals": len(pairs)}


def score(estimates: Sequence[float], intervals: Sequence[Sequence[float] | None], true: float,
          in_bucket: Sequence[float], in_bucket_intervals: Sequence[Sequence[float] | None] | None = None,
          full_intervals: Sequence[Sequence[float] | None] | None = None) -> dict[str, Any]:
    """Bias (with its Monte-Carlo standard error), relative bias, RMSE and the coverage of
    ``true`` by the intervals (Wilson 95% interval on it); ``in_bucket``: the LPF of the true
    members each replicate's bucket held, whose coverage (by ``in_bucket_intervals``, default
    ``intervals``) and spread around ``true`` tell the methods' own error from the luck of
    which members the classifier kept; ``full_intervals``: the pipeline's, whose coverage of
    ``true`` is reported as ``coverage_full`` (over-covering a same-prompts truth)."""
    err = np.asarray(estimates, dtype=float) - true
    n = len(err)
    cover = _coverage(intervals, [true] * n)
    ci = cover["coverage_ci95"]
    bias = float(err.mean()) if n else None
    inside = np.asarray(in_bucket, dtype=float)
    widths = [c[1] - c[0] for c in intervals if c is not None]
    full = None if full_intervals is None else _coverage(full_intervals, [true] * n)["coverage"]
    return {"n": n, "bias": bias,
            "bias_se": float(err.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
            "rel_bias": bias / true if bias is not None and true else None,
            "rmse": float(np.sqrt((err**2).mean())) if n else None, **cover,
            "nominal_in_coverage_ci95": None if ci is None else bool(ci[0] <= 0.95 <= ci[1]),
            "mean_ci_width": float(np.mean(widths)) if widths else None, "coverage_full": full,
            "in_bucket": {**_coverage(intervals if in_bucket_intervals is None
                                      else in_bucket_intervals, inside),
                          "bias": float((np.asarray(estimates) - inside).mean()) if n else None,
                          "spread_around_true": float(np.sqrt(((inside - true) ** 2).mean())) if n else None}}


def _score_cells(cells: Sequence[Mapping[str, Any]], true: float, in_bucket: Sequence[float]
                 ) -> dict[str, Any]:
    """:func:`score` of one category's estimates (``solve_replicate``'s cells) over replicates."""
    return score([x["estimate"] for x in cells], [x["ci95"] for x in cells], true, in_bucket,
                 [x["ci95_in_bucket"] for x in cells], [x["ci95_full"] for x in cells])


def summarise(solved: Sequence[Mapping[str, Any]], truth: Mapping[str, Mapping[str, Any]],
              conds: Sequence[Condition], methods: Sequence[str]) -> list[dict[str, Any]]:
    """Per condition: realised contamination, and per method whether the condition violates
    its assumption, how many replicates it solved and each category's :func:`score`."""
    out = []
    for cond in conds:
        reps = [r for r in solved if r["condition"] == cond.key]
        entry = {"key": cond.key, "contamination": cond.contamination, "source": cond.source,
                 "n_replicates": len(reps),
                 "realised_contamination": {c: float(np.mean([r["realised_contamination"][c]
                                                              for r in reps])) for c in truth},
                 "methods": {}}
        for method in methods:
            ok = [r for r in reps if "error" not in r["estimates"][method]]
            errors = sorted({r["estimates"][method]["error"] for r in reps
                             if "error" in r["estimates"][method]})
            why = violation(method, cond, len(truth))
            entry["methods"][method] = {
                "assumption": ASSUMES[method], "assumption_violated": why is not None,
                "violation": why, "n_solved": len(ok), "n_failed": len(reps) - len(ok),
                # replicates where NNLS held some LPF at 0: a negative truth shows as 0 there
                "n_at_nnls_bound": sum(any("at_nnls_bound" in e.get("flags", ())
                                           for e in r["estimates"][method].values()) for r in ok),
                "failures": errors[:5],
                "categories": {c: {"true_lpf": t["lpf"],
                                   "outside_valid_range": _outside_range(method, t["lpf"]),
                                   **_score_cells([r["estimates"][method][c] for r in ok], t["lpf"],
                                                  [r["lpf_in_bucket"][c] for r in ok])}
                               for c, t in truth.items()}}
        out.append(entry)
    return out


def _outside_range(method: str, true_lpf: float) -> str | None:
    """Why a category's truth is outside what ``method`` can estimate, or None: general
    solves by non-negative least squares, so a negative LPF (ablating the category lowers
    the loss) can only come out as 0."""
    if method == "general" and true_lpf < 0:
        return "the measured true LPF is negative; general fits LPF >= 0 (NNLS)"
    return None


def verdict(summary: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Per method: the conditions that hold or break its assumption, and the (condition,
    category) cells where it holds yet the coverage's Wilson interval lies below 95%: there
    the method fails on what no condition plants (:data:`SHARED_ASSUMPTION`), or its
    intervals are too narrow."""
    out = {}
    for method in methods:
        rows = [(c["key"], c["methods"][method]) for c in summary]
        holds = [key for key, row in rows if not row["assumption_violated"]]
        under = [f"{key}:{cat}" for key, row in rows if not row["assumption_violated"]
                 for cat, cell in row["categories"].items()
                 if cell["coverage_ci95"] is not None and cell["coverage_ci95"][1] < 0.95
                 and not cell["outside_valid_range"]]
        outside = sorted({cat for _, row in rows for cat, cell in row["categories"].items()
                          if cell["outside_valid_range"]})
        out[method] = {"assumption_holds_in": holds, "outside_valid_range_for": outside,
                       "assumption_violated_in": [key for key, row in rows if row["assumption_violated"]],
                       "undercovers_where_assumption_holds": under,
                       "covers_nominally_where_assumption_holds": not under}
    return out


def validate(model: Any, sae: Any, eval_set: EvalSet, truth: Mapping[str, Sequence[int]],
             records: Sequence[Mapping[str, Any]], settings: ValidationSettings) -> dict[str, Any]:
    """The whole check (the dict for ``correction/validation.json``). ``truth``: category ->
    true members; ``records``: the described features (the population planted from and
    sampled)."""
    cfg, methods, other_size = settings.config, settings.methods, settings.ablation.other_size
    truth = {c: sorted(set(map(int, m))) for c, m in truth.items()}
    features = [int(r["feature_index"]) for r in records]
    replicates = plan(truth, features, cfg, other_size)
    truth_sets = category_feature_sets(truth, features, cfg.seed, None, other_size, TRUE_OTHER_DRAWS)
    measured, truth_names, names = measure(model, sae, eval_set, replicates, truth_sets,
                                           settings.ablation.batch_size, cfg.sets_per_pass)
    truth_lpf, truth_other = true_lpf(measured, truth_names)
    start = time.perf_counter()
    solved = [solve_replicate(measured, n, rep, truth, truth_names, records, settings)
              for rep, n in zip(replicates, names)]
    log.info("solved %d replicates x %d methods in %.1f s", len(solved), len(methods),
             time.perf_counter() - start)
    summary = summarise(solved, truth_lpf, conditions(cfg.contamination, cfg.sources), methods)
    result = measured.result
    return {"true_lpf": truth_lpf, "true_lpf_other": truth_other,
            "shared_assumption": SHARED_ASSUMPTION, "intervals": SAME_PROMPTS,
            "verdict": verdict(summary, methods), "conditions": summary,
            "design": {"n_features": len(features), "n_members": {c: len(m) for c, m in truth.items()},
                       "sample_n": min(settings.sample_n, len(records)), "other_size": other_size,
                       **{k: getattr(cfg, k) for k in ("contamination", "sources",
                                                       "false_negative_rate", "replicates",
                                                       "other_draws", "n_boot", "seed")}},
            "measurement": {k: result[k] for k in ("model_loss", "baseline_loss", "n_targets",
                                                   "n_prompts", "hook_name")}
            | {"n_ablations": len(measured.index), "seconds": result["seconds"]},
            "replicates": solved}


def validate_correction_stage(models: ModelSAEs, activations: str | Path, descriptions: str | Path,
                              membership: str | Path, settings: Mapping[str, Any],
                              out: str | Path) -> None:
    """Rule ``validate_correction`` (toy only): :func:`validate` with the model and the SAE of
    the labelled hook (``models``, one hook) on the eval set of ``activations``, the true
    members of ``membership`` (truth_membership.json) and the described features of
    ``descriptions``; the result to ``out`` (correction/validation.json). ``settings``: the
    rule's params ``ablation``, ``sample``, ``validation`` and ``methods`` (the config's
    ``labels.ablation``, ``labels.sample``, ``labels.validation`` and
    ``labels.correction.methods``; :meth:`ValidationSettings.from_dict`)."""
    from saeflow.core.io import read_json, write_json
    from saeflow.core.runtime import resolve_device, seed_everything
    from saeflow.formats.descriptions import read_descriptions
    from saeflow.labels.ablation import eval_set_from_h5

    run = ValidationSettings.from_dict(settings)
    seed_everything(run.config.seed)
    device = resolve_device(run.ablation.device)
    model, (sae,) = models.load(device)
    result = validate(model, sae, eval_set_from_h5(activations, run.ablation.eval),
                      read_json(membership)["members"], read_descriptions(descriptions), run)
    write_json(out, result, {"validation": dict(settings["validation"]),
                             "ablation": dict(settings["ablation"]),
                             "sample": dict(settings["sample"]),
                             "methods": list(settings["methods"]), "hook": models.hooks[0]})
