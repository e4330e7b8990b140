"""Every reader of a prompt file agrees on its records: the count that plans shards at parse
time, the records a stage reads, and their line numbers; .jsonl and .jsonl.gz alike."""

import gzip
import json

import pytest

from saeflow.core.config import shard_counts
from saeflow.core.errors import InputError
from saeflow.core.io import read_jsonl
from saeflow.core.prompts import count_records, load_prompt_set

# blank lines of every kind, CRLF endings, a text holding U+2028 (a line separator to
# str.splitlines, not to JSON), a record after a line of only whitespace, no final newline
TEXT = ('{"text": "a"}\r\n\n   \n\t\n{"text": "b\u2028c"}\n'
        '{"text": "d\\u2028e"}\n \r\n{"text": "f"}')
LINES = [1, 5, 6, 8]


def _write(path, text):
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, newline="")
    return path


@pytest.mark.parametrize("name", ["p.jsonl", "p.jsonl.gz"])
def test_count_records_agrees_with_the_readers(tmp_path, name):
    path = _write(tmp_path / name, TEXT)
    records = load_prompt_set(path)
    assert count_records(path) == len(records) == len(read_jsonl(path)) == 4
    assert records.lines == LINES and records[1]["text"] == "b\u2028c"


def test_a_sharded_gz_prompt_set_plans_every_prompt(tmp_path):
    """2,000 gzipped prompts in shards of 64: 32 shards (the count once read 32 prompts)."""
    text = "".join(json.dumps({"text": f"prompt {i}"}) + "\n" for i in range(2000))
    plain, packed = _write(tmp_path / "p.jsonl", text), _write(tmp_path / "p.jsonl.gz", text)
    assert count_records(packed) == count_records(plain) == len(load_prompt_set(packed)) == 2000
    extraction = {"prompt_sets": {"plain": str(plain), "packed": str(packed)}, "shard_size": 64}
    assert shard_counts(extraction, "s.yaml") == {"plain": 32, "packed": 32}


def test_a_damaged_gz_prompt_set_is_one_line_at_parse_time(tmp_path, capsys):
    path = tmp_path / "p.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "a"}\n' * 50)[:-20])
    with pytest.raises(InputError, match=r"p\.jsonl\.gz: <file>: unreadable"):
        count_records(path)
    with pytest.raises(SystemExit) as stop:
        shard_counts({"prompt_sets": {"p": str(path)}, "shard_size": 8}, "s.yaml")
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"saeflow: error: {path}: <file>: unreadable") and \
        err.endswith("(extraction.prompt_sets.p in s.yaml)") and "\n" not in err
