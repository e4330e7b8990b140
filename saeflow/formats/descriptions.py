"""Feature descriptions (``labels/descriptions.json``, docs/outputs.md): one text per SAE
feature, ``{feature_id: "<source>-<index>", feature_index, description}``; the reader accepts
every record-file shape of :mod:`saeflow.formats.records`. saeflow's own file also says
which SAE it describes: ``source``, ``hook`` and ``d_sae`` (:func:`read_description_meta`);
descriptions an LLM wrote (``labels.describe.backend: autointerp``) carry ``scores`` beside
the text (:func:`read_description_scores`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from saeflow.core.errors import InputError
from saeflow.core.io import read_json
from saeflow.formats.records import feature_index_of, load_record_list


def read_descriptions(path: str | Path) -> list[dict[str, Any]]:
    """Description records from ``path``, validated: index present, text present, ids unique.

    Besides saeflow's own file this reads Neuronpedia's per-source JSON (a list of records or
    a dict keyed by feature id or index; the text in ``description`` or ``explanation``, or the
    dict's value itself)."""
    records, seen = [], {}
    for where, raw in load_record_list(path, text_field="description"):
        index = feature_index_of(raw, path, where)
        text = raw.get("description", raw.get("explanation"))
        if not isinstance(text, str):
            raise InputError(path, f"{where}.description", "missing or not a string "
                             "(a record needs 'description' or 'explanation')")
        fid = str(raw.get("feature_id", index))
        if fid in seen:
            raise InputError(path, "feature_id", f"duplicate id {fid!r} ({seen[fid]} and {where})")
        seen[fid] = where
        records.append({"feature_id": fid, "feature_index": index, "description": text})
    if not records:
        raise InputError(path, "records", "no descriptions")
    return records


def read_description_scores(path: str | Path) -> dict[int, dict[str, dict[str, Any]]]:
    """``{feature_index: scores}`` of the records that carry ``scores``: ``{scorer:
    {balanced_accuracy, n, ...}}`` (detection, fuzzing: :mod:`saeflow.labels.scorers`), each
    ``balanced_accuracy`` a number in [0, 1] or null (undefined). Records without scores are
    left out; a malformed one is an error naming its row. The file's ``score_definitions``
    say what each score is."""
    scored = {}
    for where, raw in load_record_list(path, text_field="description"):
        if raw.get("scores") is None:
            continue
        scores = raw["scores"]
        if not isinstance(scores, Mapping):
            raise InputError(path, f"{where}.scores", "not a mapping of scorer to score")
        for name, score in scores.items():
            value = score.get("balanced_accuracy", 0.0) if isinstance(score, Mapping) else 0.0
            if not isinstance(score, Mapping) or "balanced_accuracy" not in score or (
                    value is not None and (isinstance(value, bool)
                                           or not isinstance(value, (int, float))
                                           or not math.isfinite(value) or not 0 <= value <= 1)):
                raise InputError(path, f"{where}.scores.{name}.balanced_accuracy",
                                 f"expected a number in [0, 1] or null, got {score!r}")
        scored[feature_index_of(raw, path, where)] = {str(k): dict(v) for k, v in scores.items()}
    return scored


def read_description_meta(path: str | Path) -> dict[str, Any]:
    """Which SAE a descriptions file describes: ``{source, hook, d_sae}``, each None where the
    file does not say (another tool's file, or one written before the field). ``source``
    falls back to the one ``<source>-<index>`` prefix its feature ids share."""
    raw = read_json(path)
    meta = {k: raw.get(k) if isinstance(raw, dict) else None for k in ("source", "hook", "d_sae")}
    d_sae = meta["d_sae"]
    if d_sae is not None and (isinstance(d_sae, bool) or not isinstance(d_sae, int) or d_sae < 1):
        raise InputError(path, "d_sae", f"not a positive integer: {d_sae!r}")
    if meta["source"] is None:
        meta["source"] = shared_source([r["feature_id"] for r in read_descriptions(path)])
    return meta


def shared_source(feature_ids: Sequence[str]) -> str | None:
    """The ``<source>`` of ``<source>-<index>`` ids when they all share one, else None."""
    prefixes = {str(f).rsplit("-", 1)[0] for f in feature_ids if "-" in str(f)}
    return prefixes.pop() if len(prefixes) == 1 else None


def descriptions_by_hook(path: str | Path | None, hook: str | None = None
                      ) -> dict[str, dict[int, str]]:
    """Feature descriptions as ``{hook_name: {feature_index: text}}``.

    Reads either that mapping as JSON, or the labels stage's description file
    (``{source, records: [{feature_index, description}, ...]}``, one SAE), whose records are
    filed under ``hook`` (default: the file's ``source``, which the toy describer sets to the
    hook name). ``None`` gives no descriptions.
    """
    if path is None:
        return {}
    raw = read_json(path)
    if isinstance(raw, dict) and "records" in raw:
        key = hook or str(raw.get("source", ""))
        return {key: {int(r["feature_index"]): str(r["description"])
                      for r in read_descriptions(path)}}
    try:
        return {str(h): {int(f): str(t) for f, t in feats.items()} for h, feats in raw.items()}
    except (AttributeError, ValueError):
        raise InputError(path, "<root>", "expected {hook_name: {feature_index: text}} or a "
                         "description file with 'records'") from None
