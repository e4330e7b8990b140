"""How well a classifier agrees with human labels on the labelled sample.

The human labels are the reference: ``tp`` is a feature the model calls related and the human
too, ``fp`` one the model calls related and the human does not. Proportions carry Wilson 95%
intervals (sound at small n and near 0 or 1); phi and kappa, which have no simple closed-form
interval, carry percentile bootstrap intervals over the labelled rows. Each interval names its
method (``<name>_ci95_method``); a bootstrap draw whose phi or kappa is undefined (an empty
margin in the resample) is dropped, and ``<name>_ci95_n_dropped`` says how many were.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from saeflow.formats.labels import NOT_RELATED, RELATED, read_labelled
from saeflow.core.errors import InputError

BINARY = {RELATED: 1, NOT_RELATED: 0}
Z95 = 1.959963984540054
WILSON = "Wilson score interval"
BOOTSTRAP = "percentile bootstrap over labelled rows (undefined draws dropped)"


def wilson_interval(k: int, n: int, z: float = Z95) -> list[float] | None:
    """Wilson score interval for ``k`` successes in ``n`` trials; None when n = 0."""
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def confusion(human: np.ndarray, model: np.ndarray) -> dict[str, int]:
    """Counts from 0/1 arrays ``[n]`` (human = reference)."""
    return {"tp": int(np.sum((model == 1) & (human == 1))),
            "tn": int(np.sum((model == 0) & (human == 0))),
            "fp": int(np.sum((model == 1) & (human == 0))),
            "fn": int(np.sum((model == 0) & (human == 1)))}


def phi_coefficient(tp: int, tn: int, fp: int, fn: int) -> float | None:
    """Matthews correlation; None when a margin is empty."""
    denom = math.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return None if denom == 0 else (tp * tn - fp * fn) / denom


def cohen_kappa(tp: int, tn: int, fp: int, fn: int) -> float | None:
    """Cohen's kappa; None when chance agreement is 1 (both raters constant and equal)."""
    n = tp + tn + fp + fn
    if n == 0:
        return None
    observed = (tp + tn) / n
    chance = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
    return None if chance == 1 else (observed - chance) / (1 - chance)


def _ratio(k: int, n: int) -> float | None:
    return k / n if n else None


def agreement_metrics(human: np.ndarray, model: np.ndarray, n_boot: int = 2000,
                      seed: int = 0) -> dict[str, Any]:
    """Counts, proportions with Wilson intervals, phi and kappa with bootstrap intervals.

    human, model: ``[n]`` arrays of 0/1.
    """
    c = confusion(human, model)
    n = len(human)
    out: dict[str, Any] = {"n": n, **c}
    for name, k, m in (("accuracy", c["tp"] + c["tn"], n), ("precision", c["tp"], c["tp"] + c["fp"]),
                       ("recall", c["tp"], c["tp"] + c["fn"])):
        out[name], out[f"{name}_ci95"] = _ratio(k, m), wilson_interval(k, m)
        out[f"{name}_ci95_method"] = WILSON
    out["phi"], out["kappa"] = phi_coefficient(**c), cohen_kappa(**c)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {"phi": [], "kappa": []}
    for _ in range(n_boot if n else 0):
        pick = rng.integers(0, n, n)
        cb = confusion(human[pick], model[pick])
        for name, fn in (("phi", phi_coefficient), ("kappa", cohen_kappa)):
            value = fn(**cb)
            if value is not None:
                draws[name].append(value)
    for name, values in draws.items():
        out[f"{name}_ci95"] = (np.percentile(values, [2.5, 97.5]).tolist()
                               if values and out[name] is not None else None)
        out[f"{name}_ci95_method"] = BOOTSTRAP
        # resamples with an empty margin have no phi/kappa: the interval is over the rest
        out[f"{name}_ci95_n_dropped"] = (n_boot if n else 0) - len(values)
    out["bootstrap"] = {"n": n_boot, "seed": seed}
    return out


