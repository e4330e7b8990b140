"""Atomic file writing: a reader never sees a half-written output, and a crash leaves none."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from saeflow.core.provenance import provenance


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are for colleagues too
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike[str], data: dict[str, Any],
               config: dict[str, Any] | None = None) -> None:
    """Write ``data`` plus a ``provenance`` block (config used, versions, commit) atomically."""
    record = dict(data)
    record["provenance"] = provenance(config)
    write_text_atomic(path, json.dumps(record, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: str | os.PathLike[str]) -> Any:
    from saeflow.core.errors import InputError

    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise InputError(path, "<file>", "does not exist") from None
    except json.JSONDecodeError as err:
        raise InputError(path, f"line {err.lineno}", f"malformed JSON: {err.msg}") from None


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    from saeflow.core.errors import InputError

    records = []
    try:
        with open(path) as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise InputError(path, f"line {lineno}", f"malformed JSON: {err.msg}") from None
    except FileNotFoundError:
        raise InputError(path, "<file>", "does not exist") from None
    return records


def write_jsonl(path: str | os.PathLike[str], records: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        for record in records:
            fh.write(json.dumps(record, default=_jsonable) + "\n")
