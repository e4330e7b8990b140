"""Compare two runs' results/ trees: the numbers every output holds, not its provenance.

Used by the SLURM and kill-and-resume tests to check that a run through another path gives
exactly the results of the plain local run (same seeds, same CPU, same thread counts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

# Not results: run bookkeeping, and files whose content names the run's directory or time.
SKIPPED_DIRS = {"logs", "benchmarks", "tokenizer"}
SKIPPED_NAMES = {"runner_cfg.json", ".snakemake_timestamp"}
# provenance: versions, commit, time; cost: exact.h5's seconds per patched row, a timing of
# the machine that ran it (saeflow.patch.exhaustive), recorded for the user, never a result.
VOLATILE_KEYS = {"provenance", "cost"}


def result_files(results: Path) -> list[Path]:
    """Paths (relative to ``results``) of every result file a run wrote, sorted."""
    files = []
    for path in results.rglob("*"):
        rel = path.relative_to(results)
        if path.is_file() and not SKIPPED_DIRS & set(rel.parts[:-1]) and rel.name not in SKIPPED_NAMES:
            files.append(rel)
    return sorted(files)


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _assert_same_tree(a: Any, b: Any, where: str) -> None:
    """Equal structure, equal strings/bools, equal numbers (NaN equal to NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{where}: keys differ: {sorted(a.keys() ^ b.keys())}"
        for k in a:
            _assert_same_tree(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _assert_same_h5(a: Path, b: Path, where: str) -> None:
    import h5py

    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        names_a, names_b = [], []
        fa.visit(names_a.append)
        fb.visit(names_b.append)
        assert names_a == names_b, f"{where}: objects differ: {sorted(set(names_a) ^ set(names_b))}"
        for name in ["/", *names_a]:
            attrs_a = {k: v for k, v in fa[name].attrs.items() if k not in VOLATILE_KEYS}
            attrs_b = {k: v for k, v in fb[name].attrs.items() if k not in VOLATILE_KEYS}
            assert attrs_a.keys() == attrs_b.keys(), f"{where}:{name}: attributes differ"
            for k in attrs_a:
                assert np.array_equal(np.asarray(attrs_a[k]), np.asarray(attrs_b[k])), f"{where}:{name}@{k}"
            if isinstance(fa[name], h5py.Dataset):
                x, y = fa[name][()], fb[name][()]
                assert np.shape(x) == np.shape(y), f"{where}:{name}: shapes {np.shape(x)} != {np.shape(y)}"
                equal_nan = np.asarray(x).dtype.kind in "fc"
                assert np.array_equal(x, y, equal_nan=equal_nan), f"{where}:{name}: values differ"


def _assert_same_tensors(a: Path, b: Path, where: str) -> None:
    if a.suffix == ".safetensors":
        from safetensors.numpy import load_file

        ta, tb = load_file(a), load_file(b)
    else:
        import torch

        ta = {k: v.numpy() for k, v in torch.load(a, map_location="cpu").items()}
        tb = {k: v.numpy() for k, v in torch.load(b, map_location="cpu").items()}
    assert ta.keys() == tb.keys(), f"{where}: tensors differ: {sorted(ta.keys() ^ tb.keys())}"
    for k in ta:
        assert np.array_equal(ta[k], tb[k]), f"{where}:{k}: values differ"


def assert_same_results(a: Path, b: Path, subset: bool = False) -> list[Path]:
    """Assert results trees ``a`` and ``b`` hold the same files and the same numbers
    (``subset``: ``b`` ran only some targets, so its files need only all be in ``a``).

    JSON and YAML are compared as trees without ``provenance``; HDF5 dataset by dataset and
    attribute by attribute with ``np.array_equal``; model and SAE weights tensor by tensor.
    Figures must exist in both (PNG bytes are not compared). Returns the files compared.
    """
    import yaml

    files_a, files_b = result_files(a), result_files(b)
    if subset:
        assert files_b and set(files_b) <= set(files_a), f"only in b: {sorted(set(files_b) - set(files_a))}"
    else:
        assert files_a == files_b, f"files differ: {sorted(set(files_a) ^ set(files_b))}"
    for rel in files_b:
        pa, pb, where = a / rel, b / rel, str(rel)
        if rel.suffix == ".json":
            _assert_same_tree(_strip(json.loads(pa.read_text())), _strip(json.loads(pb.read_text())), where)
        elif rel.suffix in (".yaml", ".yml"):
            _assert_same_tree(_strip(yaml.safe_load(pa.read_text())), _strip(yaml.safe_load(pb.read_text())), where)
        elif rel.suffix == ".jsonl":
            assert pa.read_text() == pb.read_text(), f"{where}: prompts differ"
        elif rel.suffix == ".h5":
            _assert_same_h5(pa, pb, where)
        elif rel.suffix in (".safetensors", ".pt"):
            _assert_same_tensors(pa, pb, where)
        elif rel.suffix == ".csv":
            assert pa.read_text() == pb.read_text(), f"{where}: table differs"
    return files_a
