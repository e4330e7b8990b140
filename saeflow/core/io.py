"""File I/O every stage shares: atomic writes (a reader never sees a half-written output, a
crash leaves none) and the one checked path for reading text, JSON, JSONL and YAML files."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from saeflow.core.provenance import provenance

# A temp file of atomic_path: ``.<target name>.<host>.<pid>.<random>.tmp`` beside its target,
# so a later writer of the same target on the same host can tell a temp whose process is gone
# (a killed job's) from one still being written, here or on another host.
_TEMP = re.compile(r"^\.(?P<name>.*)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")
_NAME_IN_TEMP = 120  # characters of the target's name kept in its temp's (NAME_MAX is 255)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The one writer path of every output: a failure removes the temporary file, so no partial
    output is ever left; a full disk (ENOSPC, or a quota) is a :class:`DiskFullError` naming
    the file and the free space. Temps left by killed jobs of this target on this host (their
    process is gone) are removed first; a temp whose process still runs, or that another host
    writes, is never touched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are for colleagues too
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except (OSError, RuntimeError) as err:
        if not _disk_full(err):
            raise
        _unlink(tmp)
        raise _disk_full_error(target, err) from None
    finally:
        _unlink(tmp)


def _host() -> str:
    """This host as temp names carry it: its name, and its PID namespace where Linux says
    (two containers of one host name a process by the same number)."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0])[:40] or "host"
    try:
        namespace = re.sub(r"\D", "", os.readlink("/proc/self/ns/pid"))
    except OSError:
        return host
    return f"{host}-{namespace}" if namespace else host


def _temp_prefix(target: Path) -> str:
    return f".{target.name[:_NAME_IN_TEMP]}.{_host()}.{os.getpid()}."


