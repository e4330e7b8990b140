"""Extraction: run a TransformerLens model over a prompt set and stream chosen hook
activations at chosen positions into one HDF5 file (layout: docs/outputs.md).

Memory stays flat in the number of prompts: each batch's activations go straight to disk.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm import tqdm
from transformer_lens import HookedTransformer

from saeflow.core.errors import InputError
from saeflow.core.io import atomic_path, line_of
from saeflow.core.models import pad_batch, require_hooks
from saeflow.core.positions import token_index
from saeflow.core.prompts import answer_token_id, encode_prompts
from saeflow.core.provenance import provenance_json

log = logging.getLogger(__name__)
CHUNK_BYTES = 1 << 20


def token_positions(spec: str | Sequence[str | int], records: list[dict[str, Any]],
                    lengths: np.ndarray, source: str = "prompts") -> tuple[np.ndarray, list[str]]:
    """Token indices to store, ``[n, P]`` (-1 where absent), and a name per stored position.

    ``spec`` is ``"all"``, ``"final"``, or a list of entries: ``"final"``, an integer offset
    (negative counts from the end: -1 is the final token), or a name ``x`` whose per-record
    index is the record field ``pos_x``.
    """
    n = len(lengths)
    if spec == "all":
        width = int(lengths.max())
        grid = np.broadcast_to(np.arange(width), (n, width)).copy()
        grid[grid >= lengths[:, None]] = -1
        return grid.astype(np.int32), [str(p) for p in range(width)]
    entries = ["final"] if spec == "final" else list(spec)
    columns, names = [], []
    for entry in entries:
        col = token_index(entry, lengths, lambda name: _record_positions(records, name, source))
        col = np.where((col >= 0) & (col < lengths), col, -1)
        columns.append(col)
        names.append(str(entry))
    return np.stack(columns, axis=1).astype(np.int32), names


def _record_positions(records: list[dict[str, Any]], name: str, source: str) -> np.ndarray:
    key = f"pos_{name}"
    missing = [i for i, r in enumerate(records) if key not in r]
    if missing:
        raise InputError(source, f"line {line_of(records, missing[0])}.{key}",
                         f"named position {name!r} is not recorded")
    return np.array([int(r[key]) for r in records])


def _metadata_columns(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Scalar fields present in every record, as arrays (strings as UTF-8)."""
    columns = {}
    for key in records[0]:
        values = [r.get(key) for r in records]
        if all(isinstance(v, bool) for v in values):
            columns[key] = np.array(values, dtype=bool)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            columns[key] = np.array(values, dtype=np.int64)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            columns[key] = np.array(values, dtype=np.float64)
        elif all(isinstance(v, str) for v in values):
            columns[key] = np.array(values, dtype=h5py.string_dtype())
    return columns


