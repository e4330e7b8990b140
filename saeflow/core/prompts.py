"""Prompt sets: JSONL files of records with a ``text`` (and optionally a one-token ``answer``).

Every stage feeds the model ``[BOS] + tokens(text)``; :func:`encode_prompt` is that one rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saeflow.core.errors import InputError
from saeflow.core.io import line_of, read_jsonl


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """BOS + the prompt's tokens: the exact input every stage feeds the model."""
    return [tokenizer.bos_token_id] + tokenizer.encode(text, add_special_tokens=False)


def encode_prompts(tokenizer: Any, texts: list[str], chunk: int = 1024) -> list[list[int]]:
    """:func:`encode_prompt` of every text, ``chunk`` texts per batched tokenizer call (a fast
    tokenizer encodes a batch in Rust, several times quicker than one ``encode`` per prompt;
    chunking bounds the per-token objects a call builds)."""
    out: list[list[int]] = []
    for start in range(0, len(texts), chunk):
        ids = tokenizer(list(texts[start:start + chunk]), add_special_tokens=False,
                        return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        out += [[tokenizer.bos_token_id, *seq] for seq in ids]
    return out


def load_prompt_set(path: str | Path) -> list[dict[str, Any]]:
    """Read and check a prompt set: every record needs a non-empty string ``text``."""
    records = read_jsonl(path, allow_nan=False)
    if not records:
        raise InputError(path, "<file>", "prompt set is empty")
    for i, record in enumerate(records):
        if not isinstance(record.get("text"), str) or not record["text"]:
            raise InputError(path, f"line {line_of(records, i)}.text",
                             "missing or not a non-empty string")
        if "answer" in record and not isinstance(record["answer"], str):
            raise InputError(path, f"line {line_of(records, i)}.answer", "not a string")
    return records


def answer_token_id(tokenizer: Any, answer: str, source: str, line: int) -> int:
    """The single token of ``answer`` (the record on file line ``line``); an answer of
    several tokens is an input error."""
    ids = tokenizer.encode(answer, add_special_tokens=False)
    if len(ids) != 1:
        raise InputError(source, f"line {line}.answer", f"{answer!r} is {len(ids)} tokens, not one")
    return ids[0]


def count_records(path: str | Path) -> int:
    """Records in a prompt set (``.jsonl`` or ``.jsonl.gz``), counted without parsing, by the
    rule every reader of a prompt file counts with (:func:`saeflow.core.io.count_records`):
    equal to ``len(load_prompt_set(path))`` for every file it accepts."""
    from saeflow.core.io import count_records as count

    return count(path)


def missing_answers(records: list[dict[str, Any]]) -> list[int]:
    """File lines of the records without an ``answer``."""
    return [line_of(records, i) for i, r in enumerate(records) if "answer" not in r]


def lines_text(lines: list[int], limit: int = 10) -> str:
    """``3, 7, 12`` (``, ...`` past ``limit``): line numbers as a message names them."""
    shown = ", ".join(str(n) for n in lines[:limit])
    return shown + (", ..." if len(lines) > limit else "")


def require_answers(records: list[dict[str, Any]], source: str | Path, needed_by: str,
                    allow_none: bool = False) -> bool:
    """Every record has an ``answer``, or (``allow_none``) none has; else an InputError naming
    ``source`` and the lines without one. Returns whether the records have answers."""
    missing = missing_answers(records)
    if not missing or (allow_none and len(missing) == len(records)):
        return not missing
    have = len(records) - len(missing)
    every = "every prompt, or none," if allow_none else "every prompt"
    raise InputError(source, f"line {missing[0]}.answer", f"missing: {needed_by} needs an "
                     f"answer in {every} and {len(missing)} of {len(records)} prompts lack one "
                     f"({have} have one; lines without: {lines_text(missing)})")