def remove_stale_temps(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the temps of ``target`` (:func:`atomic_path`'s) left by processes of this host
    that no longer run (a job killed by SIGKILL, a node's out-of-memory killer); returns them.
    A temp of a live process, of another host, or not named by atomic_path is kept."""
    target = Path(target)
    host, removed = _host(), []
    name = target.name[:_NAME_IN_TEMP]
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or match["name"] != name or match["host"] != host:
            continue
        if not process_alive(int(match["pid"])):
            _unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (this process included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _unlink(path: str | os.PathLike[str]) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _disk_full(err: BaseException) -> bool:
    """ENOSPC or EDQUOT, from the OS (``errno``) or from HDF5 (whose messages carry it)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return any(f"errno = {code}," in text for code in (errno.ENOSPC, errno.EDQUOT)) or \
        "No space left on device" in text or "Disk quota exceeded" in text


def _disk_full_error(target: Path, err: BaseException) -> Exception:
    import shutil

    from saeflow.core.errors import DiskFullError

    try:
        free = f"{_human_bytes(shutil.disk_usage(target.parent).free)} free"
    except OSError:
        free = "free space unknown"
    quota = " (disk quota exceeded)" if "quota" in str(err).lower() or \
        getattr(err, "errno", None) == errno.EDQUOT else ""
    return DiskFullError(target, "<file>", f"no space left on the device{quota} while writing "
                         f"it ({free} in {target.parent}): nothing was written; free some space "
                         "and run again")


def _human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


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


@contextlib.contextmanager
def _reading_file(path: Path) -> Iterator[None]:
    """Around a read of ``path``: missing, a folder, or unreadable (gzip's truncated or damaged
    streams too) is one InputError naming the file."""
    from saeflow.core.errors import InputError

    try:
        yield
    except FileNotFoundError:
        raise InputError(path, "<file>", "does not exist") from None
    except IsADirectoryError:
        raise InputError(path, "<file>", "is a folder, not a file") from None
    except (OSError, EOFError) as err:
        raise InputError(path, "<file>", f"unreadable ({err})") from None


def read_text(path: str | os.PathLike[str]) -> str:
    """A file's text (``.gz`` decompressed), checked: it exists and is UTF-8. An undecodable
    byte is an InputError naming its line (counted from 1, as every reader counts)."""
    import gzip

    from saeflow.core.errors import InputError

    path = Path(path)
    with _reading_file(path):
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise InputError(path, f"line {line}", f"not UTF-8 text (byte {raw[err.start]:#04x} "
                         f"at offset {err.start})") from None


def _no_duplicate_keys(path: Path, where: str) -> Callable[[list[tuple[str, Any]]], dict]:
    from saeflow.core.errors import InputError

    def build(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise InputError(path, f"{where}{key}", "key given twice (which one is meant?)")
            out[key] = value
        return out
    return build


def _reject_constant(path: Path, where: str) -> Callable[[str], Any]:
    from saeflow.core.errors import InputError

    def reject(name: str) -> Any:
        raise InputError(path, where.rstrip(": ") or "<root>",
                         f"{name} is not a number JSON allows")
    return reject


def parse_json(text: str, path: str | os.PathLike[str], where: str = "",
               allow_nan: bool = True) -> Any:
    """``json.loads`` that refuses duplicate keys (and, unless ``allow_nan``, NaN/Infinity);
    errors name ``path`` and the line. ``where`` prefixes the field (e.g. ``line 3: ``)."""
    from saeflow.core.errors import InputError

    path = Path(path)
    kwargs: dict[str, Any] = {"object_pairs_hook": _no_duplicate_keys(path, where)}
    if not allow_nan:
        kwargs["parse_constant"] = _reject_constant(path, where)
    if not text.strip():
        raise InputError(path, where.rstrip(": ") or "<file>", "empty")
    try:
        return json.loads(text, **kwargs)
    except json.JSONDecodeError as err:
        field = where.rstrip(": ") or f"line {err.lineno}"
        raise InputError(path, field, f"malformed JSON: {err.msg}") from None


def read_json(path: str | os.PathLike[str], allow_nan: bool = True) -> Any:
    """A JSON file through the checked path: exists, UTF-8, no duplicate keys (files a user
    writes also pass ``allow_nan=False``)."""
    return parse_json(read_text(path), path, allow_nan=allow_nan)


class Records(list):
    """Records read from a JSONL file, with ``lines[i]``: the file line (from 1) of record i,
    so a later error about a record names the line a user sees in an editor."""

    lines: list[int]


def line_of(records: Sequence[Any], index: int) -> int:
    """The file line of ``records[index]`` (index + 1 for records not read from a file)."""
    lines = getattr(records, "lines", None)
    return lines[index] if lines is not None else index + 1


def record_lines(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    """``(line number from 1, line)`` of each record of JSONL text split at ``\\n`` only (a
    line holding only whitespace is blank, skipped). The one rule of what a record is:
    :func:`read_jsonl` parses these lines and :func:`count_records` counts them, so every
    reader of a JSONL file agrees on how many records it has and on their line numbers."""
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            yield lineno, line


def count_records(path: str | os.PathLike[str]) -> int:
    """Records in a JSONL file (``.jsonl`` or ``.jsonl.gz``, decompressed as it streams), by
    :func:`record_lines`' rule, without parsing them: cheap enough to plan shards while the
    DAG is built. Equals ``len(read_jsonl(path))`` for every file read_jsonl accepts."""
    import gzip

    path = Path(path)
    gz = path.name.endswith(".gz")
    with _reading_file(path), (
            gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="\n") if gz
            else open(path, encoding="utf-8", errors="replace", newline="\n")) as fh:
        return sum(1 for _ in record_lines(fh))


def read_jsonl(path: str | os.PathLike[str], allow_nan: bool = True) -> Records:
    """One JSON object per line (``.jsonl`` or ``.jsonl.gz``), blank lines skipped; errors
    name the line, counted from 1."""
    from saeflow.core.errors import InputError

    records, lines = Records(), []
    for lineno, line in record_lines(read_text(path).split("\n")):
        record = parse_json(line, path, f"line {lineno}: ", allow_nan)
        if not isinstance(record, dict):
            raise InputError(path, f"line {lineno}", "expected a JSON object")
        records.append(record)
        lines.append(lineno)
    records.lines = lines
    return records


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """A YAML file through the checked path; a key given twice in one mapping is an error
    (PyYAML's own loader lets the second silently win)."""
    import yaml

    from saeflow.core.errors import InputError

    text = read_text(path)

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise InputError(path, f"line {key_node.start_mark.line + 1}",
                                 f"key {key!r} given twice in one mapping")
            seen.add(key)
        return loader.construct_mapping(node, deep=deep)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        field = f"line {mark.line + 1}" if mark is not None else "<file>"
        raise InputError(path, field, f"malformed YAML: {getattr(err, 'problem', err)}") from None


def check_keys(mapping: Mapping[str, Any], allowed: Collection[str], path: str | os.PathLike[str],
               where: str = "") -> None:
    """Unknown keys are an error naming the key and the nearest valid one: a misspelt
    optional key would otherwise be silently ignored."""
    import difflib

    from saeflow.core.errors import InputError

    for key in mapping:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f" (known: {', '.join(sorted(allowed))})"
            raise InputError(path, f"{where}{key}", f"unknown key{hint}")


def write_jsonl(path: str | os.PathLike[str], records: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        for record in records:
            fh.write(json.dumps(record, default=_jsonable) + "\n")
