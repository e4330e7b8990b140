"""Bad pair ids in a pairs file (patch.pairs): one line naming the file, the line(s) and the
id, never a traceback or a silently merged pair."""

from __future__ import annotations

import json

import pytest

from saeflow.core.errors import InputError
from saeflow.patch.pairs import load_pairs


class Words:
    """A tokenizer of whitespace-separated words (ids from 1; BOS is 0)."""

    bos_token_id = 0

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [self.vocab.setdefault(w, len(self.vocab) + 1) for w in text.split()]


def rows(*ids):
    """A clean and a corrupted row per id, in order."""
    return [{"text": f"a{i} b", "answer": " T", "pair_id": pid, "role": role}
            for i, pid in enumerate(ids) for role in ("clean", "corrupted")]


@pytest.mark.parametrize(("records", "message"), [
    (rows(0, 1, 0), "pairs.jsonl: pair_id: pair_id 0 is used twice (lines 1-2 and lines 5-6): "
                    "each clean/corrupted pair needs its own id"),
    (rows(0, 7, 7), "pairs.jsonl: pair_id: pair_id 7 is used twice (lines 3-4 and lines 5-6)"),
    (rows(0, "p2"), "pairs.jsonl: line 3.pair_id: not an integer: 'p2'"),
    (rows(0, 1.5), "pairs.jsonl: line 3.pair_id: not an integer: 1.5"),
    (rows(True), "pairs.jsonl: line 1.pair_id: not an integer: True"),
])
def test_bad_pair_ids_are_one_line_naming_file_line_and_id(tmp_path, records, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(InputError) as err:
        load_pairs(path, Words())
    assert str(err.value).startswith(f"{tmp_path}/{message}")
    assert "\n" not in str(err.value)


def test_a_blank_line_shifts_the_line_numbers_named(tmp_path):
    path = tmp_path / "pairs.jsonl"
    first, second, *rest = (json.dumps(r) for r in rows(0, 0))
    path.write_text("\n".join([first, second, "", *rest]) + "\n")
    with pytest.raises(InputError, match=r"pair_id 0 is used twice \(lines 1-2 and lines 4-5\)"):
        load_pairs(path, Words())


def test_distinct_integer_ids_load(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows(3, 1, 2)))
    (batch,) = load_pairs(path, Words())
    assert batch.pair_ids == (3, 1, 2)
