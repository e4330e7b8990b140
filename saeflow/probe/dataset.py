"""Probe datasets: the (X, y) table a probe is fitted on, its checks, and its HDF5 file.

Datasets are built by the strategies of :mod:`saeflow.probe.strategies`; probes
(:mod:`saeflow.probe.fit`) and effect sizes (:mod:`saeflow.probe.effects`) read them back.

File format (HDF5, one file per dataset; chosen to match the other stages' files):

| dataset | shape | dtype | meaning |
|---|---|---|---|
| ``X`` | ``[n, d]`` | float32 (gzip) | inputs (embedding and hidden-state datasets) |
| ``X/{indptr,indices,data}`` | ``[n + 1]``, ``[nnz]``, ``[nnz]`` | int64, int32/int64, float32
  (gzip) | inputs of SAE-code datasets (``input_kind: sae``) as CSR, group attribute ``shape``
  ``[n, d]``: a dense X of prompts x (d_sae x positions x layers) does not fit at real widths |
| ``y`` | ``[n]`` | int64 class index into ``class_names`` / float64 for feature targets |
| ``sample_index`` | ``[n]`` | int64 | prompt row in the source activation file |
| ``row_position`` | ``[n]`` | int32 | index into ``positions`` the row (target) was taken at;
  -1 for one-row-per-prompt strategies, whose positions are column blocks |
| ``columns/{hook,layer,position,unit}`` | ``[d]`` | int32 | per column: index into ``hooks``,
  layer (-1 = embedding), index into ``positions`` (-1 = the row's own position), hidden
  dimension or SAE feature index |

Root attributes: ``format_version`` (2; version 1 files, dense X only, are read too),
``name``, ``group`` (the per-layer family it came from, see
:func:`saeflow.core.layerspec.expand_per_layer`), ``prompt_set``, ``strategy``,
``input_kind`` (``embedding``, ``hidden``, ``sae``), ``target_kind`` (``label``/``continuous``),
``target`` (JSON: column, or layer/feature/hook), ``class_names``, ``class_values``,
``layers``, ``positions``, ``hooks`` (JSON lists), ``layer_spec``, ``input_dims`` (JSON
``{"hook@position": d}``), ``n_samples``, ``n_dropped`` (prompts/rows left out because a
position was absent or a class was not listed), ``row_layout`` (``prompt`` or
``prompt_position``), ``sources`` (JSON paths), ``provenance``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.sparse as sp

from saeflow.core.errors import InputError
from saeflow.core.io import atomic_path
from saeflow.formats.codes import checked_csr
from saeflow.formats.hdf5 import open_h5, read_array, reading
from saeflow.core.provenance import provenance_json

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1 differs only in having no CSR X
COLUMN_FIELDS = ("hook", "layer", "position", "unit")


@dataclass
class ProbeDataset:
    """One probe table. ``X`` ``[n, d]`` (dense, or CSR for SAE codes), ``y`` ``[n]``,
    ``columns[f]`` ``[d]``, ``meta`` attrs."""

    name: str
    X: np.ndarray | sp.csr_matrix
    y: np.ndarray
    sample_index: np.ndarray
    row_position: np.ndarray
    columns: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sparse(self) -> bool:
        return sp.issparse(self.X)

    @property
    def target_kind(self) -> str:
        return str(self.meta["target_kind"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names", []))

    @property
    def positions(self) -> list[str]:
        return list(self.meta["positions"])

    @property
    def layers(self) -> list[int]:
        return list(self.meta["layers"])


# ---------------------------------------------------------------------------- X, dense or CSR


def constant_columns(X: np.ndarray | sp.spmatrix) -> np.ndarray:
    """``[d]`` bool: columns holding one value in every row (dead SAE features, say)."""
    if sp.issparse(X):
        # max and min count the implicit zeros, so an all-zero column is constant
        return X.max(axis=0).toarray().ravel() == X.min(axis=0).toarray().ravel()
    return np.all(X == X[:1], axis=0)


def dense_column(X: np.ndarray | sp.spmatrix, c: int) -> np.ndarray:
    """Column ``c`` of ``X`` as a dense ``[n]`` array."""
    return X[:, [c]].toarray().ravel() if sp.issparse(X) else np.asarray(X[:, c])


def dense_row(X: np.ndarray | sp.spmatrix, r: int) -> np.ndarray:
    """Row ``r`` of ``X`` as a dense ``[d]`` array."""
    return X[[r]].toarray().ravel() if sp.issparse(X) else np.asarray(X[r])


# ---------------------------------------------------------------------------- validation


def check_dataset(ds: ProbeDataset, n_folds: int | None = None) -> None:
    """Raise ``InputError(ds.name, ...)`` on NaN/inf inputs, an empty or lone class, or fewer
    samples (per class for labels) than ``n_folds``. Called before writing and before fitting.
    """
    n = ds.X.shape[0]
    if ds.X.ndim != 2 or ds.y.shape != (n,) or ds.sample_index.shape != (n,):
        raise InputError(ds.name, "X", f"shape {ds.X.shape} does not match y {ds.y.shape}")
    if n == 0:
        raise InputError(ds.name, "X", "no samples")
    if ds.sparse:  # only the stored values can be NaN; the implicit ones are zeros
        bad_at = np.flatnonzero(~np.isfinite(ds.X.data))
        rows = np.searchsorted(ds.X.indptr, bad_at, side="right") - 1
        cols = ds.X.indices[bad_at]
    else:
        rows, cols = np.nonzero(~np.isfinite(ds.X))
    if rows.size:
        raise InputError(ds.name, "X", f"{rows.size} NaN/inf value(s), first at prompt "
                         f"{int(ds.sample_index[rows[0]])}, column {int(cols[0])}")
    if not np.all(np.isfinite(ds.y.astype(np.float64))):
        raise InputError(ds.name, "y", "NaN/inf target value(s)")
    if ds.target_kind == "label":
        check_classes(ds, n_folds)
    elif n_folds is not None and len(np.unique(ds.sample_index)) < n_folds:
        raise InputError(ds.name, "y", f"{len(np.unique(ds.sample_index))} prompt(s), fewer "
                         f"than the {n_folds} CV folds")


def check_classes(ds: ProbeDataset, n_folds: int | None = None,
                  source: tuple[str, str] | None = None, where: str = "") -> None:
    """Raise an InputError on an empty class, a lone class, or a class of fewer samples than
    ``n_folds``. ``source``: the (file, field) the labels come from, which the error names
    (default: the dataset and ``y``); ``where``: what else to name (the dataset and its
    config key), prefixed to the problem."""
    file, field_name = source or (ds.name, "y")
    where = f"{where}: " if where else ""
    counts = np.bincount(ds.y.astype(np.int64), minlength=len(ds.class_names))
    empty = [ds.class_names[c] for c in np.flatnonzero(counts == 0)]
    if empty:
        raise InputError(file, field_name, f"{where}empty class(es) {empty}: no sample has "
                         "them")
    if len(counts) < 2:
        raise InputError(file, field_name, f"{where}only one class "
                         f"{ds.class_names[:1]} among its {ds.y.size} sample(s): a probe needs "
                         "two or more")
    if n_folds is not None and counts.min() < n_folds:
        c = int(np.argmin(counts))
        raise InputError(file, field_name, f"{where}class {ds.class_names[c]!r} has "
                         f"{int(counts[c])} sample(s), fewer than the {n_folds} CV folds "
                         "(probe.cv.n_folds)")


# ---------------------------------------------------------------------------- file I/O


def write_probe_dataset(ds: ProbeDataset, path: str | Path,
                        config: dict[str, Any] | None = None) -> None:
    """Write ``ds`` atomically in the format of this module's docstring (checked first)."""
    check_dataset(ds)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        _write_X(h5, ds.X)
        y_dtype = np.int64 if ds.target_kind == "label" else np.float64
        h5.create_dataset("y", data=ds.y.astype(y_dtype))
        h5.create_dataset("sample_index", data=ds.sample_index.astype(np.int64))
        h5.create_dataset("row_position", data=ds.row_position.astype(np.int32))
        for key in COLUMN_FIELDS:
            h5.create_dataset(f"columns/{key}", data=ds.columns[key].astype(np.int32))
        for key, value in ds.meta.items():
            h5.attrs[key] = value if isinstance(value, (int, str)) else json.dumps(value)
        h5.attrs.update(format_version=FORMAT_VERSION, name=ds.name,
                        provenance=provenance_json(config))


