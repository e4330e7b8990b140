"""The prompt files the shipped real-study configs use (config/prompts/), made from the toy
world's Python-error templates: the error-type task of the study saeflow grew from, for a
pretrained model. Deterministic; regenerate with ``python -m saeflow.toy.study_prompts``.

* ``error_types.jsonl``: snippets each followed by the question comment, labelled (``label``)
  by executing them, with the one-token ``answer`` " <ErrorType>" and the ``template``;
  four error types whose names are single tokens in large code vocabularies.
* ``error_pairs.jsonl``: clean (TypeError) / corrupted (SyntaxError) pairs that differ by one
  character (rows 2k, 2k+1 = pair k) over four families, for patching.

* ``ioi.jsonl`` / ``ioi_pairs.jsonl``: indirect-object prompts for GPT-2 ("When Mary and John
  went to the store, John gave a drink to" -> " Mary"), labelled by name order (``ABBA`` /
  ``BABA``); pairs swap the repeated name, which flips the answer.

Equal token length within a pair and one-token answers are properties of a tokenizer; the
rules check both when they load the files and stop with the line that breaks them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
import random
import sys
from pathlib import Path

from saeflow.toy.corpus import TEMPLATES, Slots, make_example, sample_pairs

ERROR_TYPES = ("TypeError", "SyntaxError", "NameError", "IndexError")
N_PROMPTS, N_PAIRS, SEED = 600, 120, 2026


def error_type_records(n: int = N_PROMPTS, seed: int = SEED) -> list[dict]:
    """``n`` labelled prompts, the four error types equally often."""
    rng = random.Random(seed)
    by_label: dict[str, list[dict]] = {label: [] for label in ERROR_TYPES}
    templates = sorted(TEMPLATES)
    while min(len(v) for v in by_label.values()) < n // len(ERROR_TYPES):
        example = make_example(rng.choice(templates), Slots.draw(rng))
        bucket = by_label.get(example.label)
        if bucket is not None and len(bucket) < n // len(ERROR_TYPES):
            bucket.append({"text": example.prompt, "answer": example.answer,
                           "label": example.label, "template": example.template})
    records = [r for label in ERROR_TYPES for r in by_label[label]]
    rng.shuffle(records)
    return records


def pair_records(n: int = N_PAIRS, seed: int = SEED) -> list[dict]:
    rows = []
    for k, (family, clean, corrupted) in enumerate(sample_pairs(n, random.Random(seed))):
        for role, example in (("clean", clean), ("corrupted", corrupted)):
            rows.append({"text": example.prompt, "answer": example.answer, "label": example.label,
                         "pair_id": k, "role": role, "family": family})
    return rows


NAMES = (" Mary", " John", " Tom", " James", " David", " Sarah", " Paul", " Michael")
PLACES = ("store", "park", "school", "station", "market")
OBJECTS = ("drink", "book", "ball", "letter", "gift")


def _ioi(rng: random.Random) -> tuple[str, str, str, Callable[[str], str]]:
    """One draw: the indirect object, the subject, the name order, and the prompt with a
    given name as the repeated one (the subject in a clean prompt)."""
    io, subject = rng.sample(NAMES, 2)
    place, thing, order = rng.choice(PLACES), rng.choice(OBJECTS), rng.choice(("ABBA", "BABA"))
    first, second = (io, subject) if order == "ABBA" else (subject, io)
    return io, subject, order, lambda repeated: (
        f"When{first} and{second} went to the {place},{repeated} gave a {thing} to")


def ioi_records(n: int = 400, seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        io, subject, order, text = _ioi(rng)
        rows.append({"text": text(subject), "answer": io, "label": order})
    return rows


def ioi_pair_records(n: int = 100, seed: int = SEED + 1) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        io, subject, order, text = _ioi(rng)
        for role, repeated, answer in (("clean", subject, io), ("corrupted", io, subject)):
            rows.append({"text": text(repeated), "answer": answer, "label": order,
                         "pair_id": k, "role": role, "family": order})
    return rows


def write(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("error_types.jsonl", error_type_records()),
                       ("error_pairs.jsonl", pair_records()),
                       ("ioi.jsonl", ioi_records()), ("ioi_pairs.jsonl", ioi_pair_records())):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    write(Path(sys.argv[1] if len(sys.argv) > 1 else "config/prompts"))
