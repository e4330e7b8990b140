"""The probe stage's summary: per dataset the CV result next to its measured chance level and,
where folds group by a metadata column, what that column alone predicts, plus where the top
features sit (``results/{experiment}/probe/summary.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from saeflow.core.errors import InputError
from saeflow.core.io import read_json, write_json


def probe_summary(fits: list[dict[str, Any]], effects: list[dict[str, Any]] | None = None
                  ) -> dict[str, Any]:
    """The ``probe/summary.json`` body: one entry per ``{prompt_set}/{name}`` with input kind,
    n_samples, CV test metric (mean, 95% interval and its method), permutation-baseline mean
    and p (null with a note where too few permutations), the metadata-only baseline (the
    ``probe.cv.group_by`` column's one-hot on the same folds; None ungrouped), the train/test
    gap, whether the target is a function of the input, and, where effects were computed,
    the localisation shares and toy check, and for SAE-code inputs the top latents with links
    to their dashboard pages (:func:`top_latents`).
    """
    out: dict[str, Any] = {}
    for rec in fits:
        key = f"{rec.get('prompt_set')}/{rec['name']}"
        primary = rec["primary_metric"]
        base = rec["baseline"].get(primary, {})
        entry = {"name": rec["name"], "prompt_set": rec.get("prompt_set"),
                 "group": rec.get("group"), "strategy": rec["strategy"],
                 "input_kind": rec["input_kind"], "target": rec["target"],
                 "layers": rec["layers"], "positions": rec["positions"],
                 "n_samples": rec["n_samples"], "metric": primary,
                 "test_mean": rec["test"]["mean"],
                 "test_ci": [rec["test"]["ci_low"], rec["test"]["ci_high"]],
                 "test_ci_method": rec["test"].get("interval_method"),
                 "train_mean": rec["train"]["mean"], "gap": rec["gap"],
                 "baseline_mean": base.get("mean"), "baseline_p": base.get("p_value"),
                 "baseline_p_note": base.get("p_value_note"),
                 "n_permutations": len(base.get("values", [])),
                 "metadata_baseline": _metadata_entry(rec.get("metadata_baseline")),
                 "target_function_of_input": rec.get("target_function_of_input", False)}
        if "roc_auc" in rec["metrics"]:
            auc = rec["metrics"]["roc_auc"]["test"]
            entry["roc_auc_mean"] = auc["mean"]
            entry["roc_auc_ci"] = [auc["ci_low"], auc["ci_high"]]
        out[key] = entry
    for rec in effects or []:
        key = f"{rec.get('prompt_set')}/{rec['name']}"
        loc = rec["localisation"]
        out.setdefault(key, {"name": rec["name"], "prompt_set": rec.get("prompt_set")})
        out[key]["localisation"] = {
            "positive_class": rec["positive_class"], "k": loc["k"],
            "n_significant": rec["n_significant"], "by_layer": loc["by_layer"],
            "by_position": loc["by_position"], "expected_by_layer": loc["expected_by_layer"],
            "expected_by_position": loc["expected_by_position"],
            "hot_spots": loc["hot_spots"][:5]}
        if "toy_check" in rec:
            out[key]["toy_check"] = rec["toy_check"]
        if rec.get("input_kind") == "sae":
            out[key]["top_latents"] = top_latents(rec["top"])
    return {"datasets": out}


def top_latents(top: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct SAE latents of an effects record's top columns (ranked by |d|; a latent's
    best column), each with ``dashboard``: the relative link from probe/summary.json to its
    page (:mod:`saeflow.latents.links`, written by ``snakemake dashboards``)."""
    from saeflow.latents.links import page_link

    seen, out = set(), []
    for entry in top:
        key = (entry["hook"], int(entry["unit"]))
        if key not in seen:
            seen.add(key)
            out.append({"hook": key[0], "latent": key[1], "d": entry["d"],
                        "position": entry.get("position"), "q": entry.get("q"),
                        "dashboard": page_link(key[0], key[1], "probe")})
    return out


def _metadata_entry(rec: dict[str, Any] | None) -> dict[str, Any] | None:
    if not rec:
        return None
    test = rec["test"]
    return {"column": rec["column"], "n_groups": rec["n_groups"], "mean": rec["mean"],
            "ci": [test["ci_low"], test["ci_high"]], "ci_method": test.get("interval_method")}


def readout_check(entry: dict[str, Any], model_correct: np.ndarray) -> dict[str, Any]:
    """A truth a probe must reproduce: the model itself reads its answer from the last
    layer's final-position residual through ``W_U @ LayerNorm(x)``, a linear classifier of
    ``x`` up to LayerNorm's per-prompt scale. So when the answer is the probe's class (the
    toy's error type), a linear probe of that vector reaches about the model's accuracy on
    the same prompts (``model_correct`` ``[n]``, the probe's rows); one that does not
    (misaligned rows, the wrong position or layer, a broken fit) fails. ``reaches_model``:
    the probe's interval reaches the lower end of the model accuracy's exact
    (Clopper-Pearson) 95% interval. ``beats_metadata`` (where folds group by a metadata
    column): the probe's interval lies above the metadata-only baseline, what that column
    (the template) alone predicts on the same folds; a probe that learnt only templates
    scores that baseline and fails. ``holds``: both (the first alone when ungrouped)."""
    from scipy.stats import binomtest

    n, k = len(model_correct), int(np.sum(model_correct))
    ci = binomtest(k, n).proportion_ci(0.95, "exact")
    probe_lo, probe_hi = entry["test_ci"]
    meta = entry.get("metadata_baseline")
    out = {"model_accuracy": k / n, "model_accuracy_ci95": [ci.low, ci.high],
           "model_ci_method": "Clopper-Pearson exact binomial", "n_prompts": n,
           "probe_accuracy": entry["test_mean"], "probe_ci95": entry["test_ci"],
           "chance": entry.get("baseline_mean"),
           "metadata_baseline": meta["mean"] if meta else None}
    if entry.get("metric") != "accuracy":
        return {**out, "holds": None, "note": f"metric {entry.get('metric')!r}, not accuracy"}
    reaches = bool(probe_hi is not None and probe_hi >= ci.low)
    beats = None if meta is None else bool(probe_lo is not None and probe_lo > meta["mean"])
    if meta is None:
        out["note"] = ("folds not grouped (probe.cv.group_by null): a probe of the template "
                       "alone can pass on prompt folds")
    return {**out, "reaches_model": reaches, "beats_metadata": beats,
            "holds": reaches and beats is not False}


def probe_summary_stage(fit_paths: list[str], effect_paths: list[str], out: str | Path,
                        config: dict[str, Any] | None = None,
                        readout: dict[str, list[str]] | None = None,
                        activations: dict[str, str] | None = None,
                        readout_data: list[str] | None = None) -> dict[str, Any]:
    """Rule ``probe_summary``: gather fit and effects JSON records into ``summary.json``;
    ``readout`` (toy: dataset names per prompt set) adds :func:`readout_check` against the
    model's answers in ``activations[prompt_set]`` (``meta/model_correct``), on the prompts
    of the dataset's file in ``readout_data`` (all prompts for a dataset not there)."""
    from saeflow.formats.activations import open_activations
    from saeflow.formats.hdf5 import read_array
    from saeflow.probe.dataset import read_probe_dataset

    summary = probe_summary([read_json(p) for p in fit_paths],
                            [read_json(p) for p in effect_paths])
    rows = {}
    for path in readout_data or []:
        ds = read_probe_dataset(path)
        rows[f"{ds.meta.get('prompt_set')}/{ds.name}"] = ds.sample_index
    for prompt_set, names in (readout or {}).items():
        path = (activations or {})[prompt_set]
        with open_activations(path) as h5:
            correct = np.asarray(read_array(h5, "meta/model_correct", path), dtype=bool)
        for name in names:
            entry = summary["datasets"].get(f"{prompt_set}/{name}")
            if entry is None:
                raise InputError("config", "probe.toy_check.readout_datasets",
                                 f"{name!r} is not a dataset fitted on {prompt_set}")
            keep = rows.get(f"{prompt_set}/{name}", slice(None))
            entry["readout_check"] = readout_check(entry, correct[keep])
    write_json(out, summary, config)
    return summary
