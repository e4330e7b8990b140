"""docs/validation.md quotes `python -m saeflow.testing.numbers`: the program runs on a finished toy
run, and the page's block has the rows the program writes (a stale block fails)."""

import re
import subprocess
import sys

import pytest

from saeflow.testing.numbers import report
from saeflow.testing.workspace import REPO

pytestmark = pytest.mark.slow

BEGIN, END = "<!-- saeflow.testing.numbers: begin -->", "<!-- saeflow.testing.numbers: end -->"


def _shape(text: str) -> list[str]:
    """Each line's label: a table row's first cell, a bullet's words up to its first number."""
    out = []
    for line in text.strip().splitlines():
        if line.startswith("|"):
            out.append(line.split("|")[1].strip())
        elif line.startswith("- "):
            out.append(re.split(r"[-+]?\d", line, maxsplit=1)[0])
    return out


def test_the_numbers_program_reads_a_run_and_the_docs_quote_its_shape(toy_run):
    results = toy_run / "results" / "toy"
    text = report(results)
    assert text.startswith("| check | with the error term | without |")
    assert "Circuit pruned by nodes" in text and "pruned by edges too" in text
    cli = subprocess.run([sys.executable, "-m", "saeflow.testing.numbers", str(results)],
                         capture_output=True, text=True, check=True)
    assert cli.stdout == text
    page = (REPO / "docs" / "validation.md").read_text()
    quoted = page[page.index(BEGIN) + len(BEGIN):page.index(END)]
    assert _shape(quoted) == _shape(text)


REP_BEGIN, REP_END = "<!-- saeflow.toy.replicates: begin -->", "<!-- saeflow.toy.replicates: end -->"


def test_the_docs_replicate_table_holds_its_own_run_and_names_todays_headlines(toy_run):
    """The page quotes `python -m saeflow.toy.replicates` (the default config over seeds): the
    run the page's other numbers come from lies inside each number's replicate range (no
    single-run digits to match), and the table names the headlines the program reads today
    (a table left from renamed outputs fails)."""
    from saeflow.toy.replicates import headline, parse_table

    page = (REPO / "docs" / "validation.md").read_text()
    quoted = page[page.index(REP_BEGIN) + len(REP_BEGIN):page.index(REP_END)]
    rows = parse_table(quoted)
    assert len(rows) > 30
    for name, (this, lo, hi) in rows.items():
        assert this is None or lo <= this <= hi, name
    ours = [k for k, v in headline(toy_run / "results" / "toy").items() if isinstance(v, float)]
    assert sum(k in rows for k in ours) >= 0.5 * len(ours), sorted(set(ours) - set(rows))
