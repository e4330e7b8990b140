"""Reader of the SAE-codes file (``codes/{prompt_set}.h5``, docs/outputs.md): per hook, CSR
codes over rows ``prompt * P + position``. Its writer is :func:`saeflow.encode.encode_to_hdf5`,
which streams batches into it. Every stage reads codes through :func:`read_codes`."""

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
