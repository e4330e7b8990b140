"""Human labels on a random sample of features: the terminal tool and the toy's oracle.

The labels file is the human's work, so it is treated as irreplaceable: it is rewritten
atomically after every answer (a kill at any moment loses nothing already answered), a rerun
resumes at the first unlabelled item of the *same* sample, and a file made from another
sample, seed, category, question or labeller is refused rather than touched. The labeller
sees only the description and the question, never a classifier's answer, so the human
labels stay an independent check on the classifier.

Every writer (the terminal tool, the page of ``saeflow label --serve`` in any number of tabs,
the toy's oracle) merges under one lock (:func:`labels_lock`): it re-reads the file, puts
its own answers given since it last read the file on top, and writes the result, so no
answer is lost whichever tool writes last. Two answers to one row: the last write wins and
the answer it replaced is kept in ``replaced``.

File payload: ``category``, ``question``, ``labeller`` (``human`` / ``oracle``), ``seed``,
``n``, ``sample_feature_ids`` (the sample in order), ``descriptions``, ``source`` (the
descriptions' feature source, i.e. which SAE), ``n_labelled``, ``records``: ``{_row_id,
feature_index, feature_id, description, label}`` per answered item, and ``replaced``:
``{_row_id, feature_id, label, replaced_by}`` per answer a later one overwrote.
"""

from __future__ import annotations

import contextlib
import fcntl
import sys
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from saeflow.formats.labels import NOT_RELATED, RELATED
from saeflow.formats.descriptions import read_description_meta, read_descriptions
from saeflow.core.errors import InputError
from saeflow.core.io import read_json, write_json

KEYS = {"r": RELATED, "n": NOT_RELATED}
HELP = "[r] related  [n] not-related  [b] back  [s] save  [q] quit"


def sample_features(descriptions: Sequence[Mapping[str, Any]], n: int, seed: int,
                    source: str = "arguments") -> list[dict[str, Any]]:
    """``n`` records drawn without replacement with ``seed``; a sample larger than the
    population is refused (it would silently be the whole population, recorded as ``n``).

    Sorted by feature index first, so the sample does not depend on the file's row order.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise InputError(source, "n", f"sample size must be a positive integer, got {n!r}")
    if n > len(descriptions):
        raise InputError(source, "n", f"sample of {n} is larger than the {len(descriptions)} "
                         "described features; ask for at most that many")
    ordered = sorted(descriptions, key=lambda r: (r["feature_index"], r["feature_id"]))
    picked = np.random.default_rng(seed).permutation(len(ordered))[:n]
    return [dict(ordered[i]) for i in picked]


@contextlib.contextmanager
def labels_lock(path: str | Path) -> Iterator[None]:
    """The one lock of a labels file (``.<name>.lock`` beside it), held by every writer while
    it re-reads, merges and writes; other processes and threads wait."""
    lock = Path(path).parent / f".{Path(path).name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class LabelSession:
    """One labels file: its identity (what was sampled, how) and the answers so far.

    ``labels`` is this session's view; an answer set in it differs from ``synced`` (the
    file's answers when last read or written) until :meth:`save` merges it into the file."""

    path: Path
    category: str
    question: str
    seed: int
    n: int
    labeller: str
    descriptions: str
    sample: list[dict[str, Any]]
    labels: dict[int, str] = field(default_factory=dict)
    source: str | None = None
    replaced: list[dict[str, Any]] = field(default_factory=list, init=False)
    synced: dict[int, str] = field(default_factory=dict, init=False, repr=False)

    def payload(self) -> dict[str, Any]:
        records = [{"_row_id": i, "feature_index": self.sample[i]["feature_index"],
                    "feature_id": self.sample[i]["feature_id"],
                    "description": self.sample[i]["description"], "label": self.labels[i]}
                   for i in sorted(self.labels)]
        return {"category": self.category, "question": self.question, "labeller": self.labeller,
                "seed": self.seed, "n": self.n, "descriptions": self.descriptions,
                "source": self.source,
                "sample_feature_ids": [r["feature_id"] for r in self.sample],
                "n_labelled": len(records), "records": records, "replaced": self.replaced}

    def answer(self, row: int, label: str) -> None:
        """Set one row's label and merge it into the file at once (this answer wins)."""
        self._write({row: label})

    def save(self) -> None:
        """Write the file's answers with this session's new ones on top."""
        self._write({})

    def sync(self) -> None:
        """Under the lock: take in the answers other writers saved (nothing is written)."""
        with labels_lock(self.path):
            self.labels, self.replaced, self.synced = self._merged({})

    def _write(self, given: Mapping[int, str]) -> None:
        with labels_lock(self.path):
            self.labels, self.replaced, _ = self._merged(given)
            write_json(self.path, self.payload(), {"category": self.category, "seed": self.seed,
                                                   "n": self.n, "labeller": self.labeller})
            self.synced = dict(self.labels)

    def _merged(self, given: Mapping[int, str]
                ) -> tuple[dict[int, str], list[dict[str, Any]], dict[int, str]]:
        """(merged answers, replaced answers, the file's answers): the file's, then this
        session's answers set since it last read the file, then ``given``; last write wins."""
        mine = {r: lab for r, lab in self.labels.items() if self.synced.get(r) != lab}
        mine.update(given)
        if not self.path.exists():  # not written yet (or deleted): keep every answer held
            return {**self.labels, **mine}, list(self.replaced), {}
        data = read_json(self.path)
        if not isinstance(data, dict):
            raise InputError(self.path, "<root>", "not a labels file; refusing to overwrite it")
        _check_same(self.path, data, self)
        on_disk = _read_answers(self.path, data, self)
        merged, replaced = dict(on_disk), _read_replaced(self.path, data)
        for row, label in sorted(mine.items()):
            if merged.get(row, label) != label:
                replaced.append({"_row_id": row, "feature_id": self.sample[row]["feature_id"],
                                 "label": merged[row], "replaced_by": label})
            merged[row] = label
        return merged, replaced, on_disk

    def next_unlabelled(self, start: int = 0) -> int | None:
        """First unanswered row at or after ``start``, wrapping to the beginning."""
        order = list(range(start, len(self.sample))) + list(range(start))
        return next((i for i in order if i not in self.labels), None)


