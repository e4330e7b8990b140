"""Record files: the list-of-records shapes every labelling input and output comes in.

Accepted everywhere a record file is read: a list of records, ``{"records": [...]}``
(saeflow's own outputs), a dict mapping an id to a record, or one record per line
(``.jsonl``, ``.jsonl.gz``). Each record is a JSON object; ``where`` names its row as the
error messages do (``records[3]``, ``['12-res-4']``, ``line 7``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from saeflow.core.errors import InputError
from saeflow.core.io import parse_json, read_text

_ID_SUFFIX = re.compile(r"-(\d+)$")


def read_lines(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """``(where, record)`` for each record of a ``.jsonl`` / ``.jsonl.gz`` file."""
    rows, lineno = [], 0
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            record = parse_json(line, path, f"line {lineno}: ", allow_nan=False)
            if not isinstance(record, dict):
                raise InputError(path, f"line {lineno}", "expected a JSON object")
            rows.append((f"line {lineno}", record))
    return rows


def load_record_list(path: str | Path, text_field: str | None = None
                     ) -> list[tuple[str, dict[str, Any]]]:
    """Records of a JSON / JSONL file as ``(where, record)`` pairs, ``where`` naming the row.

    Accepts a list of records, ``{"records": [...]}`` (saeflow's own outputs), a dict mapping
    an id to a record (the key becomes ``feature_id`` when the record has no id of its own),
    or one record per line (``.jsonl``, ``.jsonl.gz``).
    """
    path = Path(path)
    if ".jsonl" in path.name:
        return read_lines(path)
    data = parse_json(read_text(path), path, allow_nan=False)
    if isinstance(data, dict) and "records" in data:
        if not isinstance(data["records"], list):
            raise InputError(path, "records", f"expected a list of records, got "
                             f"{type(data['records']).__name__}")
        data = data["records"]
    if isinstance(data, list):
        named = [(f"records[{i}]", r) for i, r in enumerate(data)]
    elif isinstance(data, dict):
        named = []
        for key, record in data.items():
            if key == "provenance":
                continue
            if isinstance(record, str) and text_field is not None:
                record = {text_field: record}  # {id: text}, e.g. a per-source description map
            if isinstance(record, dict) and not ({"feature_id", "feature_index", "index"} & set(record)):
                record = {**record, "feature_id": key}
            named.append((f"[{key!r}]", record))
    else:
        raise InputError(path, "<root>", "expected a list of records or a dict of records")
    for where, record in named:
        if not isinstance(record, dict):
            raise InputError(path, where, "expected a JSON object")
    return named


def feature_index_of(record: Mapping[str, Any], source: str | Path, where: str) -> int:
    """The integer feature index of a record: ``feature_index``, ``index``, or an id's ``-<n>``."""
    for key in ("feature_index", "index"):
        value = record.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not (
                isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())):
            raise InputError(source, f"{where}.{key}", f"not a non-negative integer: {value!r}")
        if int(value) < 0:
            raise InputError(source, f"{where}.{key}", f"negative index {value}")
        return int(value)
    fid = record.get("feature_id")
    if isinstance(fid, str) and fid.isdigit():  # a dict keyed by the index itself
        return int(fid)
    match = _ID_SUFFIX.search(fid) if isinstance(fid, str) else None
    if match is None:
        raise InputError(source, where, "no feature index: need 'feature_index', 'index' or "
                                        "a 'feature_id' ending in -<n>")
    return int(match.group(1))