def _write_X(h5: h5py.File, X: np.ndarray | sp.spmatrix) -> None:
    """``X`` dense, or as the CSR group ``X/{indptr,indices,data}`` with attribute ``shape``."""
    if not sp.issparse(X):
        h5.create_dataset("X", data=X.astype(np.float32), compression="gzip",
                          chunks=(min(256, X.shape[0]), X.shape[1]))
        return
    X = sp.csr_matrix(X, dtype=np.float32)
    if not X.has_canonical_format:  # sorted, unique column indices per row; the caller's
        X = X.copy()                # matrix is left as it was
        X.sum_duplicates()
    g = h5.create_group("X")
    g.attrs["shape"] = np.asarray(X.shape, np.int64)
    index_dtype = np.int32 if X.shape[1] <= np.iinfo(np.int32).max else np.int64
    g.create_dataset("indptr", data=X.indptr.astype(np.int64))
    # gzip needs a chunked dataset, which an empty one (no non-zero at all) cannot be
    comp = "gzip" if X.nnz else None
    g.create_dataset("indices", data=X.indices.astype(index_dtype), compression=comp)
    g.create_dataset("data", data=X.data, compression=comp)


def _read_X(h5: h5py.File, path: str | Path) -> np.ndarray | sp.csr_matrix:
    """The inverse of :func:`_write_X`; inconsistent CSR arrays are an InputError."""
    node = h5["X"]
    with reading(path, "X"):
        if isinstance(node, h5py.Dataset):
            return node[()]
        for key in ("indptr", "indices", "data"):
            if key not in node:
                raise InputError(path, f"X/{key}", "missing: X is a group but not CSR")
        shape = tuple(int(v) for v in node.attrs["shape"])
        return checked_csr(node["indptr"][()], node["indices"][()], node["data"][()], shape,
                           path, "X")


