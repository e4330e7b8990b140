"""The study a loss-per-feature correction works on: its data model, parsing and building.

A study (YAML, the file ``saeflow correct`` reads) gives the baseline loss, each category's
ablated bucket (size, ablated loss, confusion against the human labels), optionally the
``other`` bucket (a random matched-size set) and the joint validation labels. Users write one
by hand; the pipeline builds one from its ablation and agreement results (:func:`correction_study_stage`).
Parsing checks every field up front; each problem is an InputError naming the field.
:mod:`saeflow.labels.correction` solves a parsed study.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saeflow.core.errors import InputError
from saeflow.core.io import check_keys, read_yaml

OTHER = "other"


@dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    tn: int
    fn: int


@dataclass(frozen=True)
class Bucket:
    """One ablated set: how many features, the loss with them zeroed and, when measured, the
    standard error of its increase over the baseline (prompts resampled)."""

    n: int
    ablated_loss: float
    confusion: Confusion | None = None
    delta_se: float | None = None


@dataclass(frozen=True)
class Study:
    """Everything a correction needs; ``validation`` rows are (predicted, human, count)."""

    source: str
    baseline_loss: float
    categories: dict[str, Bucket]
    other: Bucket | None = None
    validation: tuple[tuple[tuple[str, ...], tuple[str, ...], int], ...] | None = None
    # Sampling covariance of the buckets' loss increases: (bucket names, [k, k] matrix).
    delta_covariance: tuple[tuple[str, ...], np.ndarray] | None = None


# --- parsing ----------------------------------------------------------------------------------

def _number(value: Any, source: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(source, field, f"expected a finite number, got {value!r}")
    return float(value)


def _count(value: Any, source: str, field: str, positive: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (1 if positive else 0):
        kind = "positive" if positive else "non-negative"
        raise InputError(source, field, f"expected a {kind} integer, got {value!r}")
    return value


def _mapping(value: Any, source: str, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InputError(source, field, "missing or not a mapping")
    return value


STUDY_KEYS = ("baseline_loss", "categories", "other", "validation", "delta_covariance")
BUCKET_KEYS = ("n_predicted", "ablated_loss", "confusion", "delta_se")
CONFUSION_KEYS = ("tp", "fp", "tn", "fn")


def _bucket(raw: Any, source: str, field: str) -> Bucket:
    raw = _mapping(raw, source, field)
    check_keys(raw, BUCKET_KEYS, source, f"{field}.")
    confusion = None
    if raw.get("confusion") is not None:
        conf = _mapping(raw["confusion"], source, f"{field}.confusion")
        check_keys(conf, CONFUSION_KEYS, source, f"{field}.confusion.")
        counts = {k: _count(conf.get(k), source, f"{field}.confusion.{k}", False)
                  for k in ("tp", "fp", "tn", "fn")}
        if sum(counts.values()) == 0:
            raise InputError(source, f"{field}.confusion", "all counts are zero")
        confusion = Confusion(**counts)
    se = None
    if raw.get("delta_se") is not None:
        se = _number(raw["delta_se"], source, f"{field}.delta_se")
        if se < 0:
            raise InputError(source, f"{field}.delta_se", f"expected >= 0, got {se}")
    return Bucket(_count(raw.get("n_predicted"), source, f"{field}.n_predicted", True),
                  _number(raw.get("ablated_loss"), source, f"{field}.ablated_loss"), confusion, se)


def _covariance(raw: Any, buckets: Mapping[str, Bucket], source: str
                ) -> tuple[tuple[str, ...], np.ndarray] | None:
    """The measurement covariance of the loss increases: ``delta_covariance: {names, matrix}``
    if given (it wins), else the diagonal of every bucket's ``delta_se``, else None."""
    if raw is None:
        given = [b.delta_se is not None for b in buckets.values()]
        if any(given) and not all(given):
            missing = [n for n, b in buckets.items() if b.delta_se is None][0]
            where = OTHER if missing == OTHER else f"categories.{missing}"
            raise InputError(source, f"{where}.delta_se", "give delta_se for every bucket or none")
        if not any(given):
            return None
        return tuple(buckets), np.diag([b.delta_se**2 for b in buckets.values()])
    raw = _mapping(raw, source, "delta_covariance")
    check_keys(raw, ("names", "matrix"), source, "delta_covariance.")
    names = raw.get("names")
    if not isinstance(names, list) or sorted(map(str, names)) != sorted(buckets):
        raise InputError(source, "delta_covariance.names",
                         f"expected each of {sorted(buckets)} once, got {names!r}")
    try:
        matrix = np.array(raw.get("matrix"), dtype=float)
    except (TypeError, ValueError):
        matrix = np.empty(0)
    k = len(names)
    if matrix.shape != (k, k) or not np.isfinite(matrix).all():
        raise InputError(source, "delta_covariance.matrix", f"expected a finite {k} x {k} matrix")
    scale = max(float(np.abs(matrix).max()), 1e-300)
    if not np.allclose(matrix, matrix.T, atol=1e-9 * scale) or \
            np.linalg.eigvalsh((matrix + matrix.T) / 2).min() < -1e-9 * scale:
        raise InputError(source, "delta_covariance.matrix", "not a symmetric positive semi-definite matrix")
    return tuple(map(str, names)), (matrix + matrix.T) / 2


