"""The position grammar every stage shares: which token of each prompt a position names.

A position is ``final`` (the last token), an integer offset (``-k`` counts back from the end,
``-1`` being the final token; ``k >= 0`` is token ``k``, BOS being 0), or a name ``x`` whose
token index each prompt records (``pos_x`` in a prompt record, ``meta/pos_x`` once stored).
Extraction resolves positions against prompts to choose what to store (:func:`token_positions`:
a position outside a prompt is an error naming its line; ``pos_x: null`` is absent by design);
probing resolves them against a stored file to find the stored column.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from saeflow.core.errors import InputError
from saeflow.core.io import line_of


def _as_int(name: str) -> int | None:
    return int(name) if name.lstrip("-").isdigit() and name.count("-") <= 1 else None


def token_index(entry: str | int, lengths: np.ndarray,
                named: Callable[[str], np.ndarray | None], allow_nonnegative: bool = True
                ) -> np.ndarray | None:
    """Token index per prompt ``[n]`` int64 (possibly outside ``0..length-1``; callers mark
    those absent) that ``entry`` names, or None when it names nothing. ``named(x)`` gives a
    named position's indices (None if unknown); ``allow_nonnegative`` False leaves ``k >= 0``
    to the caller (probing reads those as stored column names)."""
    name = str(entry)
    lengths = np.asarray(lengths, dtype=np.int64)
    if name == "final":
        return lengths - 1
    k = _as_int(name)
    if k is not None:
        if k < 0:
            return lengths + k
        return np.full(len(lengths), k, np.int64) if allow_nonnegative else None
    found = named(name)
    return None if found is None else np.asarray(found, dtype=np.int64)


def token_positions(spec: str | Sequence[str | int], records: list[dict[str, Any]],
                    lengths: np.ndarray, source: str = "prompts") -> tuple[np.ndarray, list[str]]:
    """Token indices to store, ``[n, P]`` (-1 where absent), and a name per stored position.

    ``spec`` is ``"all"``, ``"final"``, or a list of entries: ``"final"``, an integer offset
    (negative counts from the end: -1 is the final token), or a name ``x`` whose per-record
    index is the record field ``pos_x``. ``all`` pads short prompts with -1; otherwise a
    position is absent only by design: ``pos_x: null`` in a record. An offset or a ``pos_x``
    outside a prompt is an InputError naming ``source``'s line (never a silent zero row).
    """
    n = len(lengths)
    if spec == "all":
        width = int(lengths.max())
        grid = np.broadcast_to(np.arange(width), (n, width)).copy()
        grid[grid >= lengths[:, None]] = -1
        return grid.astype(np.int32), [str(p) for p in range(width)]
    entries = ["final"] if spec == "final" else list(spec)
    columns, names = [], []
    for j, entry in enumerate(entries):
        absent = np.zeros(n, dtype=bool)

        def named(name: str) -> np.ndarray:
            values, absent[:] = _record_positions(records, name, source)
            return values

        col = token_index(entry, lengths, named)
        _check_inside(col, absent, lengths, records, source, (j, entry))
        columns.append(np.where(absent, -1, col))
        names.append(str(entry))
    return np.stack(columns, axis=1).astype(np.int32), names


def _check_inside(col: np.ndarray, absent: np.ndarray, lengths: np.ndarray,
                  records: list[dict[str, Any]], source: str, entry: tuple[int, Any]) -> None:
    """Every present index of position ``entry`` (its index in extraction.positions, the
    entry) lies inside its prompt (0 to length - 1, BOS being 0)."""
    outside = ~absent & ((col < 0) | (col >= lengths))
    if not outside.any():
        return
    i = int(np.flatnonzero(outside)[0])
    j, value = entry
    where = "past the end of" if col[i] >= lengths[i] else "before the start of"
    detail = f"{outside.sum()} of {len(lengths)} prompts are too short for it"
    span = f"this prompt's {lengths[i]} tokens (0 to {lengths[i] - 1}, BOS = 0)"
    if _is_offset(value):
        raise InputError(source, f"line {line_of(records, i)}", f"extraction.positions[{j}] "
                         f"= {value!r} is token {col[i]}, {where} {span}; {detail}: give "
                         "positions inside every prompt")
    raise InputError(source, f"line {line_of(records, i)}.pos_{value}", f"token {col[i]} is "
                     f"{where} {span} (extraction.positions[{j}] = {value!r}); {outside.sum()} "
                     f"of {len(lengths)} prompts record it outside: write pos_{value}: null "
                     "where it is absent by design")


def _is_offset(entry: Any) -> bool:
    text = str(entry)
    return text.lstrip("-").isdigit() and text.count("-") <= 1


def _record_positions(records: list[dict[str, Any]], name: str, source: str
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Each record's ``pos_<name>`` (0 where null) and which are null: absent by design."""
    key = f"pos_{name}"
    values, absent = np.zeros(len(records), dtype=np.int64), np.zeros(len(records), dtype=bool)
    for i, record in enumerate(records):
        if key not in record:
            raise InputError(source, f"line {line_of(records, i)}.{key}",
                             f"named position {name!r} is not recorded (extraction.positions "
                             f"names it; write {key}: null where it is absent by design)")
        value = record[key]
        if value is None:
            absent[i] = True
        elif isinstance(value, bool) or not isinstance(value, int):
            raise InputError(source, f"line {line_of(records, i)}.{key}",
                             f"{value!r} is not a token index (an integer, or null if absent)")
        else:
            values[i] = value
    return values, absent


def absent_positions(positions: np.ndarray, names: Sequence[str], spec: Any,
                     meta: dict[str, np.ndarray] | None = None) -> dict[str, int]:
    """Positions absent by design (``pos_x: null``): name -> prompts lacking it. A stored
    position's count comes from its column of ``positions [n, P]`` (-1); with ``all`` (every
    token stored; its padding is not counted, ``lengths`` says where each prompt ends), from
    the ``pos_x`` columns of ``meta`` (-1 where null), which probes resolve per prompt."""
    if spec == "all":
        counts = {key[4:]: int((np.asarray(values) < 0).sum()) for key, values in
                  (meta or {}).items() if key.startswith("pos_")}
    else:
        counts = {str(name): int((positions[:, j] < 0).sum()) for j, name in enumerate(names)}
    return {name: count for name, count in counts.items() if count}