def merge_labels(human: Sequence[Mapping[str, Any]], model: Sequence[Mapping[str, Any]],
                 model_path: str | Path) -> pd.DataFrame:
    """Join human rows to model rows (many-to-one) on ``feature_index``, else ``feature_id``.

    Returns one row per matched human row: ``feature_index, feature_id, description,
    human_label, model_label``. Duplicate model rows are an error naming the features.
    """
    h, m = pd.DataFrame(list(human)), pd.DataFrame(list(model))
    key = ("feature_index" if h["feature_index"].notna().all() and m["feature_index"].notna().all()
           else "feature_id")
    dupes = m[key][m[key].duplicated()].unique().tolist()
    if dupes:
        raise InputError(model_path, key, f"duplicate model rows for {sorted(dupes)[:10]}")
    merged = h.merge(m[[key, "label"]].rename(columns={"label": "model_label"}), on=key,
                     how="inner", validate="many_to_one")
    return merged.rename(columns={"label": "human_label"})[
        ["feature_index", "feature_id", "description", "human_label", "model_label"]]


def agreement(human_path: str | Path, model_path: str | Path, n_boot: int = 2000,
              seed: int = 0) -> tuple[dict[str, Any], pd.DataFrame]:
    """``saeflow agreement``: metrics dict and the merged table (with 0/1 columns)."""
    human = read_labelled(human_path, strict=False)
    model = read_labelled(model_path, strict=False)
    for path, rows in ((human_path, human), (model_path, model)):
        if not rows:
            raise InputError(path, "records", "no labelled rows")
    check_human_labels(human, human_path)
    merged = merge_labels(human, model, model_path)
    if merged.empty:
        raise InputError(human_path, "feature_index", f"no labelled feature matches {model_path}")
    merged["human"] = merged["human_label"].map(BINARY)
    merged["model"] = merged["model_label"].map(BINARY)
    unmapped = {side: dict(Counter(str(v) for v in merged.loc[merged[side].isna(), f"{side}_label"]))
                for side in ("human", "model")}
    kept = merged.dropna(subset=["human", "model"])
    if kept.empty:
        raise InputError(human_path, "label", "no row has related/not-related on both sides")
    metrics = agreement_metrics(kept["human"].to_numpy(int), kept["model"].to_numpy(int),
                                n_boot, seed)
    metrics.update({"n_human": len(human), "n_matched": len(merged),
                    "n_unmatched": len(human) - len(merged), "unmapped_labels": unmapped,
                    "n_dropped": len(merged) - len(kept),
                    "human": str(human_path), "model": str(model_path)})
    return metrics, merged.astype({"human": "Int64", "model": "Int64"})