def _check_same(path: Path, existing: Mapping[str, Any], fresh: LabelSession) -> None:
    """Refuse to append to a file that describes a different sample or question."""
    for key in ("labeller", "category", "seed", "n", "question"):
        if existing.get(key) != getattr(fresh, key):
            raise InputError(path, key, f"file was made with {key}={existing.get(key)!r}, not "
                                        f"{getattr(fresh, key)!r}; refusing to append "
                                        "(choose another --out)")
    if existing.get("sample_feature_ids") != [r["feature_id"] for r in fresh.sample]:
        raise InputError(path, "sample_feature_ids", "file was made from a different sample "
                                                     "(descriptions changed?); refusing to append")


def _read_answers(path: Path, data: Mapping[str, Any], session: LabelSession) -> dict[int, str]:
    records = data.get("records")
    if not isinstance(records, list):
        raise InputError(path, "records", "missing or not a list")
    answers = {}
    for i, rec in enumerate(records):
        row = rec.get("_row_id") if isinstance(rec, dict) else None
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < len(session.sample):
            raise InputError(path, f"records[{i}]._row_id", f"not a row of the sample: {row!r}")
        if rec.get("feature_id") != session.sample[row]["feature_id"]:
            raise InputError(path, f"records[{i}].feature_id", "does not match the sample")
        if rec.get("label") not in (RELATED, NOT_RELATED):
            raise InputError(path, f"records[{i}].label", f"unknown label {rec.get('label')!r}")
        if row in answers:
            raise InputError(path, f"records[{i}]._row_id", f"duplicate row {row}")
        answers[row] = rec["label"]
    return answers


