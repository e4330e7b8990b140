"""The one error type users see: bad input, reported as a single line naming file and field."""

from __future__ import annotations


class InputError(Exception):
    """Bad user input. ``str(err)`` is one line: ``<file>: <field>: <problem>``."""

    def __init__(self, source: str, field: str, problem: str):
        self.source, self.field, self.problem = str(source), str(field), problem
        super().__init__(f"{self.source}: {self.field}: {problem}")
