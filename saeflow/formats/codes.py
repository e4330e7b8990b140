"""Reader of the SAE-codes file (``codes/{prompt_set}.h5``, docs/outputs.md): per hook, CSR
codes over rows ``prompt * P + position``. Its writer is :func:`saeflow.encode.encode_to_hdf5`,
which streams batches into it. Every stage reads codes through :func:`read_codes` (a few
latents' columns, streamed: :func:`read_code_columns`)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from saeflow.core.errors import InputError
from saeflow.formats.hdf5 import open_h5, read_array, reading, require, require_sources


def read_codes(source: str | Path | h5py.File, hook: str, path: str | Path | None = None
               ) -> sp.csr_matrix:
    """One hook's codes as a ``[n * P, d_sae]`` CSR matrix (float32 values), checked against
    the layout. ``source`` is a path or an open file (then ``path`` names it in errors)."""
    if not isinstance(source, h5py.File):
        with open_h5(source) as h5:
            return read_codes(h5, hook, source)
    path = path or source.filename
    key = f"codes/{hook}"
    group = require(source, key, path, "codes group (no SAE codes stored for this hook)")
    with reading(path, key):
        n_rows = int(group.attrs["n_prompts"]) * int(group.attrs["n_positions"])
        d_sae = int(group.attrs["d_sae"])
    for member in ("indices", "values"):
        require(source, f"{key}/{member}", path)
        require_sources(source, f"{key}/{member}", path)
    indptr = np.asarray(read_array(source, f"{key}/indptr", path), dtype=np.int64)
    indices = np.asarray(read_array(source, f"{key}/indices", path), dtype=np.int64)
    values = np.asarray(read_array(source, f"{key}/values", path), dtype=np.float32)
    if indptr.shape != (n_rows + 1,):
        raise InputError(path, f"{key}/indptr", f"length {indptr.shape[0]}, expected {n_rows + 1} "
                         f"for {group.attrs['n_prompts']} prompts x {group.attrs['n_positions']} "
                         "positions")
    return checked_csr(indptr, indices, values, (n_rows, d_sae), path, key, "feature")


def checked_csr(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray,
                shape: tuple[int, int], path: str | Path, key: str, column: str = "column"
                ) -> sp.csr_matrix:
    """A ``shape`` CSR matrix (float32 values) from stored arrays, or an InputError naming
    ``path`` and ``key`` when they do not form one (the code file's and the probe dataset's
    CSR groups both come through here); ``column`` names a column in the message."""
    indptr = np.asarray(indptr, dtype=np.int64)
    if indptr.shape != (shape[0] + 1,) or indptr[0] != 0:
        raise InputError(path, f"{key}/indptr", f"length {indptr.shape[0]}, expected "
                         f"{shape[0] + 1} (one more than the rows), starting at 0")
    if indices.shape != values.shape or indptr[-1] != len(values) or np.any(np.diff(indptr) < 0):
        raise InputError(path, key, f"inconsistent CSR arrays (indptr ends at {indptr[-1]}, "
                         f"{len(indices)} indices, {len(values)} values)")
    if len(indices) and (indices.min() < 0 or indices.max() >= shape[1]):
        raise InputError(path, f"{key}/indices", f"{column} index outside 0..{shape[1] - 1}")
    return sp.csr_matrix((np.asarray(values, dtype=np.float32), indices, indptr), shape=shape)


def read_row_valid(h5: h5py.File, hook: str, path: str | Path) -> np.ndarray:
    """``[n * P]`` bool: which code rows are real tokens (not padding or absent positions)."""
    return np.asarray(read_array(h5, f"codes/{hook}/row_valid", path), dtype=bool)


def read_feature_stat(h5: h5py.File, hook: str, stat: str, path: str | Path) -> np.ndarray:
    """``stats/{hook}/{stat}`` ``[d_sae]`` float64 (``firing_frequency``, ``mean_activation``,
    ``mean_active``, ``max_activation``)."""
    return np.asarray(read_array(h5, f"stats/{hook}/{stat}", path), dtype=np.float64)


def read_code_columns(source: str | Path, hook: str, columns: np.ndarray,
                      chunk: int = 1 << 22) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The non-zeros of a few ``columns`` (latents) of one hook's codes, streamed: the stored
    ``indices``/``values`` are read once in ``chunk``-entry slices and only the wanted columns'
    entries are kept, so memory is the chunk plus what is kept, not the whole matrix
    (:func:`read_codes` holds every non-zero). ``columns``: ``[k]`` distinct ints below
    ``d_sae`` (the caller checks them against :func:`code_shape`). Returns ``slot [m]`` int32
    (index into ``columns``), ``rows [m]`` int64, ``values [m]`` float32, sorted by slot then
    row, and ``d_sae``."""
    with open_h5(source) as h5:
        key = f"codes/{hook}"
        group = require(h5, key, source, "codes group (no SAE codes stored for this hook)")
        with reading(source, key):
            n_rows = int(group.attrs["n_prompts"]) * int(group.attrs["n_positions"])
            d_sae = int(group.attrs["d_sae"])
        indptr = np.asarray(read_array(h5, f"{key}/indptr", source), dtype=np.int64)
        if indptr.shape != (n_rows + 1,) or indptr[0] != 0 or np.any(np.diff(indptr) < 0):
            raise InputError(source, f"{key}/indptr", f"length {indptr.shape[0]}, expected "
                             f"{n_rows + 1}, starting at 0 and never decreasing")
        lookup = np.full(d_sae, -1, dtype=np.int32)
        lookup[np.asarray(columns, dtype=np.int64)] = np.arange(len(columns), dtype=np.int32)
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for member in ("indices", "values"):
            require(h5, f"{key}/{member}", source)
            require_sources(h5, f"{key}/{member}", source)
        indices_ds, values_ds = h5[f"{key}/indices"], h5[f"{key}/values"]
        if indices_ds.shape != values_ds.shape or indices_ds.shape[0] != indptr[-1]:
            raise InputError(source, key, f"inconsistent CSR arrays (indptr ends at {indptr[-1]}, "
                             f"{indices_ds.shape[0]} indices, {values_ds.shape[0]} values)")
        for start in range(0, int(indptr[-1]), chunk):
            stop = min(start + chunk, int(indptr[-1]))
            with reading(source, f"{key}/indices"):
                idx = indices_ds[start:stop]
            if len(idx) and (idx.min() < 0 or idx.max() >= d_sae):
                raise InputError(source, f"{key}/indices", f"feature index outside 0..{d_sae - 1}")
            keep = np.flatnonzero(lookup[idx] >= 0)
            if not len(keep):
                continue
            with reading(source, f"{key}/values"):
                vals = values_ds[start:stop][keep]
            rows = np.searchsorted(indptr, keep + start, side="right") - 1
            parts.append((lookup[idx[keep]], rows, vals.astype(np.float32)))
    if parts:
        slot, rows, vals = (np.concatenate(p) for p in zip(*parts, strict=True))
    else:
        slot, rows, vals = (np.zeros(0, np.int32), np.zeros(0, np.int64),
                            np.zeros(0, np.float32))
    order = np.lexsort((rows, slot))
    return slot[order], rows[order], vals[order], d_sae


def code_shape(source: str | Path, hook: str) -> tuple[int, int, int]:
    """``(n_prompts, n_positions, d_sae)`` of one hook's codes (``codes/{hook}`` attributes)."""
    with open_h5(source) as h5:
        key = f"codes/{hook}"
        group = require(h5, key, source, "codes group (no SAE codes stored for this hook)")
        with reading(source, key):
            return (int(group.attrs["n_prompts"]), int(group.attrs["n_positions"]),
                    int(group.attrs["d_sae"]))