def _read_replaced(path: Path, data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The answers later ones overwrote (absent in files older than the field)."""
    replaced = data.get("replaced", [])
    if not isinstance(replaced, list) or not all(isinstance(r, dict) for r in replaced):
        raise InputError(path, "replaced", "not a list of records")
    return list(replaced)


def open_session(out: str | Path, descriptions_path: str | Path, category: str, question: str,
                 n: int = 300, seed: int = 42, labeller: str = "human") -> LabelSession:
    """A fresh session, or the one stored in ``out`` when it holds the same sample."""
    descriptions = read_descriptions(descriptions_path)
    session = LabelSession(Path(out), category, question, seed, n, labeller,
                           str(descriptions_path), sample_features(descriptions, n, seed),
                           source=read_description_meta(descriptions_path)["source"])
    if session.path.exists():
        session.sync()
    return session


def _show(session: LabelSession, row: int, out: TextIO) -> None:
    mine = session.labels.get(row)
    out.write(f"\n--- item {row + 1}/{len(session.sample)} · {len(session.labels)} labelled ---\n"
              f"Question: {session.question}\n"
              f"Description: {session.sample[row]['description']}\n"
              + (f"(your answer so far: {mine})\n" if mine else "") + f"{HELP}\n> ")
    out.flush()


def run_session(session: LabelSession, keys: Iterator[str], out: TextIO) -> int:
    """Ask about each unlabelled item, reading one key at a time; returns answers given.

    Saves after every answer; ``q`` or the end of ``keys`` saves and stops.
    """
    row = session.next_unlabelled()
    given = 0
    if row is None:
        out.write(f"All {len(session.sample)} items are labelled in {session.path}.\n")
        return given
    _show(session, row, out)
    for key in keys:
        if key.isspace():
            continue
        if key in KEYS:
            session.answer(row, KEYS[key])
            given += 1
            nxt = session.next_unlabelled(row + 1)
            if nxt is None:
                out.write(f"\nDone: all {len(session.sample)} items labelled; saved {session.path}\n")
                return given
            row = nxt
        elif key == "b":
            row = max(0, row - 1)
        elif key == "s":
            if session.labels or session.path.exists():
                session.save()
            out.write(f"saved {len(session.labels)} labels to {session.path}\n")
        elif key == "q":
            break
        else:
            out.write(f"unknown key {key!r}\n")
        _show(session, row, out)
    if session.labels or session.path.exists():
        session.save()
        out.write(f"\nsaved {len(session.labels)}/{len(session.sample)} labels to {session.path}\n")
    else:  # no answer yet (e.g. stdin from /dev/null): leave no empty labels file behind
        out.write("\nno answers given; nothing written\n")
    return given


def _tty_keys(stream: TextIO) -> Iterator[str]:
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        # One key at a time, Ctrl-C still interrupts; TCSANOW keeps keys typed ahead.
        tty.setcbreak(fd, termios.TCSANOW)
        while key := stream.read(1):
            yield key
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def key_stream(stream: TextIO) -> Iterator[str]:
    """Single keypresses from a terminal; characters of the input when it is a pipe or file."""
    if stream.isatty():
        yield from _tty_keys(stream)
        return
    while key := stream.read(1):
        yield key


def label_interactively(out: str | Path, descriptions_path: str | Path, category: str,
                        question: str, n: int = 300, seed: int = 42,
                        stdin: TextIO | None = None, stdout: TextIO | None = None) -> LabelSession:
    """``saeflow label``: open or resume ``out`` and ask until done, quit or end of input.

    Ctrl-C ends the session (every answer is already on disk), says how many are saved and
    how to resume, and raises :class:`Interrupted` (the command exits 130, as shells expect).
    """
    session = open_session(out, descriptions_path, category, question, n, seed)
    try:
        run_session(session, key_stream(stdin or sys.stdin), stdout or sys.stdout)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: {len(session.labels)}/{len(session.sample)} labels "
                          f"saved in {session.path}; run the same command again to resume") from None
    return session


class Interrupted(Exception):
    """The labeller pressed Ctrl-C; the message says what is saved and how to resume."""


def label_command(descriptions: str | Path, category: str, question: str, out: str | Path,
                  n: int, seed: int) -> str:
    """The exact ``saeflow label`` command that labels a category's sample."""
    import shlex

    return " ".join(["saeflow label", "--descriptions", shlex.quote(str(descriptions)),
                     "--category", shlex.quote(category), "--question", shlex.quote(question),
                     "--out", shlex.quote(str(out)), "--n", str(n), "--seed", str(seed)])


def import_human_labels_stage(path: str | Path | None, configured: str | None,
                        descriptions: str | Path, category: str, question: str,
                        sample: Mapping[str, int], out: str | Path,
                        config_source: str = "config") -> None:
    """Check a human labels file and write the records the DAG uses to ``out``; the user's
    file is only read. Labels of another SAE, or of features beyond the width or outside
    ``descriptions``, are refused (:func:`~saeflow.labels.agreement.check_labels_fit_sae`).
    Without one (not written yet, or not named in labels.human) this is an
    InputError giving the ``saeflow label`` command to run."""
    from saeflow.formats.labels import read_labelled
    from saeflow.labels.agreement import check_human_labels, check_labels_fit_sae

    field = f"labels.human.{category}"
    if path is None:
        target = configured or f"labels/{category}.json"
        how = label_command(descriptions, category, question, target, sample["n"], sample["seed"])
        where = f"{configured!r} does not exist yet" if configured else "no file is named"
        raise InputError(config_source, field, f"{where}: label the sample with `{how}`"
                         + ("" if configured else f" and set {field}: {target}")
                         + ", then run snakemake again")
    records = read_labelled(path, strict=False)
    if not records:
        raise InputError(path, "records", "no labelled rows yet: label some with saeflow label")
    check_human_labels(records, path)
    data = read_json(path) if str(path).endswith(".json") else {}
    if isinstance(data, Mapping) and data.get("category") not in (None, category):
        raise InputError(path, "category", f"the file labels {data['category']!r}, not {category!r}")
    if isinstance(data, Mapping) and data.get("question") not in (None, question):
        raise InputError(path, "question", f"the file answers {data['question']!r}, not the "
                         f"config's question {question!r}")
    check_labels_fit_sae(records, path, data if isinstance(data, Mapping) else {}, descriptions)
    write_json(out, {"category": category, "question": question, "source": str(path),
                     "n_labelled": len(records), "records": records},
               {"category": category, "source": str(path)})


# --- toy world: the oracle stands in for the human --------------------------------------------

def oracle_labeller(members: Collection[int]) -> Callable[[Mapping[str, Any]], str]:
    """A labeller answering from ground truth: ``related`` iff the feature is a member."""
    truth = {int(m) for m in members}
    return lambda record: RELATED if record["feature_index"] in truth else NOT_RELATED


def oracle_labels(out: str | Path, descriptions_path: str | Path, category: str, question: str,
                  members: Collection[int], n: int = 300, seed: int = 42) -> LabelSession:
    """Label the same sample ``saeflow label`` would draw, from ground truth, and save it."""
    descriptions = read_descriptions(descriptions_path)
    session = LabelSession(Path(out), category, question, seed, n, "oracle",
                           str(descriptions_path), sample_features(descriptions, n, seed),
                           source=read_description_meta(descriptions_path)["source"])
    label = oracle_labeller(members)
    session.labels = {i: label(r) for i, r in enumerate(session.sample)}
    session.save()
    return session


def label_oracle_stage(descriptions_path: str | Path, membership: str | Path, category: str,
                 categories: Any, sample: Mapping[str, Any], out: str | Path) -> LabelSession:
    """Rule ``label_oracle`` (toy only): :func:`oracle_labels` of ``category`` from its true
    members in ``membership`` (truth_membership.json), on the ``sample`` ({n, seed}) a human
    would label, with the question of ``categories`` (``config["labels"]["categories"]`` or
    "toy"); saved to ``out`` (labels/oracle/{category}.json)."""
    from saeflow.labels.classify import resolve_categories

    question = resolve_categories(categories)[category]["question"]
    members = read_json(membership)["members"][category]
    return oracle_labels(out, descriptions_path, category, question, members, sample["n"],
                         sample["seed"])