def parse_study(raw: Any, source: str) -> Study:
    """Validate a study mapping; every problem is an InputError naming the field.

    ``baseline_loss``; ``categories.<name>: {n_predicted, ablated_loss, confusion: {tp, fp,
    tn, fn}}`` (confusion needed by two-bucket); for general also ``other: {n_predicted,
    ablated_loss}`` and ``validation: [{predicted: [names], human: [names], count}]``.
    Optional, for intervals that include the noise of measuring the losses: ``delta_se`` in
    every bucket, or ``delta_covariance: {names: [buckets], matrix: [[...]]}``.
    """
    raw = _mapping(raw, source, "<root>")
    check_keys(raw, STUDY_KEYS, source)
    cats = _mapping(raw.get("categories"), source, "categories")
    if not cats:
        raise InputError(source, "categories", "no categories")
    if OTHER in cats:
        raise InputError(source, f"categories.{OTHER}", "reserved name; give it as top-level 'other'")
    categories = {str(k): _bucket(v, source, f"categories.{k}") for k, v in cats.items()}
    other = _bucket(raw["other"], source, OTHER) if raw.get("other") is not None else None
    validation = None
    if raw.get("validation") is not None:
        if not isinstance(raw["validation"], list) or not raw["validation"]:
            raise InputError(source, "validation", "expected a non-empty list")
        rows = []
        for i, row in enumerate(raw["validation"]):
            row = _mapping(row, source, f"validation[{i}]")
            check_keys(row, ("predicted", "human", "count"), source, f"validation[{i}].")
            sets = []
            for key in ("predicted", "human"):
                names = row.get(key)
                if not isinstance(names, list) or any(n not in categories for n in names):
                    raise InputError(source, f"validation[{i}].{key}",
                                     f"expected a list of category names, got {names!r}")
                sets.append(tuple(names))
            rows.append((sets[0], sets[1], _count(row.get("count"), source,
                                                  f"validation[{i}].count", True)))
        validation = tuple(rows)
    buckets = {**categories, **({OTHER: other} if other else {})}
    return Study(source, _number(raw.get("baseline_loss"), source, "baseline_loss"), categories,
                 other, validation, _covariance(raw.get("delta_covariance"), buckets, source))


def load_study(path: str | Path) -> Study:
    """Read and validate a study YAML (or JSON) file."""
    return parse_study(read_yaml(path), str(path))


# --- the DAG's side: a study from the pipeline's results ------------------------------------

def study_from_results(ablation: Mapping[str, Any], agreements: Mapping[str, Mapping[str, Any]],
                       validation: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """A study mapping (YAML-ready) from ``ablation_losses`` output, one agreement result per
    category and optional joint validation rows (:func:`saeflow.labels.agreement.joint_validation`)."""
    sets = ablation["sets"]
    study: dict[str, Any] = {"baseline_loss": float(ablation["baseline_loss"]), "categories": {}}
    for name, agree in agreements.items():
        study["categories"][name] = {
            "n_predicted": int(sets[name]["n_features"]), "ablated_loss": float(sets[name]["loss"]),
            **_measured_se(sets[name]),
            "confusion": {k: int(agree[k]) for k in ("tp", "fp", "tn", "fn")}}
    if OTHER in sets:
        study[OTHER] = {"n_predicted": int(sets[OTHER]["n_features"]),
                        "ablated_loss": float(sets[OTHER]["loss"]), **_measured_se(sets[OTHER])}
    if validation:
        study["validation"] = [dict(row) for row in validation]
    cov = ablation.get("delta_covariance")
    if cov and np.isfinite(np.asarray(cov["matrix"], dtype=float)).all():
        keep = [n for n in [*agreements, OTHER] if n in sets]
        index = [list(cov["names"]).index(n) for n in keep]
        matrix = np.asarray(cov["matrix"], dtype=float)[np.ix_(index, index)]
        study["delta_covariance"] = {"names": keep, "matrix": matrix.tolist()}
    return study


def _measured_se(entry: Mapping[str, Any]) -> dict[str, float]:
    se = entry.get("delta_se")
    return {"delta_se": float(se)} if se is not None and math.isfinite(se) else {}


def write_study(path: str | Path, raw: Mapping[str, Any]) -> None:
    """A study mapping as YAML, atomically: the file ``saeflow correct`` reads."""
    import yaml

    from saeflow.core.io import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(dict(raw), sort_keys=False))


def correction_study_stage(ablation: str | Path, agreements: Mapping[str, str | Path],
                classified: Mapping[str, str | Path], humans: Mapping[str, str | Path],
                out: str | Path) -> None:
    """The stage: the study YAML built from the DAG's files (validated before it is written),
    so each method's rule runs exactly what ``saeflow correct`` runs on it."""
    from saeflow.labels.agreement import joint_validation
    from saeflow.formats.labels import read_labelled
    from saeflow.core.io import read_json

    validation = joint_validation({c: read_labelled(p) for c, p in classified.items()},
                                  {c: read_labelled(p, strict=False) for c, p in humans.items()})
    raw = study_from_results(read_json(ablation), {c: read_json(p) for c, p in agreements.items()},
                             validation)
    parse_study(raw, str(out))
    write_study(out, raw)
