"""The position grammar every stage shares: which token of each prompt a position names.

A position is ``final`` (the last token), an integer offset (``-k`` counts back from the end,
``-1`` being the final token; ``k >= 0`` is token ``k``, BOS being 0), or a name ``x`` whose
token index each prompt records (``pos_x`` in a prompt record, ``meta/pos_x`` once stored).
Extraction resolves positions against prompts to choose what to store; probing resolves them
against a stored file to find the stored column.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


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
