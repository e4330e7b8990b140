"""The calibration table (target `calibration`, small here): every row is saeflow's own code on
null or planted data, with its verdict; a wrong method is flagged by the same verdict."""

from __future__ import annotations

import numpy as np
import pytest

from saeflow.calibration import COVERAGE, FPR, Check, calibrate, checks, run_check, table, verdict


def test_every_reported_quantity_has_a_check():
    quantities = " ".join(c.quantity for c in checks())
    for what in ("probe baseline p", "effect size permutation p", "effect size BH",
                 "LPF 95% interval", "LPF ratio 95% set", "agreement precision",
                 "agreement phi", "agreement kappa", "patching interval over pairs"):
        assert what in quantities, what
    assert {c.kind for c in checks()} == {FPR, COVERAGE}


def test_small_table_valid_where_the_method_is_and_flags_what_is_not():
    """A tenth of the replicates of everything but the probe's baseline (its own tests run it
    at 200 datasets): each row valid or covering; 4 templates, which no bootstrap covers at
    the full table's 400 replicates (the interval's method string says so), is not judged
    at 40."""
    result = calibrate(0.1, 0, select=lambda c: not c.quantity.startswith("probe baseline"))
    for row in result["rows"]:
        lo, hi = row["observed_ci95"]
        assert lo <= row["observed"] <= hi and row["replicates"] >= 10
        if "4 templates" not in row["quantity"]:
            assert row["verdict"] == ("covers" if row["kind"] == COVERAGE else "valid"), row
    text = table(result)
    assert text.startswith("| what saeflow reports | kind | nominal | observed [95% CI]")
    assert text.count("\n| ") == len(result["rows"])  # one line per row after the header


def test_a_wrong_method_gets_a_failing_verdict():
    """An interval that ignores the clustering (bootstrap over pairs on templated pairs) and a
    p-value that rejects too often are flagged, by the verdict every row gets."""
    from saeflow.calibration.patch import clustered_coverage

    pairs = Check("pair bootstrap on templates", COVERAGE, 0.95, "wrong method", 200,
                  lambda reps, seed: clustered_coverage(30, 20, False, reps, seed))
    assert run_check(pairs, 1.0, 0)["verdict"] == "under-covers"
    rng = np.random.default_rng(0)
    liberal = Check("p = U / 2", FPR, 0.05, "wrong method", 400,
                    lambda reps, seed: (int(np.sum(rng.random(reps) / 2 <= 0.05)), reps))
    assert run_check(liberal, 1.0, 0)["verdict"] == "too many false positives"
    assert verdict(FPR, 0.05, (0.01, 0.06)) == "valid"
    assert verdict(COVERAGE, 0.95, (0.90, 0.96)) == "covers"
    with pytest.raises(TypeError):
        run_check(pairs, "x", 0)


def test_the_docs_quote_todays_table():
    """docs/validation.md quotes `snakemake calibration`'s table: one row per check, in order
    (a table left from removed or renamed checks fails), each verdict matching its interval."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "validation.md").read_text()
    begin, end = "<!-- saeflow.calibration: begin -->", "<!-- saeflow.calibration: end -->"
    quoted = page[page.index(begin) + len(begin):page.index(end)]
    rows = [line.split(" | ") for line in quoted.splitlines()
            if line.startswith("| ") and not line.startswith("| what saeflow")]
    assert [r[0].removeprefix("| ") for r in rows] == [c.quantity for c in checks()]
    for r in rows:
        kind, nominal = r[1], float(r[2])
        lo, hi = (float(x) for x in r[3].split("[")[1].rstrip("]").split(", "))
        assert r[5].rstrip(" |") == verdict(kind, nominal, (lo, hi)), r
