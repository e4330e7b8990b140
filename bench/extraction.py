"""Extraction overhead: tokens/s of :func:`saeflow.extract.extract_to_hdf5` (tokenising,
hooks, fp16 conversion, compressed HDF5 writes and final-position predictions included) over
tokens/s of a bare ``model(tokens)`` forward on the same model and the same padded batches.
Target >= 0.8. Next to it, the floor that writing the bytes sets (:mod:`bench.floor`): the
same ratio for a stage that cost the forward plus lzf-compressing and writing its file.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench import common, floor
from bench.common import Figure, Result

TARGET = 0.8
BATCH = 64  # config/config.yaml extraction.batch_size


def measure(size: str, n_prompts: int, repeats: int, workdir: Path) -> list[Figure]:
    import torch

    from saeflow.extract import Storage, extract_to_hdf5
    from saeflow.core.models import pad_batch
    from saeflow.core.prompts import encode_prompt

    model = common.model(size)
    records = common.prompts(n_prompts)
    hooks = common.HOOKS[size]
    tok = model.tokenizer
    seqs = [encode_prompt(tok, r["text"]) for r in records]
    batches = [pad_batch(seqs[s:s + BATCH], tok.pad_token_id)[0]
               for s in range(0, len(seqs), BATCH)]
    n_tokens = sum(len(s) for s in seqs)
    out = workdir / f"acts_{size}.h5"

    @torch.no_grad()
    def bare() -> None:
        for batch in batches:
            model(batch)

    def extract(compression: str | None) -> None:
        extract_to_hdf5(model, records, hooks, out,
                        Storage(positions="all", dtype="float16", batch_size=BATCH,
                                compression=compression))

    times = common.interleaved({"bare_forward": bare, "extraction": lambda: extract("lzf"),
                                "extraction_uncompressed": lambda: extract(None)}, repeats)
    extract("lzf")
    keys = [f"acts/{h}" for h in hooks]
    stored = floor.stored_datasets(out, keys)
    raw = sum(a.nbytes for a, _ in stored.values())
    io = {"lzf": (floor.lzf_write_seconds(stored, repeats), raw),
          "disk": (floor.disk_write_seconds(out.stat().st_size, workdir, repeats),
                   out.stat().st_size)}
    bare_s, ext_s = common.median(times["bare_forward"]), common.median(times["extraction"])
    at_floor = floor.floor_detail(bare_s, ext_s, io)
    detail = {"n_prompts": n_prompts, "n_tokens": n_tokens,
              "padded_tokens": int(sum(b.numel() for b in batches)), "hooks": hooks,
              "tokens_per_s_bare": round(n_tokens / bare_s, 1),
              "tokens_per_s_extraction": round(n_tokens / ext_s, 1),
              "ratio_without_compression": common.paired_ratio(
                  times["bare_forward"], times["extraction_uncompressed"]),
              "floor": at_floor, "times_s": {k: common.rounded(v) for k, v in times.items()}}
    return [Figure("extraction tokens/s / bare forward", size,
                   common.paired_ratio(times["bare_forward"], times["extraction"]),
                   target=TARGET, op=">=", detail=detail),
            Figure("extraction I/O floor: bare forward / (bare forward + lzf + disk writes)",
                   size, at_floor["floor_ratio"], detail=detail)]


def run(smoke: bool = False) -> Result:
    plan = [("tiny", 24, 1)] if smoke else [("toy", 512, 7), ("mid", 128, 5)]
    with tempfile.TemporaryDirectory() as tmp:
        figures = [f for size, n, reps in plan for f in measure(size, n, reps, Path(tmp))]
    return Result("extraction", "Extraction overhead vs a bare forward", figures,
                  params={"plan": [{"model": s, "n_prompts": n, "repeats": r} for s, n, r in plan],
                          "batch_size": BATCH, "positions": "all", "dtype": "float16",
                          "compression": "lzf", "sizes": {s: common.SIZES[s] for s, _, _ in plan}},
                  notes=["Value = median over repeats of t(bare forward) / t(extraction), same "
                         "padded batches; extraction includes tokenising the prompts.",
                         "detail.ratio_without_compression: the same with compression: none, "
                         "to show what lzf costs.",
                         "The I/O floor (bench.floor): the stored activations written again with "
                         "the same chunks and lzf into an in-memory HDF5 file, and the file's "
                         "bytes written to disk, best of the repeats, in this process; "
                         "floor_ratio = t(bare) / (t(bare) + both), the best extraction can do "
                         "on this machine."])
