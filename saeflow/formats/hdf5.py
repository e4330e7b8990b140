"""The checked path into every HDF5 file saeflow reads: a missing, truncated or damaged file,
a missing dataset or attribute, or a chunk that fails to decompress is an InputError naming
the file and the dataset, never an h5py traceback."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py

from saeflow.core.errors import InputError


def open_h5(path: str | Path) -> h5py.File:
    """Open for reading; not there, not HDF5 or truncated is one line naming the file."""
    if Path(path).is_dir():
        raise InputError(path, "<file>", "is a folder, not an HDF5 file")
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise InputError(path, "<file>", "does not exist") from None
    except OSError as err:
        raise InputError(path, "<file>", f"not a readable HDF5 file (truncated or damaged?): "
                         f"{str(err).splitlines()[0]}") from None


@contextlib.contextmanager
def reading(path: str | Path, field: str) -> Iterator[None]:
    """Around reads of ``field``: a damaged chunk (h5py's OSError) or a missing member
    (KeyError) becomes an InputError naming the file and the dataset."""
    try:
        yield
    except InputError:
        raise
    except KeyError as err:
        raise InputError(path, field, f"missing ({err.args[0] if err.args else err})") from None
    except (OSError, ValueError) as err:
        raise InputError(path, field, f"unreadable, the file is damaged: "
                         f"{str(err).splitlines()[0]}") from None


def require(h5: h5py.File, key: str, path: str | Path, kind: str = "dataset") -> Any:
    """``h5[key]``, or an InputError saying the file lacks it."""
    if key not in h5:
        raise InputError(path, key, f"{kind} missing")
    with reading(path, key):
        return h5[key]


def read_array(h5: h5py.File, key: str, path: str | Path) -> Any:
    """The whole of dataset ``key`` as a NumPy array, through :func:`reading`."""
    ds = require(h5, key, path)
    with reading(path, key):
        return ds[()]


def json_attr(h5: h5py.File, key: str, path: str | Path) -> Any:
    """A root attribute holding JSON (``hooks``, ``position_names``, ...)."""
    if key not in h5.attrs:
        raise InputError(path, f"attrs/{key}", "missing root attribute")
    with reading(path, f"attrs/{key}"):
        raw = h5.attrs[key]
    try:
        return json.loads(raw)
    except (TypeError, ValueError) as err:
        raise InputError(path, f"attrs/{key}", f"not JSON ({err})") from None
