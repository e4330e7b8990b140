"""SAE encoding: rows/s of :func:`saeflow.encode.encode_to_hdf5` (reading fp16 activations
from HDF5, encoding, sparsifying, writing CSR codes and per-feature statistics) over rows/s of a
bare ``relu(x @ W_enc + b_enc)`` on the same rows (already in memory, float32) in the same
batch size. Target >= 0.7. Next to it, the floor that reading and writing the bytes sets
(:mod:`bench.floor`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench import common, floor
from bench.common import Figure, Result

TARGET = 0.7
BATCH_ROWS = 4096  # config/config.yaml encoding.batch_rows
L0 = 64  # mean active latents per token of the random SAEs


def measure(size: str, n_prompts: int, repeats: int, workdir: Path) -> list[Figure]:
    import torch

    from saeflow.encode import encode_to_hdf5

    model = common.model(size)
    hook = common.HOOKS[size][-1]
    acts = common.extract(model, common.prompts(n_prompts), [hook], workdir / f"acts_{size}.h5")
    x = common.stored_rows(acts, hook)
    sae = common.random_sae(model.cfg.d_model, common.D_SAE[size], hook, x, L0)
    W, b = sae.W_enc.detach(), sae.b_enc.detach()
    out = workdir / f"codes_{size}.h5"

    @torch.no_grad()
    def bare() -> None:
        for s in range(0, len(x), BATCH_ROWS):
            torch.relu(x[s:s + BATCH_ROWS] @ W + b)

    def encode() -> None:
        encode_to_hdf5(acts, out, {hook: lambda: sae}, batch_rows=BATCH_ROWS)

    times = common.interleaved({"bare_encode": bare, "encode_to_hdf5": encode}, repeats)
    summary = encode_to_hdf5(acts, out, {hook: lambda: sae}, batch_rows=BATCH_ROWS)[hook]
    rows = len(x)
    csr = floor.stored_datasets(out, [f"codes/{hook}/indices", f"codes/{hook}/values"])
    io = {"read": (floor.read_seconds(acts, [f"acts/{hook}"], repeats),
                   floor.stored_datasets(acts, [f"acts/{hook}"])[f"acts/{hook}"][0].nbytes),
          "lzf": (floor.lzf_write_seconds(csr, repeats), sum(a.nbytes for a, _ in csr.values())),
          "disk": (floor.disk_write_seconds(out.stat().st_size, workdir, repeats),
                   out.stat().st_size)}
    bare_s, enc_s = common.median(times["bare_encode"]), common.median(times["encode_to_hdf5"])
    detail = {"hook": hook, "d_in": model.cfg.d_model, "d_sae": common.D_SAE[size],
              "rows": rows, "mean_l0": round(summary["mean_l0"], 1), "nnz": summary["nnz"],
              "rows_per_s_bare": round(rows / bare_s, 1),
              "rows_per_s_encode": round(rows / enc_s, 1),
              "floor": floor.floor_detail(bare_s, enc_s, io),
              "times_s": {k: common.rounded(v) for k, v in times.items()}}
    return [Figure("encoding rows/s / bare matmul+bias+relu", size,
                   common.paired_ratio(times["bare_encode"], times["encode_to_hdf5"]),
                   target=TARGET, op=">=", detail=detail),
            Figure("encoding I/O floor: bare / (bare + reading the activations + lzf + disk "
                   "writes)", size, detail["floor"]["floor_ratio"], detail=detail)]


def run(smoke: bool = False) -> Result:
    plan = [("tiny", 24, 1)] if smoke else [("toy", 2048, 7), ("mid", 512, 5)]
    with tempfile.TemporaryDirectory() as tmp:
        figures = [f for size, n, reps in plan for f in measure(size, n, reps, Path(tmp))]
    return Result("encoding", "SAE encoding vs a bare matmul + bias + ReLU", figures,
                  params={"plan": [{"model": s, "n_prompts": n, "repeats": r} for s, n, r in plan],
                          "batch_rows": BATCH_ROWS, "target_l0": L0,
                          "d_sae": {s: common.D_SAE[s] for s, _, _ in plan}},
                  notes=["Rows = real-token (prompt, position) rows; the baseline encodes exactly "
                         "those rows, the padding rows of the [n, P] layout cost it nothing.",
                         "SAEs: random sae-lens StandardSAEs, encoder bias set per latent so "
                         f"mean L0 is about {L0}.",
                         "The I/O floor (bench.floor), in this process, best of the repeats: "
                         "reading the stored activations (lzf decompression), the stored CSR "
                         "indices and values written again with the same chunks, shuffle and "
                         "lzf into an in-memory HDF5 file, and the codes file's bytes written "
                         "to disk; floor_ratio = t(bare) / (t(bare) + all three)."])
