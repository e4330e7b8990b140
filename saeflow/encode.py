"""SAE encoding: turn stored activations into sparse SAE codes (CSR in HDF5) plus per-feature
statistics. Layout: docs/outputs.md. Streams row batches, so memory is bounded by the batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm import tqdm

from saeflow.core.bundle import ModelSAEs
from saeflow.core.errors import InputError
from saeflow.core.io import atomic_path
from saeflow.core.provenance import provenance_json
from saeflow.formats.activations import open_activations
from saeflow.formats.hdf5 import read_array, reading, require


class _FeatureStats:
    """Running firing count, sum and max per feature over valid rows."""

    def __init__(self, d_sae: int):
        self.count = np.zeros(d_sae, dtype=np.int64)
        self.total = np.zeros(d_sae, dtype=np.float64)
        self.max = np.zeros(d_sae, dtype=np.float64)
        self.rows = 0

    def update(self, indices: np.ndarray, values: np.ndarray, n_rows: int) -> None:
        # bincount and scatter_reduce, not np.add.at / np.maximum.at: those are ~20x slower.
        self.rows += n_rows
        d_sae = len(self.count)
        self.count += np.bincount(indices, minlength=d_sae)
        self.total += np.bincount(indices, weights=values, minlength=d_sae)
        batch_max = torch.zeros(d_sae, dtype=torch.float64).scatter_reduce_(
            0, torch.from_numpy(indices.astype(np.int64)), torch.from_numpy(values).double(),
            "amax")
        np.maximum(self.max, batch_max.numpy(), out=self.max)

    def arrays(self) -> dict[str, np.ndarray]:
        rows = max(self.rows, 1)
        return {"firing_frequency": self.count / rows, "mean_activation": self.total / rows,
                "mean_active": np.divide(self.total, self.count, out=np.zeros_like(self.total),
                                         where=self.count > 0),
                "max_activation": self.max}


def csr_from_dense(codes: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``codes [rows, d_sae]`` -> (per-row counts, int32 indices, float32 values), row-major."""
    if codes.device.type == "cpu":
        # NumPy's nonzero of a boolean mask is ~2x quicker than torch.nonzero on CPU; row
        # counts come from a binary search of the sorted flat indices, not a pass over rows.
        dense = codes.detach().float().numpy()
        n_rows, d_sae = dense.shape
        flat = np.flatnonzero(dense != 0)
        bounds = np.searchsorted(flat, np.arange(n_rows + 1, dtype=np.int64) * d_sae)
        return (np.diff(bounds).astype(np.int64), (flat % d_sae).astype(np.int32),
                dense.reshape(-1)[flat])
    rows, cols = torch.nonzero(codes, as_tuple=True)
    counts = torch.bincount(rows, minlength=codes.shape[0])
    values = codes[rows, cols]
    return counts.cpu().numpy(), cols.to(torch.int32).cpu().numpy(), values.float().cpu().numpy()


