"""The one error type users see: bad input, reported as a single line naming file and field."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


class InputError(Exception):
    """Bad user input. ``str(err)`` is one line: ``<file>: <field>: <problem>``."""

    def __init__(self, source: str, field: str, problem: str):
        self.source, self.field, self.problem = str(source), str(field), problem
        super().__init__(f"{self.source}: {self.field}: {problem}")


class DiskFullError(InputError):
    """An output could not be written for want of space (ENOSPC, a quota): one line naming the
    file and the free space, through the same exit path as bad input (nothing was written)."""


EXIT_BAD_INPUT = 2


@contextlib.contextmanager
def input_errors_exit(log: object | None = None) -> Iterator[None]:
    """The one exit path for bad input, in rule scripts and the CLI alike: an InputError
    prints ``saeflow: error: <file>: <field>: <problem>`` (also to ``log``, a logger) and
    exits 2; nothing else is caught."""
    try:
        yield
    except InputError as err:
        # A rule's stderr is its log file (where ``log`` also writes): the line goes to the
        # console Snakemake runs in too.
        sys.exit(report_input_error(err, log, sys.__stderr__))


def report_input_error(err: InputError, log: object | None = None, stream: object = None) -> int:
    """Print (and log) the one line of ``err``; returns the exit status for bad input."""
    if log is not None:
        log.error("%s", err)  # type: ignore[attr-defined]
    print(f"saeflow: error: {err}", file=stream or sys.stderr)
    return EXIT_BAD_INPUT
