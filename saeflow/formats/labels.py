"""Label files: human labels (``saeflow label``), classifications and oracle labels.

Every record has a label -- ``related`` / ``not-related`` (/ ``unknown`` from a classifier) or
a spelling other tools use for them (yes/no, true/false) -- and a feature index
(``feature_index``, ``index`` or a ``feature_id`` ending in ``-<n>``), in any record-file
shape of :mod:`saeflow.formats.records`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from saeflow.core.errors import InputError
from saeflow.formats.records import feature_index_of, load_record_list

RELATED, NOT_RELATED, UNKNOWN = "related", "not-related", "unknown"
LABELS = (RELATED, NOT_RELATED, UNKNOWN)
# Spellings other tools use for the same two answers; anything else is not ours to guess.
_ALIASES = {"related": RELATED, "not-related": NOT_RELATED, "not related": NOT_RELATED,
            "not_related": NOT_RELATED, "unrelated": NOT_RELATED, "unknown": UNKNOWN,
            "yes": RELATED, "no": NOT_RELATED, "true": RELATED, "false": NOT_RELATED}


def normalise_label(value: Any) -> str | None:
    """``related`` / ``not-related`` / ``unknown`` for a known spelling (or bool), else None."""
    if isinstance(value, bool):
        return RELATED if value else NOT_RELATED
    if isinstance(value, str):
        return _ALIASES.get(value.strip().lower())
    return None


def read_labelled(path: str | Path, strict: bool = True) -> list[dict[str, Any]]:
    """Labelled records of any classification / labels file, normalised.

    Each record gets ``feature_index`` (from ``feature_index``, ``index`` or a ``feature_id``
    ending ``-<n>``), ``feature_id`` (kept, else the index as text), ``description`` (or "")
    and ``label``. With ``strict`` an unknown label or a missing index is an error; without
    it the raw label is kept so a caller can report it, and a record with only a
    ``feature_id`` gets ``feature_index`` None (joins then fall back to the id).
    """
    records = []
    for where, raw in load_record_list(path):
        if "label" not in raw:
            raise InputError(path, f"{where}.label", "missing")
        label = normalise_label(raw["label"])
        if label is None and strict:
            raise InputError(path, f"{where}.label", f"unknown label {raw['label']!r} "
                                                     f"(expected one of {', '.join(LABELS)})")
        if not strict and raw.get("feature_id") is not None and not any(
                raw.get(k) is not None for k in ("feature_index", "index")):
            index = feature_index_of(raw, path, where) if _has_suffix(raw["feature_id"]) else None
        else:
            index = feature_index_of(raw, path, where)
        records.append({"feature_id": str(raw.get("feature_id", index)), "feature_index": index,
                        "description": str(raw.get("description") or ""),
                        "label": label if label is not None else raw["label"]})
    return records


def _has_suffix(feature_id: Any) -> bool:
    return isinstance(feature_id, str) and re.search(r"-\d+$", feature_id) is not None
