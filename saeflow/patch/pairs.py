"""What every patching computation shares: the stage's config, clean/corrupted prompt pairs
and their metric, and the alignment of positions across pairs of different lengths.

Conventions of every module of :mod:`saeflow.patch`:

* The metric is the logit difference ``logit(clean answer) - logit(corrupted answer)`` at the
  final position, one value per pair (:func:`logit_diff`).
* Every effect is that of patching an activation **from the clean run into the corrupted run**:
  ``effect = metric(corrupted, patched) - metric(corrupted)``; the normalised effect divides it
  by ``metric(clean) - metric(corrupted)``, so 1 means "restores the clean answer fully".
  Aggregated over pairs it is a ratio of means, ``mean(effect) / mean(clean - corrupted)``:
  a mean of per-pair ratios is heavy-tailed, as a pair whose gap is near 0 divides by ~0.
* Pairs are never padded: one :class:`PairBatch` holds pairs of one token length ``T``. Across
  batches, per-pair arrays are right-aligned to ``P = max T`` (column ``P - 1`` is every prompt's
  final token; :func:`align_right`) and NaN where a shorter prompt has no token; position
  labels are offsets from the end (``-1`` = final token; :func:`position_offsets`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saeflow.core.errors import InputError


@dataclass(frozen=True)
class PatchConfig:
    """``config["patch"]`` as validated: every knob of the patching stage. The defaults live in
    workflow/schemas/config.schema.yaml only (:func:`saeflow.core.config.schema_defaults`
    ``("patch")`` reads them where no validated config exists); every key is required here."""

    pairs: str  # JSONL of clean/corrupted pairs
    truth: str | None  # toy world/truth.json; None: no toy-world position check
    descriptions: str | None  # JSON {hook_name: {latent: text}} for the top latents
    max_batch: int  # rows per forward pass (patched copies x pairs)
    n_bootstrap: int
    ci: float
    seed: int
    top_k: int  # latents verified by exact patching
    n_random: int  # latents outside the top-k patched exactly to find false negatives
    false_negative_threshold: float  # |exact| / |mean(clean - corrupted)| counted as real
    exhaustive: bool  # exact patching of every node (patch_exact), the reference for AtP
    exhaustive_k: tuple[int, ...]  # k of precision/recall@k against the exhaustive reference
    estimators: tuple[str, ...]  # node-attribution estimators run: "atp" (always), "ig"
    ig_steps: int  # points on integrated gradients' path (saeflow.patch.ig)
    faithfulness_n: tuple[int, ...]
    faithfulness_rank_share: float  # share of pairs nodes are ranked on; the rest evaluate
    faithfulness_random: int  # random node orders drawn as the faithfulness baseline
    circuit: Mapping[str, Any]  # node/edge thresholds and checks of patch_circuit
    gate: Mapping[str, Any]  # thresholds of the estimator gate (saeflow.patch.gate)
    sae_gap_tolerance: float  # |SAE-spliced - model| / |clean - corrupted| flagged above
    device: str

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> PatchConfig:
        """From ``config["patch"]`` (validated, so holding every default); an unknown or a
        missing key is an error naming it."""
        from saeflow.core.config import strict_fields

        raw = strict_fields(cls, raw, "patch")
        raw["faithfulness_n"] = tuple(int(n) for n in raw["faithfulness_n"])
        raw["exhaustive_k"] = tuple(int(n) for n in raw["exhaustive_k"])
        raw["estimators"] = tuple(str(e) for e in raw["estimators"])
        return cls(**raw)


@dataclass(frozen=True)
class PairBatch:
    """Pairs of one token length ``T``: ``clean``/``corrupted`` ``[n, T]``, answers ``[n]``;
    each pair's cluster id (``clusters``, what bootstraps resample) and what defined it
    (``cluster_by``: ``group``, ``template`` or ``pair``, :mod:`saeflow.patch.bootstrap`);
    with ``pair`` (the default) each pair is its own cluster."""

    clean: Tensor
    corrupted: Tensor
    clean_answer: Tensor
    corrupted_answer: Tensor
    pair_ids: tuple[int, ...] = field(default=())
    clusters: tuple[str, ...] = field(default=())
    cluster_by: str = "pair"

    def __post_init__(self) -> None:
        ids = tuple(int(i) for i in (self.pair_ids or range(len(self.clean))))
        object.__setattr__(self, "pair_ids", ids)
        if self.cluster_by not in ("group", "template", "pair"):
            raise InputError("pairs", "cluster_by", f"{self.cluster_by!r}: one of group, "
                             "template, pair")
        # "pair": each pair its own cluster, whatever was passed
        clusters = ids if self.cluster_by == "pair" else self.clusters
        object.__setattr__(self, "clusters", tuple(str(c) for c in clusters))
        where = (f"pair {ids[0]}" if len(ids) == 1 else f"pairs {ids[0]}..{ids[-1]}" if ids
                 else "pairs")
        if self.clean.ndim != 2 or self.clean.shape != self.corrupted.shape:
            raise InputError("pairs", where, f"clean tokens {tuple(self.clean.shape)} vs corrupted "
                             f"{tuple(self.corrupted.shape)}: a batch needs [n, T] pairs of one "
                             "equal token length (group pairs by length)")
        n = self.clean.shape[0]
        for name in ("clean_answer", "corrupted_answer"):
            if tuple(getattr(self, name).shape) != (n,):
                raise InputError("pairs", f"{where} {name}",
                                 f"shape {tuple(getattr(self, name).shape)}, expected ({n},): "
                                 "one single-token answer id per pair")
        if len(ids) != n:
            raise InputError("pairs", "pair_ids", f"{len(ids)} ids for {n} pairs")
        if len(self.clusters) != n:
            raise InputError("pairs", "clusters", f"{len(self.clusters)} cluster ids for {n} "
                             "pairs")

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def length(self) -> int:
        return self.clean.shape[1]

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(self.clean.to(device), self.corrupted.to(device),
                         self.clean_answer.to(device), self.corrupted_answer.to(device),
                         self.pair_ids, self.clusters, self.cluster_by)

    def select(self, keep: Sequence[bool]) -> PairBatch:
        """The pairs where ``keep`` (one flag per pair) is true."""
        rows = np.flatnonzero(np.asarray(keep, dtype=bool)).tolist()
        idx = torch.as_tensor(rows, dtype=torch.long)
        return PairBatch(self.clean[idx], self.corrupted[idx], self.clean_answer[idx],
                         self.corrupted_answer[idx], tuple(self.pair_ids[i] for i in rows),
                         tuple(self.clusters[i] for i in rows), self.cluster_by)

    def chunks(self, size: int) -> Iterator[PairBatch]:
        for s in range(0, len(self), max(1, size)):
            sl = slice(s, s + max(1, size))
            yield PairBatch(self.clean[sl], self.corrupted[sl], self.clean_answer[sl],
                            self.corrupted_answer[sl], self.pair_ids[sl], self.clusters[sl],
                            self.cluster_by)


def optional_input(value: str | Sequence[str]) -> str | None:
    """A rule input that may be absent (its input function returns ``[]`` when unset)."""
    if isinstance(value, str):
        return value or None
    return str(value[0]) if len(value) else None


def load_pairs(path: str | Path, tokenizer: Any) -> list[PairBatch]:
    """Read ``pairs.jsonl`` (rows 2k, 2k+1 = pair k, clean first), tokenise with BOS prepended
    (:func:`saeflow.core.prompts.encode_prompt`), and group pairs by token length, shortest first."""
    from saeflow.core.io import read_jsonl
    from saeflow.core.prompts import encode_prompt

    records = read_jsonl(path)
    if not records or len(records) % 2:
        raise InputError(path, "<rows>", f"{len(records)} rows: need clean/corrupted row pairs")
    for row, rec in enumerate(records):
        missing = [k for k in ("text", "answer", "pair_id", "role") if k not in rec]
        if missing:
            raise InputError(path, f"row {row}", f"missing {', '.join(missing)}")
        if isinstance(rec["pair_id"], bool) or not isinstance(rec["pair_id"], int):
            raise InputError(path, f"line {records.lines[row]}.pair_id",
                             f"not an integer: {rec['pair_id']!r}")
    first_lines: dict[int, str] = {}
    groups: dict[int, list[tuple[list[int], list[int], int, int, int]]] = {}
    for clean, corrupted in zip(records[0::2], records[1::2], strict=True):
        pid = clean["pair_id"]
        where = f"pair {pid}"
        if (clean["role"], corrupted["role"]) != ("clean", "corrupted") \
                or corrupted["pair_id"] != pid:
            raise InputError(path, where, "rows 2k, 2k+1 must be the clean and corrupted prompt "
                             "of one pair_id, in that order")
        k = len(first_lines)  # this pair's index: rows 2k, 2k+1
        lines = f"lines {records.lines[2 * k]}-{records.lines[2 * k + 1]}"
        if pid in first_lines:
            raise InputError(path, "pair_id", f"pair_id {pid} is used twice ({first_lines[pid]} "
                             f"and {lines}): each clean/corrupted pair needs its own id")
        first_lines[pid] = lines
        a, b = encode_prompt(tokenizer, clean["text"]), encode_prompt(tokenizer, corrupted["text"])
        if len(a) != len(b):
            raise InputError(path, where, f"clean is {len(a)} tokens, corrupted {len(b)}: "
                             "a pair must have equal token length")
        answers = []
        for role, rec in (("clean", clean), ("corrupted", corrupted)):
            ids = tokenizer.encode(rec["answer"], add_special_tokens=False)
            if len(ids) != 1:
                raise InputError(path, f"{where} {role} answer",
                                 f"{rec['answer']!r} is {len(ids)} tokens, must be one")
            answers.append(ids[0])
        groups.setdefault(len(a), []).append((a, b, answers[0], answers[1], int(pid)))
    batches = [PairBatch(*(torch.tensor([g[j] for g in rows]) for j in range(4)),
                         tuple(g[4] for g in rows)) for _, rows in sorted(groups.items())]
    return with_clusters(batches, records, path)


def with_clusters(batches: Sequence[PairBatch], records: Sequence[Mapping[str, Any]],
                  path: str | Path) -> list[PairBatch]:
    """``batches`` with each pair's cluster (:mod:`saeflow.patch.bootstrap`) from the pairs
    file's ``records`` (rows 2k, 2k+1 = pair k): its ``group`` where the file has that column,
    else its clean row's ``template``, else the pair itself. A column on some pairs only, or a
    pair whose two rows name different groups, is an InputError."""
    pairs = list(zip(records[0::2], records[1::2], strict=True))
    by = next((k for k in ("group", "template") if any(k in c for c, _ in pairs)), "pair")
    if by == "pair":
        return list(batches)
    cluster = {}
    for clean, corrupted in pairs:
        where = f"pair {clean['pair_id']}"
        if by not in clean:
            raise InputError(path, f"{where} {by}", f"missing on the clean row, while other "
                             f"pairs name their {by}: every pair needs one")
        if by == "group" and corrupted.get("group", clean["group"]) != clean["group"]:
            raise InputError(path, f"{where} group", f"clean row {clean['group']!r}, corrupted "
                             f"row {corrupted['group']!r}: a pair has one group")
        cluster[int(clean["pair_id"])] = str(clean[by])
    return [replace(b, clusters=tuple(cluster[i] for i in b.pair_ids), cluster_by=by)
            for b in batches]


def check_batches(model: Any, batches: Sequence[PairBatch]) -> None:
    """Fail with one line, before any forward pass, if the pairs cannot run on ``model``."""
    if not batches:
        raise InputError("pairs", "<pairs>", "no pairs given")
    for b in batches:
        where = f"pairs {b.pair_ids[0]}..{b.pair_ids[-1]}"
        if b.length > model.cfg.n_ctx:
            raise InputError("pairs", where, f"{b.length} tokens exceed n_ctx {model.cfg.n_ctx}")
        top = max(int(t.max()) for t in (b.clean, b.corrupted, b.clean_answer,
                                         b.corrupted_answer))
        if top >= model.cfg.d_vocab:
            raise InputError("pairs", where, f"token id {top} >= d_vocab {model.cfg.d_vocab}: "
                             "tokenizer and model do not match")


def logit_diff(logits: Tensor, clean_answer: Tensor, corrupted_answer: Tensor) -> Tensor:
    """``[B]`` logit(clean answer) - logit(corrupted answer) at the final position of
    ``logits [B, T, d_vocab]`` (pairs are unpadded, so the final position is ``T - 1``)."""
    final = logits[:, -1, :]
    return (final.gather(1, clean_answer.to(final.device)[:, None])
            - final.gather(1, corrupted_answer.to(final.device)[:, None]))[:, 0]


def align_right(values: np.ndarray, n_positions: int) -> np.ndarray:
    """Pad ``values [..., T]`` on the left with NaN to ``[..., n_positions]`` (final token last)."""
    pad = [(0, 0)] * (values.ndim - 1) + [(n_positions - values.shape[-1], 0)]
    return np.pad(values.astype(np.float64), pad, constant_values=np.nan)


def position_offsets(n_positions: int) -> list[int]:
    """Labels of right-aligned columns: offsets from the final token (``-1`` = final)."""
    return list(range(-n_positions, 0))
