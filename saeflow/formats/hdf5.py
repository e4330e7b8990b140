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


def write_concatenation(dst: h5py.File, key: str, sources: list[tuple[str, h5py.Dataset]]) -> None:
    """Dataset ``key`` of ``dst`` as an HDF5 virtual dataset: ``sources`` (file name relative
    to ``dst``'s folder, open dataset) end to end along axis 0, read in place, never copied.
    HDF5 resolves a relative source name against the virtual file's own folder, so the pair
    can be moved together."""
    first = sources[0][1]
    rows = sum(ds.shape[0] for _, ds in sources)
    layout = h5py.VirtualLayout(shape=(rows, *first.shape[1:]), dtype=first.dtype)
    start = 0
    for name, ds in sources:
        layout[start:start + ds.shape[0]] = h5py.VirtualSource(name, ds.name, shape=ds.shape)
        start += ds.shape[0]
    dst.create_virtual_dataset(key, layout)


def require_sources(h5: h5py.File, key: str, path: str | Path) -> None:
    """A virtual dataset ``key`` reads every source file it maps: HDF5 would silently return
    fill values for a shard that was deleted or moved, so a missing one is an InputError."""
    ds = h5[key]
    if not ds.is_virtual:
        return
    folder = Path(path).parent
    for source in {s.file_name for s in ds.virtual_sources()}:
        if not (folder / source).is_file():
            raise InputError(path, key, f"virtual dataset's shard {folder / source} is missing")
