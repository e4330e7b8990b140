"""Calibration of every p-value and interval saeflow reports, on null or planted data with a
known truth (named target ``snakemake calibration``; a small version runs in the tests).

Each :class:`Check` runs saeflow's own code (the probe's permutation baseline, the effect
sizes' permutation p and Benjamini-Hochberg, the LPF and ratio intervals, the agreement
intervals, the cluster bootstrap of the patching and faithfulness intervals) over simulated
replicates and counts how often a p-value falls at or below its level on null data (a
false-positive rate) or an interval covers the truth (a coverage). The table gives the
nominal level, the observed rate, its Clopper-Pearson 95% interval and the replicates, and a
verdict: a p-value is *valid* unless its false-positive rate is significantly above nominal,
an interval *covers* unless its coverage is significantly below nominal.

The designs live beside the stage they check (:mod:`saeflow.calibration.probe`, ``lpf``,
``agreement``, ``patch``); the stages' own tests use the same simulations.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from saeflow.calibration import agreement, lpf, patch, probe
from saeflow.calibration.check import COVERAGE, FPR, Check


def checks() -> list[Check]:
    """Every calibration, stage by stage."""
    return [*probe.checks(), *lpf.checks(), *agreement.checks(), *patch.checks()]


def verdict(kind: str, nominal: float, ci: tuple[float, float]) -> str:
    """``valid`` / ``too many false positives`` for an FPR, ``covers`` / ``under-covers`` for
    a coverage, judged by the observed rate's 95% interval against the nominal level."""
    if kind == FPR:
        return "too many false positives" if ci[0] > nominal else "valid"
    return "under-covers" if ci[1] < nominal else "covers"


def run_check(check: Check, scale: float, seed: int) -> dict[str, Any]:
    """One row of the table: the check at ``scale`` x its replicates."""
    from scipy.stats import binomtest

    reps = max(10, round(check.reps * scale))
    start = time.perf_counter()
    hits, n = check.run(reps, seed)
    ci = binomtest(hits, n).proportion_ci(0.95, "exact") if n else None
    interval = (float(ci.low), float(ci.high)) if ci else (float("nan"), float("nan"))
    return {"quantity": check.quantity, "kind": check.kind, "nominal": check.nominal,
            "observed": hits / n if n else None, "observed_ci95": list(interval),
            "observed_ci95_method": "Clopper-Pearson exact binomial interval",
            "hits": hits, "replicates": n, "design": check.design,
            "verdict": verdict(check.kind, check.nominal, interval) if n else "no replicates",
            "seconds": round(time.perf_counter() - start, 2)}


def calibrate(scale: float = 1.0, seed: int = 0,
              select: Callable[[Check], bool] | None = None) -> dict[str, Any]:
    """Every check (or those ``select`` keeps) at ``scale``; the rows and how to read them."""
    return _result([run_check(c, scale, seed) for c in checks() if select is None or select(c)],
                   scale, seed)


def _result(rows: list[dict[str, Any]], scale: float, seed: int) -> dict[str, Any]:
    return {"scale": scale, "seed": seed, "rows": rows,
            "how_to_read": f"{FPR}: share of p-values <= the nominal level on null data "
                           f"(valid: not significantly above it); {COVERAGE}: share of "
                           "intervals containing the truth on planted data (covers: not "
                           "significantly below it); 95% intervals of the shares are "
                           "Clopper-Pearson"}


def table(result: dict[str, Any]) -> str:
    """The Markdown table docs/validation.md quotes."""
    lines = ["| what saeflow reports | kind | nominal | observed [95% CI] | replicates | verdict |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lo, hi = r["observed_ci95"]
        lines.append(f"| {r['quantity']} | {r['kind']} | {r['nominal']:.2f} | "
                     f"{r['observed']:.3f} [{lo:.3f}, {hi:.3f}] | {r['replicates']} | "
                     f"{r['verdict']} |")
    lines += ["", "Designs:", ""]
    lines += [f"- {r['quantity']}: {r['design']}" for r in result["rows"]]
    return "\n".join(lines) + "\n"


def calibrate_stage(cfg: dict[str, Any], out_json: str | Path, out_table: str | Path) -> None:
    """Rule ``calibrate``: :func:`calibrate` at ``cfg["scale"]`` (``config["calibration"]``)
    into ``out_json`` and its Markdown :func:`table` into ``out_table``."""
    import logging

    from saeflow.core.io import write_json, write_text_atomic

    log = logging.getLogger(__name__)
    rows = []
    for check in checks():
        row = run_check(check, cfg["scale"], cfg["seed"])
        log.info("%s: %s %.3f over %d replicates (%s, %.1f s)", row["quantity"], row["kind"],
                 row["observed"], row["replicates"], row["verdict"], row["seconds"])
        rows.append(row)
    result = _result(rows, cfg["scale"], cfg["seed"])
    write_json(out_json, result, config={"calibration": dict(cfg)})
    write_text_atomic(out_table, table(result))
