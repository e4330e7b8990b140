"""The probe stage's summary: per dataset the CV result next to its measured chance level,
plus where the top features sit (``results/{experiment}/probe/summary.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saeflow.core.io import read_json, write_json


def probe_summary(fits: list[dict[str, Any]], effects: list[dict[str, Any]] | None = None
                  ) -> dict[str, Any]:
    """The ``probe/summary.json`` body: one entry per ``{prompt_set}/{name}`` with input kind,
    n_samples, CV test metric (mean, 95% interval and its method), permutation-baseline mean
    and p (null with a note where too few permutations), the train/test gap, whether the
    target is a function of the input, and, where effects were computed, the localisation shares and toy check.
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
    return {"datasets": out}


def write_probe_summary(fit_paths: list[str], effect_paths: list[str], out: str | Path,
                        config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rule ``probe_summary``: gather fit and effects JSON records into ``summary.json``."""
    summary = probe_summary([read_json(p) for p in fit_paths],
                            [read_json(p) for p in effect_paths])
    write_json(out, summary, config)
    return summary