_JSON_ATTRS = ("target", "class_names", "class_values", "layers", "positions", "hooks",
               "input_dims", "sources")


def read_probe_dataset(path: str | Path) -> ProbeDataset:
    """Read a file written by :func:`write_probe_dataset`; a malformed one is an InputError."""
    with open_h5(path) as h5:
        for key in ("X", "y", "sample_index", "row_position",
                    *(f"columns/{c}" for c in COLUMN_FIELDS)):
            if key not in h5:
                raise InputError(path, key, "missing: not a probe dataset file")
        version = int(h5.attrs.get("format_version", -1))
        if version not in READABLE_VERSIONS:
            raise InputError(path, "attrs/format_version", f"{version}, expected one of "
                             f"{list(READABLE_VERSIONS)}")
        meta: dict[str, Any] = {}
        for key, value in h5.attrs.items():
            if key == "provenance":
                continue
            value = value.item() if hasattr(value, "item") else value
            meta[key] = json.loads(value) if key in _JSON_ATTRS else value
        ds = ProbeDataset(str(meta.get("name", Path(path).stem)), _read_X(h5, path),
                          read_array(h5, "y", path), read_array(h5, "sample_index", path),
                          read_array(h5, "row_position", path),
                          {c: read_array(h5, f"columns/{c}", path) for c in COLUMN_FIELDS}, meta)
    return ds
