"""Extraction: run a TransformerLens model over a prompt set and stream chosen hook
activations at chosen positions into one HDF5 file (layout: docs/outputs.md).

Memory stays flat in the number of prompts: each batch's activations go straight to disk.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm import tqdm
from transformer_lens import HookedTransformer

from saeflow.core.bundle import ModelSAEs
from saeflow.core.errors import InputError
from saeflow.core.io import atomic_path, line_of
from saeflow.core.models import pad_batch, require_hooks
from saeflow.core.positions import absent_positions, token_positions
from saeflow.core.prompts import answer_token_id, encode_prompts, lines_text, missing_answers
from saeflow.core.provenance import provenance_json
from saeflow.formats.activations import open_activations
from saeflow.formats.hdf5 import shard_attrs, write_concatenation

log = logging.getLogger(__name__)
CHUNK_BYTES = 1 << 20


def _metadata_columns(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Scalar fields present in every record, as arrays (strings as UTF-8; a ``pos_x``
    named position -1 where null)."""
    columns = {}
    for key in records[0]:
        values = [r.get(key) for r in records]
        if all(isinstance(v, bool) for v in values):
            columns[key] = np.array(values, dtype=bool)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            columns[key] = np.array(values, dtype=np.int64)
        elif key.startswith("pos_") and all(v is None or isinstance(v, int) and not
                                            isinstance(v, bool) for v in values):
            # a named position, null where absent by design: -1, as absent positions are
            columns[key] = np.array([-1 if v is None else v for v in values], dtype=np.int64)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            columns[key] = np.array(values, dtype=np.float64)
        elif all(isinstance(v, str) for v in values):
            columns[key] = np.array(values, dtype=h5py.string_dtype())
    return columns


@dataclass(frozen=True)
class Storage:
    """How activations are stored: ``config["extraction"]``'s ``positions`` (the position
    grammar of :func:`token_positions`), ``dtype``, ``batch_size`` (prompts per forward pass)
    and ``compression`` (an HDF5 filter, or None / "none")."""

    positions: str | Sequence[str | int] = "all"
    dtype: str = "float16"
    batch_size: int = 64
    compression: str | None = "lzf"

    @classmethod
    def from_config(cls, extraction: Mapping[str, Any]) -> Storage:
        return cls(extraction["positions"], extraction["dtype"], extraction["batch_size"],
                   extraction["compression"])


