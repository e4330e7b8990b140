"""The checked path into every HDF5 file saeflow reads: a missing, truncated or damaged file,
a missing dataset or attribute, or a chunk that fails to decompress is an InputError naming
the file and the dataset, never an h5py traceback."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py

from saeflow.core.errors import InputError


def open_h5(path: str | Path) -> h5py.File:
    """Open for reading; not there, not HDF5 or truncated is one line naming the file."""
    if Path(path).is_dir():
        raise InputError(path, "<file>", "is a folder, not an HDF5 file")
    try:
        h5 = h5py.File(path, "r")
    except FileNotFoundError:
        raise InputError(path, "<file>", "does not exist") from None
    except OSError as err:
        raise InputError(path, "<file>", f"not a readable HDF5 file (truncated or damaged?): "
                         f"{str(err).splitlines()[0]}") from None
    try:
        check_shards(h5, path)
    except BaseException:
        h5.close()
        raise
    return h5


# A gathered file (activations or codes of a sharded prompt set) reads its shards in place,
# through virtual datasets. HDF5 reads a missing shard as fill values and a changed one as
# whatever it now holds, so each shard's size, mtime and sha256 are recorded when gathering
# and checked on every open: a missing shard or a changed size is an error at once; a changed
# mtime (a copy, a touch) costs one sha256 of that shard, an error if its bytes differ.
# verify_shards checks every sha256 regardless (a shard rewritten to the same size, with
# its mtime restored).
SHARD_FILES = "shard_files"


def shard_attrs(shard_paths: Sequence[str | Path], out_path: str | Path) -> dict[str, str]:
    """The root attributes of a gathered file (to be written to ``out_path``) that name its
    shards: ``shards`` (the paths given) and :data:`SHARD_FILES` (each shard's name relative
    to ``out_path``'s folder, size, mtime and sha256). Read before the gathered file is
    opened for writing: hashing large shards takes a while."""
    folder = Path(out_path).resolve().parent
    records = []
    for shard in shard_paths:
        stat = Path(shard).stat()
        records.append({"file": os.path.relpath(Path(shard).resolve(), folder),
                        "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                        "sha256": _sha256(shard)})
    return {"shards": json.dumps([str(p) for p in shard_paths]),
            SHARD_FILES: json.dumps(records)}


def check_shards(h5: h5py.File, path: str | Path, full: bool = False) -> int:
    """Every shard a gathered file records is there and unchanged (see :data:`SHARD_FILES`;
    ``full``: every sha256 compared); returns how many shards it records (0: not gathered)."""
    if SHARD_FILES not in h5.attrs:
        return 0
    records = json_attr(h5, SHARD_FILES, path)
    folder = Path(path).parent
    for record in records:
        shard = folder / record["file"]
        try:
            stat = shard.stat()
        except FileNotFoundError:
            raise InputError(path, "shards", f"shard {shard} is missing (deleted after this file "
                             "was gathered from it): run snakemake again to rebuild it") from None
        remedy = "delete the shard and run snakemake again to rebuild it"
        if stat.st_size != record["size"]:
            raise InputError(shard, "<file>", f"{stat.st_size} bytes, {record['size']} when "
                             f"{path} was gathered from it: the shard changed; {remedy}")
        if full or stat.st_mtime_ns != record["mtime_ns"]:
            digest = _sha256(shard)
            if digest != record["sha256"]:
                raise InputError(shard, "<file>", f"contents changed since {path} was gathered "
                                 f"from it (sha256 {digest[:12]}..., recorded "
                                 f"{record['sha256'][:12]}...); {remedy}")
    return len(records)


def verify_shards(path: str | Path) -> int:
    """The explicit check of a gathered file: every shard's sha256 against the one recorded
    when gathering (an InputError naming the first that differs); returns the shard count."""
    with open_h5(path) as h5:
        return check_shards(h5, path, full=True)


def _sha256(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


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
