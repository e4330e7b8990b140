"""Storage: bytes on disk per stored activation value (fp16; target <= 2.2) and per stored SAE
non-zero (target <= 8), each next to the bytes of the same data written as JSON floats.

Files are written exactly as the pipeline writes them (:func:`saeflow.extract.extract_to_hdf5`
with config/config.yaml's extraction settings, :func:`saeflow.encode.encode_to_hdf5`); a
byte figure divides the **whole file** (tokens, positions, metadata, CSR pointers, feature
statistics included) by the real values it holds: activations at real tokens (padding cells of
the ``[n, P, d]`` layout count as overhead), non-zeros of the codes. The JSON comparison
writes the same values in the shortest decimal that reads back to the stored float (fp16 for
activations, fp32 for code values), on a sample of prompts.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Figure, Result

TARGET_ACTS = 2.2
TARGET_NNZ = 8.0
L0 = 64
JSON_SAMPLE_PROMPTS = 16


def _json_floats(values: Any) -> str:
    """A JSON array of ``values`` (a NumPy float array) in shortest round-trip decimals."""
    return "[" + ",".join(str(v) for v in values.ravel()) + "]"


def acts_json_bytes(path: Path, n_sample: int) -> tuple[int, int]:
    """(JSON bytes, values) of ``{hook: [[row floats], ...]}`` for the first prompts' real rows."""
    import h5py

    with h5py.File(path, "r") as f:
        valid = f["positions"][:n_sample] >= 0
        parts, n_values = [], 0
        for hook in json.loads(f.attrs["hooks"]):
            rows = f[f"acts/{hook}"][:n_sample][valid]  # [rows, d] float16
            n_values += rows.size
            parts.append(json.dumps(hook) + ":[" + ",".join(_json_floats(r) for r in rows) + "]")
    text = "{" + ",".join(parts) + "}"
    json.loads(text)  # it is valid JSON
    return len(text.encode()), n_values


def codes_json_bytes(path: Path, n_rows: int) -> tuple[int, int]:
    """(JSON bytes, non-zeros) of ``{hook: {indptr, indices, values}}`` for the first rows."""
    import h5py

    with h5py.File(path, "r") as f:
        parts, nnz = [], 0
        for hook in json.loads(f.attrs["hooks"]):
            g = f[f"codes/{hook}"]
            indptr = g["indptr"][: n_rows + 1]
            k = int(indptr[-1])
            nnz += k
            parts.append(json.dumps(hook) + ':{"indptr":' + json.dumps(indptr.tolist())
                         + ',"indices":' + json.dumps(g["indices"][:k].tolist())
                         + ',"values":' + _json_floats(g["values"][:k]) + "}")
    text = "{" + ",".join(parts) + "}"
    json.loads(text)
    return len(text.encode()), nnz


def measure(size: str, n_prompts: int, workdir: Path) -> list[Figure]:
    import h5py

    from saeflow.encode import encode_to_hdf5

    model = common.model(size)
    hooks = common.HOOKS[size]
    sae_hooks = hooks[1:]  # config/config.yaml: SAEs on the two resid_post hooks
    acts = common.extract(model, common.prompts(n_prompts), hooks, workdir / f"acts_{size}.h5")
    with h5py.File(acts, "r") as f:
        valid = f["positions"][()] >= 0
        n_real, n_cells = int(valid.sum()), int(valid.size)
        d = {h: f[f"acts/{h}"].shape[-1] for h in hooks}
        dataset_bytes = sum(f[f"acts/{h}"].id.get_storage_size() for h in hooks)
    n_values = n_real * sum(d.values())
    acts_bytes = common.file_bytes(acts)
    json_bytes, json_values = acts_json_bytes(acts, JSON_SAMPLE_PROMPTS)

    saes = {h: common.random_sae(d[h], common.D_SAE[size], h, common.stored_rows(acts, h), L0)
            for h in sae_hooks}
    codes = workdir / f"codes_{size}.h5"
    summary = encode_to_hdf5(acts, codes, {h: (lambda s=s: s) for h, s in saes.items()})
    nnz = sum(s["nnz"] for s in summary.values())
    codes_bytes = common.file_bytes(codes)
    n_json_rows = JSON_SAMPLE_PROMPTS * valid.shape[1]
    cjson_bytes, cjson_nnz = codes_json_bytes(codes, n_json_rows)
    return [
        Figure("bytes per stored activation value (fp16)", size, acts_bytes / n_values,
               unit="bytes", target=TARGET_ACTS, op="<=",
               detail={"file_bytes": acts_bytes, "real_values": n_values, "hooks": hooks,
                       "n_prompts": n_prompts, "real_share_of_cells": round(n_real / n_cells, 3),
                       "bytes_per_cell_incl_padding":
                           round(acts_bytes / (n_cells * sum(d.values())), 3),
                       "acts_datasets_bytes_per_value": round(dataset_bytes / n_values, 3),
                       "json_bytes_per_value": round(json_bytes / json_values, 2),
                       "json_sample_values": json_values,
                       "json_over_hdf5":
                           round(json_bytes / json_values / (acts_bytes / n_values), 1)}),
        Figure("bytes per stored SAE non-zero", size, codes_bytes / nnz, unit="bytes",
               target=TARGET_NNZ, op="<=",
               detail={"file_bytes": codes_bytes, "nnz": nnz, "sae_hooks": sae_hooks,
                       "d_sae": common.D_SAE[size],
                       "mean_l0": {h: round(s["mean_l0"], 1) for h, s in summary.items()},
                       "json_bytes_per_nnz": round(cjson_bytes / cjson_nnz, 2),
                       "json_sample_nnz": cjson_nnz,
                       "json_over_hdf5": round(cjson_bytes / cjson_nnz / (codes_bytes / nnz), 1)}),
    ]


def run(smoke: bool = False) -> Result:
    plan = [("tiny", 24)] if smoke else [("toy", 512), ("mid", 128)]
    with tempfile.TemporaryDirectory() as tmp:
        figures = [f for size, n in plan for f in measure(size, n, Path(tmp))]
    return Result("storage", "Bytes on disk per stored value, vs JSON", figures,
                  params={"plan": [{"model": s, "n_prompts": n} for s, n in plan],
                          "positions": "all", "dtype": "float16", "compression": "lzf",
                          "target_l0": L0, "json_sample_prompts": JSON_SAMPLE_PROMPTS},
                  notes=["Whole-file bytes over real values: padding cells, tokens, metadata, "
                         "CSR pointers and feature statistics are all counted as overhead.",
                         "JSON: shortest round-trip decimals of the stored floats, on a sample."])
