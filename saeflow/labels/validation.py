"""Planted label noise: the loss-per-feature corrections against classifiers with known errors.

In the toy world every feature's true category is known (truth_membership.json), so a
classifier can be *planted*: each category's bucket keeps a share ``1 - false_negative_rate``
of its true members and takes contaminants making up a share ``contamination`` of it, drawn
from the other categories' members (source ``category``) or from features in no category
(source ``other``). For each planted classifier the buckets are really ablated and measured
(:func:`saeflow.labels.ablation.ablation_losses`, with several random ``other`` draws pooled),
a validation sample is labelled from the truth (as the oracle labels a human's sample), and
every method is solved with its 95% interval by :func:`saeflow.labels.correction.correct`, the
code the pipeline runs. The truth is measured as well, not assumed: ablating exactly the true
members of a category, its LPF is the loss increase over their number.

Over replicates, per condition, method and category: bias, RMSE and the coverage of the true
LPF by the 95% interval, with a Wilson interval on the coverage (the Monte-Carlo error of
checking it with few replicates). Conditions that break a method's model of a bucket are
marked (``assumption_violated``): there the method is expected to fail, not to cover.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from saeflow.core.errors import InputError
from saeflow.labels.ablation import EvalSet, ablation_losses, category_feature_sets, pool_draws
from saeflow.labels.study import OTHER

log = logging.getLogger(__name__)

SOURCES = ("category", "other")
MEMBERS = "members:"  # prefix of the set of a bucket's true members
# Random draws whose mean stands for the true LPF of features in no category: a set of a few
# features from a pool of very unequal ones (most all but dead) is a noisy stand-in.
TRUE_OTHER_DRAWS = 8
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


@dataclass(frozen=True)
class Condition:
    """One planted noise level: ``contamination`` share of each bucket from ``source``."""

    contamination: float
    source: str  # "category" or "other"; "none" when nothing is planted (contamination 0)

    @property
    def key(self) -> str:
        return f"{self.source}@{self.contamination:g}"


def conditions(levels: Sequence[float], sources: Sequence[str]) -> list[Condition]:
    """Level 0 once (nothing planted, so no source), every other level once per source."""
    if set(sources) - set(SOURCES):
        raise InputError("config", "labels.validation.sources", f"unknown sources in {list(sources)}")
    out = [Condition(0.0, "none")] if any(level == 0 for level in levels) else []
    return out + [Condition(float(level), s) for level in sorted(levels) if level > 0 for s in sources]


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


def kept_members(truth: Mapping[str, Sequence[int]], false_negative_rate: float,
                 rng: np.random.Generator) -> dict[str, list[int]]:
    """The true members each category's bucket keeps: a random ``1 - false_negative_rate``
    of them (at least one); the rest are the planted false negatives."""
    kept = {}
    for name, own in truth.items():
        own = sorted(set(map(int, own)))
        if not own:
            raise InputError("truth_membership", f"members.{name}", "no true member to plant")
        picked = rng.choice(own, max(1, round((1 - false_negative_rate) * len(own))), replace=False)
        kept[name] = sorted(int(f) for f in picked)
    return kept


def plant_classifier(truth: Mapping[str, Sequence[int]], features: Sequence[int],
                     condition: Condition, kept: Mapping[str, Sequence[int]],
                     rng: np.random.Generator) -> dict[str, list[int]]:
    """Each category's predicted bucket: its ``kept`` members plus ``round(r * kept / (1 -
    r))`` contaminants from ``condition.source``, so that they are a share ``r`` of the bucket
    (fewer where the pool is smaller)."""
    members = {name: set(map(int, m)) for name, m in truth.items()}
    nowhere = sorted(set(map(int, features)) - set().union(*members.values()))
    r = condition.contamination
    buckets = {}
    for name, own in kept.items():
        n_fp = round(r * len(own) / (1 - r))
        pool = nowhere if condition.source == "other" else sorted(
            set().union(*(m for o, m in members.items() if o != name)) - members[name])
        fp = rng.choice(pool, min(n_fp, len(pool)), replace=False) if n_fp and pool else []
        buckets[name] = sorted(int(f) for f in [*own, *fp])
    return buckets


def oracle_validation(buckets: Mapping[str, Sequence[int]], truth: Mapping[str, Sequence[int]],
                      records: Sequence[Mapping[str, Any]], n: int, seed: int
                      ) -> tuple[dict[str, dict[str, int]], list[dict[str, Any]]]:
    """The sample a human would label (``saeflow label``'s draw of ``n`` described features),
    labelled from the truth: each category's confusion of the planted classifier against it,
    and the joint rows the general method reads."""
    from saeflow.formats.labels import NOT_RELATED, RELATED
    from saeflow.labels.agreement import confusion, joint_validation
    from saeflow.labels.labelling import sample_features

    sample = [r["feature_index"] for r in sample_features(records, min(n, len(records)), seed)]

    def labelled(sets: Mapping[str, Sequence[int]]) -> dict[str, list[dict[str, Any]]]:
        return {c: [{"feature_index": f, "label": RELATED if f in members else NOT_RELATED}
                    for f in sample] for c, s in sets.items() for members in [set(s)]}

    model, human = labelled(buckets), labelled(truth)
    agreements = {c: confusion(np.array([r["label"] == RELATED for r in human[c]], dtype=int),
                               np.array([r["label"] == RELATED for r in model[c]], dtype=int))
                  for c in buckets}
    return agreements, joint_validation(model, human)


@dataclass
class Replicate:
    """One planted classifier: its buckets, `other` draws (other@i), kept members (members:<c>)
    and the realised share of each bucket that is not its category."""

    condition: Condition
    index: int
    seed: int
    sets: dict[str, list[int]]
    realised: dict[str, float]


def plan(truth: Mapping[str, Sequence[int]], features: Sequence[int], cfg: Mapping[str, Any],
         other_size: int | None) -> list[Replicate]:
    """Every replicate's planted buckets and ``other`` draws. Replicate i keeps the same true
    members in every condition (common random numbers: conditions differ only in their
    contaminants, so their contrasts are sharper, and the kept members are measured once);
    contaminants and draws are seeded by ``cfg["seed"]``, the replicate and the condition."""
    out = []
    kept = [kept_members(truth, cfg["false_negative_rate"], np.random.default_rng([cfg["seed"], i]))
            for i in range(cfg["replicates"])]
    for condition in conditions(cfg["contamination"], cfg["sources"]):
        source = SOURCES.index(condition.source) + 1 if condition.source in SOURCES else 0
        for i in range(cfg["replicates"]):
            rng = np.random.default_rng([cfg["seed"], i, source, round(condition.contamination * 1000)])
            buckets = plant_classifier(truth, features, condition, kept[i], rng)
            seed = int(rng.integers(2**31))
            sets = category_feature_sets(buckets, features, seed, None, other_size, cfg["other_draws"])
            # The true members a bucket holds, measured alone: what its LPF is made of before
            # any method's error (a random part of the category, so not its exact mean).
            sets.update({f"{MEMBERS}{c}": m for c, m in kept[i].items()})
            realised = {c: len(set(b) - set(truth[c])) / len(b) for c, b in buckets.items()}
            out.append(Replicate(condition, i, seed, sets, realised))
    return out


def _select(result: Mapping[str, Any], cov: np.ndarray, index: Mapping[str, int],
            names: Mapping[str, str]) -> dict[str, Any]:
    """An :func:`ablation_losses`-shaped result holding the measured sets ``names.values()``
    under the names ``names.keys()`` (with their covariance block)."""
    rows = [index[m] for m in names.values()]
    return {**result, "sets": {n: result["sets"][m] for n, m in names.items()},
            "delta_covariance": {"names": list(names), "matrix": cov[np.ix_(rows, rows)].tolist()}}


def measure(model: Any, sae: Any, eval_set: EvalSet, replicates: Sequence[Replicate],
            truth: Mapping[str, Sequence[int]], batch_size: int, sets_per_pass: int
            ) -> tuple[dict[str, Any], dict[str, str], list[dict[str, str]]]:
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
    return result, truth_names, names


def true_lpf(result: Mapping[str, Any], cov: np.ndarray, index: Mapping[str, int],
             truth_names: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Each category's measured truth, ``delta / n`` of its true members ablated together, and
    that of features in no category (draws ``other@i`` pooled; not scored, but a negative one
    breaks general's non-negativity)."""
    measured = pool_draws(_select(result, cov, index, truth_names), OTHER)["sets"]
    out = {}
    for name, entry in measured.items():
        n = entry["n_features"]
        out[name] = {"lpf": entry["delta"] / n, "lpf_se": entry["delta_se"] / n,
                     "delta": entry["delta"], "n_members": n, "how": TRUTH_NOTE}
    return out, {**out.pop(OTHER), "n_draws": measured[OTHER]["draws"]["n"], "how": "the mean "
                 "of random draws of features in no category, each ablated alone; delta / n"}


def solve_replicate(result: Mapping[str, Any], cov: np.ndarray, index: Mapping[str, int],
                    names: Mapping[str, str], rep: Replicate, truth: Mapping[str, Sequence[int]],
                    records: Sequence[Mapping[str, Any]], sample_n: int, methods: Sequence[str],
                    n_boot: int) -> dict[str, Any]:
    """One planted classifier through the pipeline's own study and correction: its measured
    buckets (``other`` draws pooled), the oracle's sample, each method's LPF and 95% interval
    (or the one-line reason it could not be solved)."""
    from saeflow.labels.correction import correct
    from saeflow.labels.study import parse_study, study_from_results

    ablation = pool_draws(_select(result, cov, index, names), OTHER)
    agreements, rows = oracle_validation({c: rep.sets[c] for c in truth}, truth, records,
                                         sample_n, rep.seed)
    study = parse_study(study_from_results(ablation, agreements, rows),
                        f"validation {rep.condition.key} #{rep.index}")
    estimates: dict[str, Any] = {}
    for method in methods:
        try:
            solved = correct(study, method, n_boot, rep.seed)
        except InputError as err:  # a singular system: counted as a failure of the method
            estimates[method] = {"error": str(err)}
            continue
        estimates[method] = {n: {"estimate": c["lpf_corrected"], "ci95": c["ci95"],
                                 **({"flags": c["flags"]} if c["flags"] else {})}
                             for n, c in solved["categories"].items()}
    members = {c: ablation["sets"][f"{MEMBERS}{c}"] for c in truth}
    return {"condition": rep.condition.key, "replicate": rep.index, "seed": rep.seed,
            "n_predicted": {c: len(rep.sets[c]) for c in truth},
            "lpf_in_bucket": {c: m["delta"] / m["n_features"] for c, m in members.items()},
            "realised_contamination": rep.realised, "estimates": estimates}


def _coverage(intervals: Sequence[Sequence[float] | None], targets: Sequence[float]) -> dict[str, Any]:
    """Share of the intervals holding their target, with its Wilson 95% interval."""
    from saeflow.labels.agreement import wilson_interval

    pairs = [(ci, t) for ci, t in zip(intervals, targets) if ci is not None]
    k = sum(bool(ci[0] <= t <= ci[1]) for ci, t in pairs)
    return {"coverage": k / len(pairs) if pairs else None,
            "coverage_ci95": wilson_interval(k, len(pairs)), "n_intervals": len(pairs)}


def score(estimates: Sequence[float], intervals: Sequence[Sequence[float] | None], true: float,
          in_bucket: Sequence[float]) -> dict[str, Any]:
    """Bias (with its Monte-Carlo standard error), relative bias, RMSE and the coverage of
    ``true`` by the intervals (Wilson 95% interval on it); ``in_bucket``: the LPF of the true
    members each replicate's bucket held, whose coverage and spread around ``true`` tell the
    methods' own error from the luck of which members the classifier kept."""
    err = np.asarray(estimates, dtype=float) - true
    n = len(err)
    cover = _coverage(intervals, [true] * n)
    ci = cover["coverage_ci95"]
    bias = float(err.mean()) if n else None
    inside = np.asarray(in_bucket, dtype=float)
    widths = [c[1] - c[0] for c in intervals if c is not None]
    return {"n": n, "bias": bias,
            "bias_se": float(err.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
            "rel_bias": bias / true if bias is not None and true else None,
            "rmse": float(np.sqrt((err**2).mean())) if n else None, **cover,
            "nominal_in_coverage_ci95": None if ci is None else bool(ci[0] <= 0.95 <= ci[1]),
            "mean_ci_width": float(np.mean(widths)) if widths else None,
            "in_bucket": {**_coverage(intervals, inside),
                          "bias": float((np.asarray(estimates) - inside).mean()) if n else None,
                          "spread_around_true": float(np.sqrt(((inside - true) ** 2).mean())) if n else None}}


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
                                   **score(
                    [r["estimates"][method][c]["estimate"] for r in ok],
                    [r["estimates"][method][c]["ci95"] for r in ok], t["lpf"],
                    [r["lpf_in_bucket"][c] for r in ok])} for c, t in truth.items()}}
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
             records: Sequence[Mapping[str, Any]], cfg: Mapping[str, Any], methods: Sequence[str],
             sample_n: int, batch_size: int = 32, other_size: int | None = None) -> dict[str, Any]:
    """The whole check (the dict for ``correction/validation.json``). ``truth``: category ->
    true members; ``records``: the described features (the population planted from and
    sampled); ``cfg``: ``config["labels"]["validation"]``; ``sample_n``: the human sample's size."""
    truth = {c: sorted(set(map(int, m))) for c, m in truth.items()}
    features = [int(r["feature_index"]) for r in records]
    replicates = plan(truth, features, cfg, other_size)
    truth_sets = category_feature_sets(truth, features, cfg["seed"], None, other_size, TRUE_OTHER_DRAWS)
    result, truth_names, names = measure(model, sae, eval_set, replicates, truth_sets, batch_size,
                                         cfg["sets_per_pass"])
    cov = np.asarray(result["delta_covariance"]["matrix"], dtype=float)
    index = {n: i for i, n in enumerate(result["delta_covariance"]["names"])}
    truth_lpf, truth_other = true_lpf(result, cov, index, truth_names)
    start = time.perf_counter()
    solved = [solve_replicate(result, cov, index, n, rep, truth, records, sample_n, methods,
                              cfg["n_boot"]) for rep, n in zip(replicates, names)]
    log.info("solved %d replicates x %d methods in %.1f s", len(solved), len(methods),
             time.perf_counter() - start)
    summary = summarise(solved, truth_lpf, conditions(cfg["contamination"], cfg["sources"]), methods)
    return {"true_lpf": truth_lpf, "true_lpf_other": truth_other,
            "shared_assumption": SHARED_ASSUMPTION,
            "verdict": verdict(summary, methods), "conditions": summary,
            "design": {"n_features": len(features), "n_members": {c: len(m) for c, m in truth.items()},
                       "sample_n": min(sample_n, len(records)), "other_size": other_size,
                       **{k: cfg[k] for k in ("contamination", "sources", "false_negative_rate",
                                              "replicates", "other_draws", "n_boot", "seed")}},
            "measurement": {k: result[k] for k in ("model_loss", "baseline_loss", "n_targets",
                                                   "n_prompts", "hook_name")}
            | {"n_ablations": len(index), "seconds": result["seconds"]},
            "replicates": solved}


