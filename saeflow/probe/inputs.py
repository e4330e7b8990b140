"""Readers for the activation and SAE-code HDF5 files of ``docs/outputs.md``, as probes need them.

Every malformed or missing piece is an :class:`~saeflow.core.errors.InputError` naming the file and
the dataset/attribute. Codes are decoded from the documented CSR layout (rows ``i * P + p``).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from saeflow.core.errors import InputError
from saeflow.core.positions import token_index
from saeflow.formats.codes import read_codes, read_feature_stat, read_row_valid
from saeflow.formats.hdf5 import json_attr, read_array, reading

EMBED_HOOKS = ("hook_embed", "hook_pos_embed")
RESID_PRE0 = "blocks.0.hook_resid_pre"


PER_PROMPT_HELP = ("per prompt, when position_spec is 'all': final, a negative offset such "
                   "as -2, or a name x recorded as meta/pos_x")


def stored_columns(h5: h5py.File, requested: list[str | int], path: str | Path,
                      dataset: str) -> list[np.ndarray]:
    """The stored column of each requested position, per prompt: a list of ``[n]`` int64
    arrays, -1 where the prompt lacks that position (token absent or padding).

    A request is a stored position name (the same column for every prompt), or, when the
    file was extracted with ``position_spec: all`` (column index = token index), ``final``
    (``lengths - 1``), a negative offset ``-k`` (``lengths - k``) or a name ``x`` whose token
    index per prompt is ``meta/pos_x``. Anything else is an InputError naming the file.
    """
    names = [str(p) for p in json_attr(h5, "position_names", path)]
    spec = json.loads(h5.attrs["position_spec"]) if "position_spec" in h5.attrs else None
    stored = np.asarray(read_array(h5, "positions", path))  # [n, P] token index, -1 where absent
    n, n_pos = stored.shape
    lengths = None
    if "lengths" in h5:
        lengths = np.asarray(read_array(h5, "lengths", path), dtype=np.int64)
    out, unknown = [], []
    for raw in requested:
        name = str(raw)
        if name in names:
            cols = np.full(n, names.index(name), np.int64)
        elif spec == "all" and lengths is not None:
            token = token_index(name, lengths, lambda x: _named_position(h5, x),
                                allow_nonnegative=False)
            if token is None:
                unknown.append(name)
                continue
            cols = np.where((token >= 0) & (token < np.minimum(lengths, n_pos)), token, -1)
        else:
            unknown.append(name)
            continue
        rows = np.flatnonzero(cols >= 0)
        absent = np.ones(n, bool)
        absent[rows] = stored[rows, cols[rows]] < 0
        out.append(np.where(absent, -1, cols).astype(np.int64))
    if unknown or not requested:
        shown = names if len(names) <= 12 else [*names[:6], "...", *names[-3:]]
        raise InputError(path, "position_names", f"dataset {dataset!r} asks for positions "
                         f"{[str(r) for r in requested]}; unknown {unknown}: the file stores "
                         f"{shown}" + (f" ({PER_PROMPT_HELP})" if spec == "all" else ""))
    return out


def _named_position(h5: h5py.File, name: str) -> np.ndarray | None:
    return h5[f"meta/pos_{name}"][()] if f"meta/pos_{name}" in h5 else None


def _per_prompt(cols: int | np.ndarray, n: int) -> np.ndarray:
    """Column per prompt ``[n]`` from one stored column or an ``[n]`` array."""
    arr = np.asarray(cols, dtype=np.int64)
    return np.full(n, int(arr), np.int64) if arr.ndim == 0 else arr


def layers_of(hooks: list[str], template: str) -> dict[int, str]:
    """Map layer -> hook name for every stored hook that matches ``template``."""
    prefix, _, suffix = template.partition("{layer}")
    found = {}
    for hook in hooks:
        core = hook[len(prefix):len(hook) - len(suffix)] if suffix else hook[len(prefix):]
        if hook.startswith(prefix) and hook.endswith(suffix) and core.isdigit():
            found[int(core)] = hook
    return found


READ_BYTES = 1 << 26  # per HDF5 read when gathering per-prompt positions


def act_block(h5: h5py.File, hook: str, cols: int | np.ndarray, path: str | Path) -> np.ndarray:
    """Activations of ``hook`` at stored column ``cols``: one column for every prompt, or
    ``[n]`` columns (one per prompt, -1 = absent, giving a zero row). ``[n, d_model]`` float32.
    """
    key = f"acts/{hook}"
    if key not in h5:
        raise InputError(path, key, "hook not stored in the activation file")
    ds = h5[key]
    n = ds.shape[0]
    cols = _per_prompt(cols, n)
    with reading(path, key):
        return _gather(ds, cols)


def _gather(ds: h5py.Dataset, cols: np.ndarray) -> np.ndarray:
    n, _, d = ds.shape
    if cols.size and np.all(cols == cols[0]) and cols[0] >= 0:
        return np.asarray(ds[:, int(cols[0]), :], dtype=np.float32)
    out = np.zeros((n, d), np.float32)
    ok = np.flatnonzero(cols >= 0)
    if ok.size == 0:
        return out
    lo, hi = int(cols[ok].min()), int(cols[ok].max()) + 1  # read only the columns in use
    step = max(1, READ_BYTES // max(1, (hi - lo) * d * ds.dtype.itemsize))
    for start in range(0, n, step):
        sel = ok[(ok >= start) & (ok < start + step)]
        if sel.size:
            chunk = ds[int(sel[0]):int(sel[-1]) + 1, lo:hi, :]
            out[sel] = chunk[sel - sel[0], cols[sel] - lo]
    return out


def embedding_block(h5: h5py.File, cols: int | np.ndarray, path: str | Path
                    ) -> tuple[np.ndarray, str]:
    """The embedding output at column(s) ``cols`` (as :func:`act_block`): ``[n, d_model]``
    and the hook name used."""
    if all(f"acts/{h}" in h5 for h in EMBED_HOOKS):
        # resid_pre of block 0 is exactly embed + pos_embed; summing keeps that identity
        return (act_block(h5, EMBED_HOOKS[0], cols, path) +
                act_block(h5, EMBED_HOOKS[1], cols, path), "+".join(EMBED_HOOKS))
    if f"acts/{RESID_PRE0}" in h5:
        return act_block(h5, RESID_PRE0, cols, path), RESID_PRE0
    raise InputError(path, "acts", f"no embedding stored: need {RESID_PRE0} or "
                     f"{' and '.join(EMBED_HOOKS)}")


class CodeReader:
    """Reader for one hook's CSR codes in a code file (``docs/outputs.md`` layout)."""

    def __init__(self, h5: h5py.File, hook: str, n: int, n_positions: int, path: str | Path):
        self.path, self.hook, self.n, self.P = path, hook, n, n_positions
        self.matrix = read_codes(h5, hook, path)
        self.d_sae = self.matrix.shape[1]
        if self.matrix.shape[0] != n * n_positions:
            raise InputError(path, f"codes/{hook}", f"{self.matrix.shape[0]} rows, expected "
                             f"{n * n_positions} for {n} prompts x {n_positions} positions")
        self.row_valid = read_row_valid(h5, hook, path)

    def _rows(self, cols: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Code rows ``i * P + col_i`` ``[n]`` and whether a column was given ``[n]``."""
        cols = _per_prompt(cols, self.n)
        ok = cols >= 0
        return np.arange(self.n) * self.P + np.where(ok, cols, 0), ok

    def block(self, cols: int | np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
        """Codes at column(s) ``cols`` (one for all prompts, or ``[n]`` with -1 = absent):
        ``[n, d_sae]`` CSR float32 (absent rows empty) and row validity ``[n]``. Stays sparse:
        a dense block is ``n x d_sae`` floats, 256 KiB per prompt at d_sae 65,536."""
        rows, ok = self._rows(cols)
        x = self.matrix[rows]
        if not ok.all():
            x = sp.csr_matrix(sp.diags(ok.astype(np.float32)) @ x)
            x.eliminate_zeros()
        return x, self.row_valid[rows] & ok

    def feature(self, cols: int | np.ndarray, f: int, field_name: str
                ) -> tuple[np.ndarray, np.ndarray]:
        """Feature ``f`` at column(s) ``cols``: ``[n]`` float64 and validity ``[n]``."""
        if not 0 <= f < self.d_sae:
            raise InputError(self.path, field_name, f"feature {f} is beyond the SAE width "
                             f"(d_sae={self.d_sae}) of {self.hook}")
        rows, ok = self._rows(cols)
        y = np.asarray(self.matrix[rows, f].toarray()).ravel().astype(np.float64)
        return np.where(ok, y, 0.0), self.row_valid[rows] & ok

    def most_frequent_feature(self, h5: h5py.File) -> tuple[int, float]:
        """The feature with the highest ``stats/{hook}/firing_frequency`` and that frequency;
        an InputError when the statistic is missing or every feature is dead."""
        key = f"stats/{self.hook}/firing_frequency"
        if key not in h5:
            raise InputError(self.path, key, "missing: feature 'auto' needs the code statistics")
        freq = read_feature_stat(h5, self.hook, "firing_frequency", self.path)
        if freq.shape != (self.d_sae,) or not np.any(freq > 0):
            raise InputError(self.path, key, "no live feature (every firing frequency is 0)")
        f = int(np.argmax(freq))
        return f, float(freq[f])


def load_model_correct(path: str | Path) -> np.ndarray:
    """A per-prompt correctness array from ``.npy`` or a JSON list: ``[n]`` bool."""
    path = Path(path)
    try:
        raw = np.load(path) if path.suffix == ".npy" else np.asarray(json.loads(path.read_text()))
    except FileNotFoundError:
        raise InputError(path, "<file>", "does not exist") from None
    except (ValueError, json.JSONDecodeError) as err:
        raise InputError(path, "model_correct", f"unreadable ({err})") from None
    return as_bool(raw, path, "model_correct")


def as_bool(raw: np.ndarray, source: str | Path, field_name: str) -> np.ndarray:
    values = np.asarray(raw)
    if values.ndim != 1:
        raise InputError(source, field_name, f"expected a 1-D array, got shape {values.shape}")
    if values.dtype != bool:
        numeric = values.astype(np.float64) if values.dtype.kind in "iuf" else None
        if numeric is None or not np.all(np.isin(numeric, (0.0, 1.0))):
            raise InputError(source, field_name, "values must be booleans or 0/1 (NaN found or "
                             "other values)")
        values = numeric.astype(bool)
    return values


def meta_column(h5: h5py.File, column: str, path: str | Path) -> np.ndarray:
    key = f"meta/{column}"
    if key not in h5:
        raise InputError(path, key, "metadata column missing")
    ds = h5[key]
    with reading(path, key):
        return np.asarray(ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()])


def read_groups(path: str | Path, column: str, sample_index: np.ndarray) -> np.ndarray:
    """The ``probe.cv.group_by`` column ``meta/<column>`` of the activation file at the
    dataset's prompts ``sample_index`` ``[n]``: ``[n]`` group values (as stored). A missing
    column, one of the wrong length, or NaN groups are an InputError naming the file."""
    from saeflow.formats.hdf5 import open_h5, require

    with open_h5(path) as h5:
        key = f"meta/{column}"
        if key not in h5:
            stored = sorted(h5["meta"]) if "meta" in h5 else []
            raise InputError(path, key, f"missing: probe.cv.group_by names a prompt-file column "
                             f"the activation file does not store (it has {stored})")
        n = int(require(h5, "positions", path).shape[0])
        values = meta_column(h5, column, path)
    if values.shape != (n,):
        raise InputError(path, key, f"shape {values.shape}, expected [{n}] (one per prompt)")
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise InputError(path, key, "NaN group(s): probe.cv.group_by needs a group per prompt")
    if sample_index.size and not 0 <= int(sample_index.min()) <= int(sample_index.max()) < n:
        raise InputError(path, key, f"the dataset's prompts reach row {int(sample_index.max())}"
                         f", beyond the file's {n} prompts: not the dataset's activation file")
    return values[sample_index]
