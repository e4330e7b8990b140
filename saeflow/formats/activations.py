"""Reader of the activations file (``activations/{prompt_set}.h5``, docs/outputs.md); its
writer is :func:`saeflow.extract.extract_to_hdf5`, which streams batches into it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from saeflow.core.errors import InputError
from saeflow.formats.hdf5 import (
    json_attr,
    open_h5,
    read_array,
    require,
    require_sources,
)

REQUIRED = ("tokens", "lengths", "positions")


def open_activations(path: str | Path, hooks: Sequence[str] | None = None) -> h5py.File:
    """Open an activations file and check its shape before any work: the base datasets, the
    ``hooks`` attribute, and an ``acts/{hook}`` dataset ``[n, P, d]`` for every hook listed
    there (and each of ``hooks``, when given), with every shard file of a sharded set
    (virtual datasets, :func:`saeflow.extract.gather_activations_stage`). The caller closes it."""
    h5 = open_h5(path)
    try:
        for key in REQUIRED:
            require(h5, key, path)
        n, n_pos = h5["positions"].shape
        stored = json_attr(h5, "hooks", path)
        missing = [h for h in hooks or () if h not in stored]
        if missing:
            raise InputError(path, "acts", f"no activations for hook {missing[0]!r} "
                             f"(the file stores {stored})")
        for hook in stored:
            ds = require(h5, f"acts/{hook}", path)
            require_sources(h5, f"acts/{hook}", path)
            if ds.ndim != 3 or ds.shape[:2] != (n, n_pos):
                raise InputError(path, f"acts/{hook}", f"shape {ds.shape}, expected "
                                 f"[{n}, {n_pos}, d] as tokens and positions say")
    except BaseException:
        h5.close()
        raise
    return h5


def require_stored_answers(h5: h5py.File, path: str | Path, needed_by: str) -> None:
    """``meta/answer_token_id`` is stored (every prompt had an ``answer``); else an InputError
    naming the prompt file and the lines without one (the ``answers`` attribute extraction
    records), so a consumer that needs answers (``needed_by``) says where to add them."""
    if "meta/answer_token_id" in h5:
        return
    if "answers" not in h5.attrs:  # written before extraction recorded them
        raise InputError(path, "meta/answer_token_id", f"missing: {needed_by} needs an "
                         "'answer' in every prompt of the prompt set")
    record = json_attr(h5, "answers", path)
    lines, missing, n = record["missing_lines"], record["missing"], record["n_prompts"]
    shown = ", ".join(str(line) for line in lines) + (", ..." if missing > len(lines) else "")
    field = f"line {lines[0]}.answer" if lines else "answer"
    raise InputError(record["prompts"], field, f"missing: {needed_by} needs an answer in "
                     f"every prompt and {missing} of {n} prompts lack one (lines without: "
                     f"{shown}; extracted into {path})")


def read_tokens_positions(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``tokens [n, T]`` and ``positions [n, P]`` of an activations file."""
    with open_h5(path) as h5:
        return read_array(h5, "tokens", path), read_array(h5, "positions", path)