def check_human_labels(human: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """A human's answer is related or not-related, once per feature: any other label, or a
    feature labelled twice, is an error (dropping or double-counting it would change every
    rate without the user seeing why)."""
    seen: dict[Any, str] = {}
    for i, record in enumerate(human):
        if record["label"] not in BINARY:
            raise InputError(path, f"records[{i}].label", f"{record['label']!r} is not a human "
                             f"answer (expected {RELATED} or {NOT_RELATED})")
        key = record["feature_index"] if record["feature_index"] is not None else record["feature_id"]
        if key in seen:
            how = ("conflicting labels" if seen[key] != record["label"] else "the same label twice")
            raise InputError(path, f"records[{i}]", f"feature {record['feature_id']} is labelled "
                             f"again ({how}: {seen[key]} then {record['label']})")
        seen[key] = record["label"]


def check_labels_fit_sae(human: Sequence[Mapping[str, Any]], path: str | Path,
                         recorded: Mapping[str, Any], descriptions: str | Path) -> None:
    """Human labels are of this run's SAE: the file's recorded ``source`` (or its sample's
    feature-id prefix) is the descriptions', no label is of a feature beyond the SAE's width
    ``d_sae`` (as the descriptions file records it), and every labelled feature is described.
    Else an InputError naming ``path``, the field and the offending ids (such labels would
    only be dropped by the join with the classifier)."""
    from saeflow.formats.descriptions import (read_description_meta, read_descriptions,
                                              shared_source)

    meta = read_description_meta(descriptions)
    ids = recorded.get("sample_feature_ids")
    field, theirs = (("source", recorded["source"]) if recorded.get("source") else
                     ("sample_feature_ids", shared_source(ids if isinstance(ids, list) else [])))
    if theirs is not None and meta["source"] is not None and theirs != meta["source"]:
        raise InputError(path, field, f"labels made for another SAE: the file's features are "
                         f"of {theirs!r}, this run's ({descriptions}) of {meta['source']!r}; "
                         f"e.g. {_some([r['feature_id'] for r in human])}")
    d_sae = meta["d_sae"] if meta["d_sae"] is not None else float("inf")
    beyond = [r["feature_id"] for r in human
              if r["feature_index"] is not None and r["feature_index"] >= d_sae]
    if beyond:
        raise InputError(path, "feature_index", f"labels of features beyond the SAE's width "
                         f"(d_sae {d_sae} of {meta['hook'] or meta['source']}): {_some(beyond)}")
    described = read_descriptions(descriptions)
    by_index = {r["feature_index"] for r in described}
    by_id = {r["feature_id"] for r in described}
    unknown = [r["feature_id"] for r in human if (r["feature_index"] not in by_index
                                                   if r["feature_index"] is not None
                                                   else r["feature_id"] not in by_id)]
    if unknown:
        raise InputError(path, "feature_index", f"labels of features {descriptions} does not "
                         f"describe: {_some(unknown)}")


def _some(ids: Sequence[Any], k: int = 5) -> str:
    return ", ".join(map(str, ids[:k])) + (f" and {len(ids) - k} more" if len(ids) > k else "")


def write_merged_csv(path: str | Path, merged: pd.DataFrame) -> None:
    """The merged human/model table as CSV, written atomically."""
    from saeflow.core.io import atomic_path

    with atomic_path(path) as tmp:
        merged.to_csv(tmp, index=False)


def joint_validation(models: Mapping[str, Sequence[Mapping[str, Any]]],
                     humans: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Joint labels over categories for the general correction: one row per pattern.

    For every feature labelled related/not-related by the human in *every* category, the set
    of categories the model predicts and the set the human assigns. Returns rows
    ``{predicted: [...], human: [...], count}`` sorted for a stable file.
    """
    names = list(humans)
    if not names:
        return []
    per_cat_h = {c: {r["feature_index"]: BINARY.get(r["label"]) for r in humans[c]} for c in names}
    per_cat_m = {c: {r["feature_index"]: BINARY.get(r["label"]) for r in models[c]} for c in names}
    shared = set.intersection(*(set(k for k, v in per_cat_h[c].items() if v is not None)
                                for c in names))
    patterns: Counter[tuple[tuple[str, ...], tuple[str, ...]]] = Counter()
    for f in shared:
        if any(per_cat_m[c].get(f) is None for c in names):
            continue
        patterns[(tuple(c for c in names if per_cat_m[c][f] == 1),
                  tuple(c for c in names if per_cat_h[c][f] == 1))] += 1
    return [{"predicted": list(p), "human": list(h), "count": k}
            for (p, h), k in sorted(patterns.items())]


def agree_stage(human_path: str | Path, model_path: str | Path, cfg: Mapping[str, Any],
                out_json: str | Path, out_csv: str | Path) -> None:
    """Rule ``agree``: :func:`agreement` of the human (or oracle) labels ``human_path`` and the
    classifier's ``model_path`` (classified/{category}.json); metrics to ``out_json``, the merged
    table to ``out_csv``. ``cfg``: ``config["labels"]["agreement"]`` ({n_boot, seed})."""
    from saeflow.core.io import write_json

    metrics, merged = agreement(human_path, model_path, cfg["n_boot"], cfg["seed"])
    write_merged_csv(out_csv, merged)
    write_json(out_json, metrics, cfg)