@torch.no_grad()
def extract_to_hdf5(model: HookedTransformer, records: list[dict[str, Any]], hooks: Sequence[str],
                    out_path: str | Path, storage: Storage = Storage(), *,
                    source: str = "prompts", config: dict[str, Any] | None = None,
                    rows: tuple[int, int] | None = None) -> dict[str, Any]:
    """Write ``acts/{hook} [n, P, d]`` plus tokens, positions, metadata and, where every prompt
    has an answer, the model's predictions (``predicted_token_id``, ``answer_logprob``,
    ``model_correct``).

    Predictions use only the final position's residual (``ln_final`` + :func:`final_logits`), so no
    ``[batch, T, d_vocab]`` logits tensor is ever built. ``rows`` = (start, stop): write only
    those records, a shard (see :func:`gather_activations_stage`); every record is still tokenised
    and checked, so every shard has the whole set's token width, positions and metadata
    columns, and a bad record anywhere fails every shard alike.
    """
    require_hooks(model, hooks, "extraction.hooks")
    positions, dtype, batch_size = storage.positions, storage.dtype, storage.batch_size
    tokenizer = model.tokenizer
    sequences = encode_prompts(tokenizer, [r["text"] for r in records])
    lengths = np.array([len(s) for s in sequences], dtype=np.int32)
    if lengths.max() > model.cfg.n_ctx:
        raise InputError(source, f"line {line_of(records, int(lengths.argmax()))}.text",
                         f"{lengths.max()} tokens exceed the model's context of {model.cfg.n_ctx}")
    pos, pos_names = token_positions(positions, records, lengths, source)
    metadata = _metadata_columns(records)
    absent = absent_positions(pos, pos_names, positions, metadata)
    for name, count in absent.items():
        log.warning("%s: %d of %d prompts lack position %r (pos_%s: null): stored absent (-1), "
                    "zero activations, no codes", source, count, len(records), name, name)
    missing = missing_answers(records)
    answers = None if missing else _answer_ids(tokenizer, records, source)
    if 0 < len(missing) < len(records):
        log.warning("%s: %d of %d prompts have no answer (lines %s): answer_token_id, "
                    "predicted_token_id, answer_logprob and model_correct are not stored",
                    source, len(missing),
                    len(records), lines_text(missing))
    width = int(lengths.max())
    lo, hi = rows or (0, len(records))
    sequences, lengths, pos = sequences[lo:hi], lengths[lo:hi], pos[lo:hi]
    answers = None if answers is None else answers[lo:hi]
    metadata = {key: values[lo:hi] for key, values in metadata.items()}
    n, n_pos = hi - lo, pos.shape[1]
    store_dtype = np.dtype(dtype)
    torch_store_dtype = torch.from_numpy(np.zeros(0, store_dtype)).dtype
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model.cfg.device
    predicted = np.zeros(n, dtype=np.int64)
    answer_logprob = np.zeros(n, dtype=np.float64)

    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        tokens_ds = f.create_dataset("tokens", (n, width), dtype=np.int32, fillvalue=pad_id)
        f["lengths"], f["positions"] = lengths, pos
        # each hook's dataset is made when its first batch arrives, at the width it has: no
        # extra forward pass to find widths (at gemma-2's widths a one-token pass costs 0.2 of
        # a 32-prompt batch, TransformerLens copying the transposed MLP weights on each call)
        act_ds: dict[str, h5py.Dataset] = {}
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
                if act.ndim not in (3, 4):
                    raise InputError("config", "extraction.hooks", f"hook {hook.name!r} has "
                                     f"shape {tuple(act.shape)}; only [batch, pos, d] and "
                                     "[batch, pos, heads, d_head] hooks are stored")
                # Absent positions (-1) read token 0 and are set to +0.0 after the gather
                # (multiplying by a mask would leave -0.0, whose bits defeat compression).
                picked = act[rows_idx, gather.clamp(min=0, max=act.shape[1] - 1)]
                picked = picked.flatten(2)  # hook_z: heads x d_head as one vector, as SAEs read it
                captured[hook.name] = picked.masked_fill_((gather < 0)[..., None], 0.0)

            def capture_final(act: torch.Tensor, hook: Any) -> None:
                final_resid["x"] = act[rows_idx[:, 0], lens - 1]

            # The final position's logits only where answers are read: unembedding one position
            # costs a quarter of a 2-layer forward at gemma-2's vocabulary, and without answers
            # no consumer reads a prediction.
            finals = [] if answers is None else [("ln_final.hook_normalized", capture_final)]
            model.run_with_hooks(batch, return_type=None, fwd_hooks=[
                *[(name, capture) for name in hooks], *finals])
            if answers is not None:
                logits = final_logits(model, final_resid["x"]).float()
                predicted[start:stop] = logits.argmax(-1).cpu().numpy()
                logprobs = logits.log_softmax(-1)
                picked = torch.as_tensor(answers[start:stop], device=device)
                answer_logprob[start:stop] = logprobs[torch.arange(stop - start, device=device),
                                                      picked].cpu().numpy()
            tokens_ds[start:stop, : batch.shape[1]] = batch.cpu().numpy()
            for name in hooks:
                if name not in act_ds:
                    act_ds[name] = _acts_dataset(f, name, captured[name].shape[-1], n, n_pos,
                                                 storage)
                act_ds[name][start:stop] = captured[name].to(torch_store_dtype).cpu().numpy()

        for key, values in metadata.items():
            f[f"meta/{key}"] = values
        if answers is not None:
            f["meta/predicted_token_id"] = predicted
            f["meta/answer_token_id"] = answers
            f["meta/answer_logprob"] = answer_logprob
            f["meta/model_correct"] = predicted == answers
        f.attrs.update({
            "provenance": provenance_json(config), "hooks": json.dumps(list(hooks)),
            "position_spec": json.dumps(positions), "position_names": json.dumps(pos_names),
            "pad_token_id": pad_id, "bos_token_id": tokenizer.bos_token_id,
            "storage_dtype": store_dtype.name,
            "absent_positions": json.dumps(absent_positions(pos, pos_names, positions,
                                                            metadata)),
            "answers": json.dumps({"prompts": source, "n_prompts": len(records),
                                   "missing": len(missing), "missing_lines": missing[:20]}),
        })
        if rows is not None:
            f.attrs["shard_rows"] = json.dumps([lo, hi])
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


