"""The physical floor of a stage that streams compressed HDF5: what reading and writing its
bytes costs on this machine, measured in the same process as the stage, so that a ratio
``stage / baseline`` can be set against ``(baseline + I/O) / baseline``.

- :func:`lzf_write_seconds`: the stage's arrays written with its chunks and filters into an
  in-memory HDF5 file (core driver, no backing store): the compression, no disk.
- :func:`read_seconds`: reading datasets back (decompression included; the page cache holds
  the file, as it does for the stage that reads what the previous stage wrote).
- :func:`disk_write_seconds`: as many bytes as the stage's file holds, written in 1 MiB blocks
  to a new file beside it and closed (no fsync: the stage does not fsync either).

Each is the best of ``repeats`` runs (the floor: what the machine can do).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

MB = 1e6


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    """The shortest wall time of ``repeats`` calls of ``fn``."""
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def stored_datasets(path: Path, keys: Sequence[str]) -> dict[str, tuple[Any, dict[str, Any]]]:
    """``{key: (array, create_dataset options)}`` of datasets in ``path``: their values and the
    chunks, compression and shuffle they were written with."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        for key in keys:
            ds = f[key]
            out[key] = (ds[()], {"chunks": ds.chunks, "maxshape": ds.maxshape,
                                 "compression": ds.compression,
                                 "shuffle": ds.shuffle})
    return out


def lzf_write_seconds(arrays: Mapping[str, tuple[Any, dict[str, Any]]], repeats: int) -> float:
    """Seconds to write ``arrays`` (:func:`stored_datasets`) into an in-memory HDF5 file."""
    import h5py

    def write() -> None:
        with h5py.File("floor.h5", "w", driver="core", backing_store=False) as f:
            for key, (values, options) in arrays.items():
                f.create_dataset(key, data=values, **options)
            f.flush()

    return best_of(write, repeats)


def read_seconds(path: Path, keys: Sequence[str], repeats: int) -> float:
    """Seconds to read ``keys`` of ``path`` whole (decompressing them)."""
    import h5py

    def read() -> None:
        with h5py.File(path, "r") as f:
            for key in keys:
                f[key][()]

    return best_of(read, repeats)


def disk_write_seconds(n_bytes: int, directory: Path, repeats: int) -> float:
    """Seconds to write ``n_bytes`` (random, in 1 MiB blocks) to a new file in ``directory``."""
    block = os.urandom(1 << 20)
    target = directory / "floor-disk.bin"

    def write() -> None:
        with open(target, "wb") as f:
            for start in range(0, n_bytes, len(block)):
                f.write(block[: min(len(block), n_bytes - start)])
        target.unlink()

    return best_of(write, repeats)


def floor_detail(baseline_s: float, subject_s: float, io: Mapping[str, tuple[float, int]]
                 ) -> dict[str, Any]:
    """The floor record: per I/O part ``(seconds, bytes)`` its seconds and MB/s; the floor's
    ratio ``baseline / (baseline + I/O)`` (throughput against the baseline, as the figures
    are) and the subject's time over the floor's."""
    io_s = sum(s for s, _ in io.values())
    return {"io": {k: {"s": round(s, 4), "mb": round(b / MB, 2),
                       "mb_per_s": round(b / MB / s, 1) if s > 0 else None}
                   for k, (s, b) in io.items()},
            "floor_ratio": baseline_s / (baseline_s + io_s),
            "subject_over_floor": subject_s / (baseline_s + io_s)}