@torch.no_grad()
def extract_to_hdf5(model: HookedTransformer, records: list[dict[str, Any]], hooks: Sequence[str],
                    out_path: str | Path, *, positions: str | Sequence[str | int] = "all",
                    dtype: str = "float16", batch_size: int = 64, compression: str | None = "lzf",
                    source: str = "prompts", config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``acts/{hook} [n, P, d]`` plus tokens, positions, metadata and model predictions.

    Predictions use only the final position's residual (``ln_final`` + :func:`final_logits`),
    so no ``[batch, T, d_vocab]`` logits tensor is ever built.
    """
    require_hooks(model, hooks, "extraction.hooks")
    tokenizer = model.tokenizer
    sequences = encode_prompts(tokenizer, [r["text"] for r in records])
    lengths = np.array([len(s) for s in sequences], dtype=np.int32)
    if lengths.max() > model.cfg.n_ctx:
        raise InputError(source, f"line {line_of(records, int(lengths.argmax()))}.text",
                         f"{lengths.max()} tokens exceed the model's context of {model.cfg.n_ctx}")
    pos, pos_names = token_positions(positions, records, lengths, source)
    has_answers = all("answer" in r for r in records)
    answers = _answer_ids(tokenizer, records, source) if has_answers else None
    n, n_pos, width = len(records), pos.shape[1], int(lengths.max())
    store_dtype = np.dtype(dtype)
    torch_store_dtype = torch.from_numpy(np.zeros(0, store_dtype)).dtype
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model.cfg.device
    predicted = np.zeros(n, dtype=np.int64)
    answer_logprob = np.zeros(n, dtype=np.float64)
    comp = None if compression in (None, "none") else compression

    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        tokens_ds = f.create_dataset("tokens", (n, width), dtype=np.int32, fillvalue=pad_id)
        f["lengths"], f["positions"] = lengths, pos
        act_ds = {}
        for name, d in _hook_widths(model, hooks).items():
            row_bytes = max(1, n_pos * d * store_dtype.itemsize)
            rows = _chunk_rows(batch_size, min(n, CHUNK_BYTES // row_bytes))
            act_ds[name] = f.create_dataset(f"acts/{name}", (n, n_pos, d), dtype=store_dtype,
                                            chunks=(rows, n_pos, d), compression=comp)
        final_resid: dict[str, torch.Tensor] = {}
        for start in tqdm(range(0, n, batch_size), desc=f"extract {Path(out_path).name}",
                          mininterval=2.0):
            stop = min(start + batch_size, n)
            batch, lens = pad_batch(sequences[start:stop], pad_id)
            batch, lens = batch.to(device), lens.to(device)
            gather = torch.as_tensor(pos[start:stop], device=device).long()
            rows_idx = torch.arange(stop - start, device=device)[:, None]
            captured: dict[str, torch.Tensor] = {}

            def capture(act: torch.Tensor, hook: Any) -> None:
                # Absent positions (-1) read token 0 and are set to +0.0 after the gather
                # (multiplying by a mask would leave -0.0, whose bits defeat compression).
                picked = act[rows_idx, gather.clamp(min=0, max=act.shape[1] - 1)]
                captured[hook.name] = picked.masked_fill_((gather < 0)[..., None], 0.0)

            def capture_final(act: torch.Tensor, hook: Any) -> None:
                final_resid["x"] = act[rows_idx[:, 0], lens - 1]

            model.run_with_hooks(batch, return_type=None, fwd_hooks=[
                *[(name, capture) for name in hooks], ("ln_final.hook_normalized", capture_final)])
            logits = final_logits(model, final_resid["x"]).float()
            predicted[start:stop] = logits.argmax(-1).cpu().numpy()
            if answers is not None:
                logprobs = logits.log_softmax(-1)
                answer_logprob[start:stop] = logprobs[torch.arange(stop - start),
                                                      torch.as_tensor(answers[start:stop], device=device)].cpu().numpy()
            tokens_ds[start:stop, : batch.shape[1]] = batch.cpu().numpy()
            for name in hooks:
                act_ds[name][start:stop] = captured[name].to(torch_store_dtype).cpu().numpy()

        for key, values in _metadata_columns(records).items():
            f[f"meta/{key}"] = values
        f["meta/predicted_token_id"] = predicted
        if answers is not None:
            f["meta/answer_token_id"] = answers
            f["meta/answer_logprob"] = answer_logprob
            f["meta/model_correct"] = predicted == answers
        f.attrs.update({
            "provenance": provenance_json(config), "hooks": json.dumps(list(hooks)),
            "position_spec": json.dumps(positions), "position_names": json.dumps(pos_names),
            "pad_token_id": pad_id, "bos_token_id": tokenizer.bos_token_id,
            "storage_dtype": store_dtype.name,
        })
    summary = {"n_prompts": n, "n_positions": n_pos, "hooks": list(hooks)}
    if answers is not None:
        summary["accuracy"] = float((predicted == answers).mean())
    return summary


def final_logits(model: HookedTransformer, resid: torch.Tensor) -> torch.Tensor:
    """Logits ``[b, d_vocab]`` from ``ln_final``'s output ``resid [b, d_model]``, as
    ``model(tokens)`` has them at those positions: unembedding, then the logit soft cap of
    models that set one (gemma-2: 30 tanh(x / 30), which log-probabilities depend on).

    ``resid @ W_U`` rather than TransformerLens's ``Unembed``, which copies the transposed
    ``W_U`` on every call: 2.4 GB, several seconds on a CPU, at gemma's d_vocab 256,000.
    """
    from transformer_lens.utilities.activation_functions import apply_softcap

    return apply_softcap(resid @ model.W_U + model.b_U, model.cfg.output_logits_soft_cap)


def extract_stage(model_cfg: dict[str, Any], model_dir: str | Path | None, prompts: str | Path,
                  extraction: dict[str, Any], device: str, out_path: str | Path) -> dict[str, Any]:
    """Rule ``extract``: the prompt set ``prompts`` (JSONL) through the model into
    ``out_path`` (activations/{prompt_set}.h5, ``acts/{hook} [n, P, d]``).

    The prompt set is read and checked before the model is loaded, so bad prompts fail without
    touching the hub. ``model_dir``: the toy model, None for a pretrained one; ``extraction``:
    ``config["extraction"]``; ``device``: ``config["device"]`` ("auto" picks cuda if present).
    """
    from saeflow.core.models import load_model
    from saeflow.core.prompts import load_prompt_set
    from saeflow.core.runtime import resolve_device

    device = resolve_device(device)
    records = load_prompt_set(prompts)
    model = load_model(model_cfg, model_dir, device)
    summary = extract_to_hdf5(
        model, records, extraction["hooks"], out_path, positions=extraction["positions"],
        dtype=extraction["dtype"], batch_size=extraction["batch_size"],
        compression=extraction["compression"], source=str(prompts),
        config={"extraction": extraction, "model": model_cfg, "prompts": prompts})
    log.info("extracted %s", summary)
    return summary


def _chunk_rows(batch_size: int, limit: int) -> int:
    """Prompts per HDF5 chunk: the largest divisor of ``batch_size`` up to ``limit``, so every
    batch write covers whole chunks. A chunk split across two batches is compressed, evicted
    from the 1 MiB chunk cache, read back and compressed again, and the space its first
    version took in the file is not reclaimed."""
    limit = max(1, min(batch_size, limit))
    return max(r for r in range(1, limit + 1) if batch_size % r == 0)


def _answer_ids(tokenizer: Any, records: list[dict[str, Any]], source: str) -> np.ndarray:
    """Each record's one-token answer id; each distinct answer string is tokenised once."""
    ids: dict[str, int] = {}
    for i, r in enumerate(records):
        if r["answer"] not in ids:
            ids[r["answer"]] = answer_token_id(tokenizer, r["answer"], source, line_of(records, i))
    return np.array([ids[r["answer"]] for r in records])


def _hook_widths(model: HookedTransformer, hooks: Sequence[str]) -> dict[str, int]:
    """Each hook's activation width, found by one tiny forward pass; only ``[b, T, d]`` hooks."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(act: torch.Tensor, hook: Any) -> None:
        shapes[hook.name] = tuple(act.shape)

    model.run_with_hooks(torch.zeros(1, 1, dtype=torch.long, device=model.cfg.device),
                         return_type=None, fwd_hooks=[(name, record) for name in hooks])
    for name, shape in shapes.items():
        if len(shape) != 3:
            raise InputError("config", "extraction.hooks",
                             f"hook {name!r} has shape {shape}; only [batch, pos, d] hooks are stored")
    return {name: shapes[name][-1] for name in hooks}