def extract_stage(bundle: ModelSAEs, prompts: str | Path, extraction: dict[str, Any],
                  device: str, out_path: str | Path, shard: int | None = None) -> dict[str, Any]:
    """Rule ``extract``: the prompt set ``prompts`` (JSONL) through ``bundle``'s model into
    ``out_path`` (activations/{prompt_set}.h5, ``acts/{hook} [n, P, d]``); rule
    ``extract_shard``: only records ``shard * shard_size`` up to the next shard's first.

    The prompt set is read and checked before the model is loaded, so bad prompts fail without
    touching the hub. ``extraction``: ``config["extraction"]``; ``device``:
    ``config["device"]`` ("auto" picks cuda if present).
    """
    from saeflow.core.prompts import load_prompt_set
    from saeflow.core.runtime import resolve_device

    device = resolve_device(device)
    records = load_prompt_set(prompts)
    rows = None
    if shard is not None:
        size = extraction["shard_size"]
        rows = (shard * size, min((shard + 1) * size, len(records)))
        if rows[0] >= rows[1]:
            raise InputError(prompts, "<file>", f"{len(records)} prompts: no shard {shard} of "
                             f"{size} (the prompt set changed since the DAG was planned?)")
    model = bundle.load_model(device)
    summary = extract_to_hdf5(
        model, records, extraction["hooks"], out_path, Storage.from_config(extraction),
        source=str(prompts),
        config={"extraction": extraction, "model": dict(bundle.model), "prompts": prompts},
        rows=rows)
    log.info("extracted %s", summary)
    return summary


# Written whole, not as virtual datasets: small, and tokens' or metadata's strings would need
# variable-length virtual sources, which HDF5 does not map.
_GATHER_COPIED = ("tokens", "lengths", "positions")


def gather_activations_stage(shard_paths: Sequence[str | Path], out_path: str | Path,
                       config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rule ``gather_activations``: the shards of one prompt set (from ``extract_shard``, in
    order) as one activations file that every later stage reads as if unsharded. Each
    ``acts/{hook}`` is a virtual dataset over the shards' own datasets, so activations are
    not copied; tokens, positions and metadata (small) are concatenated."""
    out_path = Path(out_path)
    shards = [open_activations(p) for p in shard_paths]
    try:
        first = shards[0]
        _check_shards_agree(shards, shard_paths)
        hooks = json.loads(first.attrs["hooks"])
        recorded = shard_attrs(shard_paths, out_path)
        with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
            for key in _GATHER_COPIED:
                f[key] = np.concatenate([s[key][()] for s in shards])
            for key in first["meta"]:
                f[f"meta/{key}"] = np.concatenate([s[f"meta/{key}"][()] for s in shards])
            names = [os.path.relpath(Path(p).resolve(), out_path.resolve().parent)
                     for p in shard_paths]
            for hook in hooks:
                write_concatenation(f, f"acts/{hook}",
                                    [(name, s[f"acts/{hook}"]) for name, s in zip(names, shards)])
            f.attrs.update({k: v for k, v in first.attrs.items() if k != "shard_rows"})
            f.attrs["provenance"] = provenance_json(config)
            f.attrs["absent_positions"] = json.dumps(absent_positions(
                f["positions"][()], json.loads(first.attrs["position_names"]),
                json.loads(first.attrs["position_spec"]),
                {key: f[f"meta/{key}"][()] for key in f["meta"]}))
            f.attrs.update(recorded)
            n = int(f["lengths"].shape[0])
    finally:
        for s in shards:
            s.close()
    return {"n_prompts": n, "n_shards": len(shard_paths), "hooks": hooks}


def _check_shards_agree(shards: list[h5py.File], paths: Sequence[str | Path]) -> None:
    """Shards of one set: the same hooks, positions and widths, and rows end to end."""
    first, expected = shards[0], 0
    for shard, path in zip(shards, paths, strict=True):
        for attr in ("hooks", "position_names", "storage_dtype"):
            if shard.attrs.get(attr) != first.attrs.get(attr):
                raise InputError(path, f"attrs/{attr}", f"differs from {paths[0]}'s: not a "
                                 "shard of the same extraction")
        if shard["tokens"].shape[1] != first["tokens"].shape[1] or \
                set(shard["meta"]) != set(first["meta"]):
            raise InputError(path, "tokens", f"token width or metadata columns differ from "
                             f"{paths[0]}'s: not a shard of the same prompt set")
        lo, hi = json.loads(shard.attrs.get("shard_rows", "[0, 0]"))
        if lo != expected or hi - lo != shard["lengths"].shape[0]:
            raise InputError(path, "attrs/shard_rows", f"rows {lo}..{hi}, expected to start at "
                             f"{expected}: a shard is missing or out of order")
        expected = hi


def _acts_dataset(f: h5py.File, hook: str, d: int, n: int, n_pos: int, storage: Storage
                  ) -> h5py.Dataset:
    """``acts/{hook} [n, n_pos, d]`` in ``storage``'s dtype and compression, chunked in whole
    batches of about :data:`CHUNK_BYTES`."""
    dtype = np.dtype(storage.dtype)
    row_bytes = max(1, n_pos * d * dtype.itemsize)
    rows = _chunk_rows(storage.batch_size, min(n, CHUNK_BYTES // row_bytes))
    comp = None if storage.compression in (None, "none") else storage.compression
    return f.create_dataset(f"acts/{hook}", (n, n_pos, d), dtype=dtype, chunks=(rows, n_pos, d),
                            compression=comp)


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