def validate_correction_stage(model_cfg: Mapping[str, Any], model_dir: str | None, sae_cfg: Mapping[str, Any],
                     hook_name: str, sae_dir: str | None, activations: str, descriptions: str,
                     membership: str, ablation: Mapping[str, Any], sample: Mapping[str, Any],
                     cfg: Mapping[str, Any], methods: Sequence[str], out: str) -> None:
    """Rule ``validate_correction`` (toy only): :func:`validate` on the eval set of
    ``activations`` with the true members of ``membership`` (truth_membership.json); the result
    to ``out`` (correction/validation.json). ``ablation``, ``sample``, ``cfg``: the config's
    ``labels.ablation``, ``labels.sample`` and ``labels.validation``; ``methods``:
    ``labels.correction.methods``."""
    from saeflow.core.io import read_json, write_json
    from saeflow.core.models import load_model
    from saeflow.core.runtime import resolve_device, seed_everything
    from saeflow.core.saes import load_sae
    from saeflow.formats.descriptions import read_descriptions
    from saeflow.labels.ablation import eval_set_from_h5

    seed_everything(cfg["seed"])
    device = resolve_device(ablation["device"])
    model = load_model(model_cfg, model_dir, device)
    sae = load_sae(sae_cfg, hook_name, sae_dir, device)
    result = validate(model, sae, eval_set_from_h5(activations, ablation["eval"]),
                      read_json(membership)["members"], read_descriptions(descriptions), cfg,
                      methods, sample["n"], ablation["batch_size"], ablation["other_size"])
    write_json(out, result, {"validation": dict(cfg), "ablation": dict(ablation),
                             "sample": dict(sample), "methods": list(methods), "hook": hook_name})