@torch.no_grad()
def encode_to_hdf5(acts_path: str | Path, out_path: str | Path,
                   sae_for_hook: Mapping[str, Callable[[], Any]], *, batch_rows: int = 4096,
                   device: str = "cpu", config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Encode every hook of ``acts_path`` with its SAE; ``sae_for_hook[hook]()`` loads it lazily
    (one SAE in memory at a time). Rows are (prompt, stored position) flattened row-major."""
    summary: dict[str, Any] = {}
    with open_activations(acts_path, list(sae_for_hook)) as src, atomic_path(out_path) as tmp, \
            h5py.File(tmp, "w") as dst:
        valid = (read_array(src, "positions", acts_path) >= 0).reshape(-1)
        for hook in sae_for_hook:
            sae = sae_for_hook[hook]()
            if getattr(sae, "hook_z_reshaping_mode", False):
                sae.turn_off_forward_pass_hook_z_reshaping()  # the file holds hook_z flat
            acts = src[f"acts/{hook}"]
            n, n_pos, d_model = acts.shape
            if sae.cfg.d_in != d_model:
                raise InputError(acts_path, f"acts/{hook}",
                                 f"width {d_model} does not match the SAE's d_in {sae.cfg.d_in}")
            group = dst.create_group(f"codes/{hook}")
            # Byte-shuffling first: small int32 indices then compress ~2x better, and faster.
            indices_ds = group.create_dataset("indices", (0,), maxshape=(None,), dtype=np.int32,
                                              chunks=(1 << 16,), compression="lzf", shuffle=True)
            values_ds = group.create_dataset("values", (0,), maxshape=(None,), dtype=np.float32,
                                             chunks=(1 << 16,), compression="lzf", shuffle=True)
            counts = np.zeros(n * n_pos, dtype=np.int64)
            stats = _FeatureStats(sae.cfg.d_sae)
            prompts_per_batch = max(1, batch_rows // n_pos)
            for start in tqdm(range(0, n, prompts_per_batch), desc=f"encode {hook}", mininterval=2.0):
                stop = min(start + prompts_per_batch, n)
                # Only real positions are encoded: padding rows stay empty at no cost.
                row_valid = valid[start * n_pos: stop * n_pos]
                with reading(acts_path, f"acts/{hook}"):
                    x = torch.from_numpy(acts[start:stop].reshape(-1, d_model)[row_valid])
                codes = sae.encode(x.to(device=device, dtype=torch.float32))
                batch_counts, idx, vals = csr_from_dense(codes)
                counts[start * n_pos: stop * n_pos][row_valid] = batch_counts
                old = indices_ds.shape[0]
                indices_ds.resize((old + len(idx),))
                values_ds.resize((old + len(idx),))
                indices_ds[old:], values_ds[old:] = idx, vals
                stats.update(idx, vals, int(row_valid.sum()))
            group["indptr"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            group["row_valid"] = valid
            group.attrs.update({"d_sae": sae.cfg.d_sae, "n_prompts": n, "n_positions": n_pos})
            for key, values in stats.arrays().items():
                dst[f"stats/{hook}/{key}"] = values
            summary[hook] = {"nnz": int(counts.sum()), "valid_rows": int(valid.sum()),
                             "mean_l0": float(counts.sum() / max(int(valid.sum()), 1)),
                             "d_sae": int(sae.cfg.d_sae)}
            del sae
        dst.attrs.update({"provenance": provenance_json(config),
                          "hooks": json.dumps(list(sae_for_hook)),
                          "position_names": src.attrs["position_names"]})
    return summary


def gather_codes_stage(shard_paths: list[str | Path], out_path: str | Path,
                 config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rule ``gather_codes``: the codes of one prompt set's shards (``encode_shard``, in order)
    as one codes file. ``indices`` and ``values`` are virtual datasets over the shards' own
    (never copied); ``indptr`` is rebuilt with each shard's offset and the feature statistics
    are pooled from each shard's (counts and sums weighted by its valid rows, max of maxima),
    equal to one pass over all rows up to float64 rounding."""
    import os

    from saeflow.formats.codes import read_row_valid
    from saeflow.formats.hdf5 import open_h5, shard_attrs, write_concatenation

    out_path = Path(out_path)
    names = [os.path.relpath(Path(p).resolve(), out_path.resolve().parent) for p in shard_paths]
    shards = [open_h5(p) for p in shard_paths]
    try:
        hooks = json.loads(shards[0].attrs["hooks"])
        for shard, path in zip(shards, shard_paths, strict=True):
            if shard.attrs["hooks"] != shards[0].attrs["hooks"]:
                raise InputError(path, "attrs/hooks", f"differs from {shard_paths[0]}'s")
        summary: dict[str, Any] = {}
        recorded = shard_attrs(shard_paths, out_path)
        with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as dst:
            for hook in hooks:
                key = f"codes/{hook}"
                groups = [require(s, key, p, "codes group") for s, p in zip(shards, shard_paths)]
                indptrs, offset = [np.zeros(1, np.int64)], 0
                for group, path in zip(groups, shard_paths):
                    part = read_array(group.file, f"{key}/indptr", path).astype(np.int64)
                    indptrs.append(part[1:] + offset)
                    offset += int(part[-1])
                group = dst.create_group(key)
                group["indptr"] = np.concatenate(indptrs)
                group["row_valid"] = np.concatenate(
                    [read_row_valid(s, hook, p) for s, p in zip(shards, shard_paths)])
                for member in ("indices", "values"):
                    write_concatenation(dst, f"{key}/{member}", [
                        (name, g[member]) for name, g in zip(names, groups)])
                n_prompts = sum(int(g.attrs["n_prompts"]) for g in groups)
                group.attrs.update({"d_sae": groups[0].attrs["d_sae"], "n_prompts": n_prompts,
                                    "n_positions": groups[0].attrs["n_positions"]})
                for name, values in _pooled_stats(shards, shard_paths, hook).items():
                    dst[f"stats/{hook}/{name}"] = values
                valid = int(group["row_valid"][()].sum())
                summary[hook] = {"nnz": offset, "valid_rows": valid,
                                 "mean_l0": offset / max(valid, 1)}
            dst.attrs.update({"provenance": provenance_json(config), "hooks": json.dumps(hooks),
                              "position_names": shards[0].attrs["position_names"],
                              **recorded})
    finally:
        for s in shards:
            s.close()
    return summary


def _pooled_stats(shards: list[h5py.File], paths: list[str | Path], hook: str
                  ) -> dict[str, np.ndarray]:
    from saeflow.formats.codes import read_feature_stat, read_row_valid

    rows = [int(read_row_valid(s, hook, p).sum()) for s, p in zip(shards, paths)]
    stat = {name: [read_feature_stat(s, hook, name, p) for s, p in zip(shards, paths)]
            for name in ("firing_frequency", "mean_activation", "max_activation")}
    # Each shard's count and sum, back from its frequency and mean (count is an integer,
    # so rounding recovers it exactly).
    count = sum(np.rint(f * r) for f, r in zip(stat["firing_frequency"], rows))
    total = sum(m * r for m, r in zip(stat["mean_activation"], rows))
    n_rows = max(sum(rows), 1)
    return {"firing_frequency": count / n_rows, "mean_activation": total / n_rows,
            "mean_active": np.divide(total, count, out=np.zeros_like(total), where=count > 0),
            "max_activation": np.maximum.reduce(stat["max_activation"])}


def encode_stage(bundle: ModelSAEs, acts_path: str | Path, encoding: dict[str, Any],
                 device: str, out_path: str | Path) -> dict[str, Any]:
    """Rule ``encode``: every hook of ``acts_path`` (activations/{prompt_set}.h5) through its
    SAE of ``bundle`` into ``out_path`` (codes/{prompt_set}.h5). ``encoding``:
    ``config["encoding"]``; ``device``: "auto" picks cuda."""
    import logging

    from saeflow.core.runtime import resolve_device

    device = resolve_device(device)
    loaders = {hook: (lambda h=hook: bundle.site(h).load_saes(device)[0]) for hook in bundle.hooks}
    summary = encode_to_hdf5(acts_path, out_path, loaders, batch_rows=encoding["batch_rows"],
                             device=device, config={"sae": dict(bundle.sae), "encoding": encoding})
    logging.getLogger(__name__).info("encoded %s", summary)
    return summary
