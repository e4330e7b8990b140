"""``correction/validation.json`` as the Markdown table docs/validation.md shows, so the page's
numbers are the DAG's, copied by a program rather than by hand::

    python -m saeflow.labels.validation_table results/toy/correction/validation.json
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1e}"


def _cell(cell: Mapping[str, Any]) -> str:
    """bias / RMSE / coverage [Wilson 95%] / in-bucket bias; the coverage is by the scored
    interval (the same-prompts truth's: ``ci95`` of :mod:`saeflow.labels.validation`)."""
    cov, ci = cell["coverage"], cell["coverage_ci95"]
    coverage = "-" if cov is None else f"{cov:.2f}" + ("" if ci is None else
                                                       f" [{ci[0]:.2f}, {ci[1]:.2f}]")
    rmse = "-" if cell["rmse"] is None else f"{cell['rmse']:.1e}"
    flag = " (outside valid range)" if cell.get("outside_valid_range") else ""
    return (f"{_num(cell['bias'])} / {rmse} / {coverage} / {_num(cell['in_bucket']['bias'])}"
            f"{flag}")


def markdown_table(validation: Mapping[str, Any]) -> str:
    """One row per condition and method, one column per category (module docstring)."""
    categories = list(validation["true_lpf"])
    lines = ["| condition | method | " + " | ".join(categories) + " |",
             "|---|---|" + "---|" * len(categories)]
    for cond in validation["conditions"]:
        for method, row in cond["methods"].items():
            name = method + (" (violated)" if row["assumption_violated"] else "")
            cells = [_cell(row["categories"][c]) for c in categories]
            lines.append(f"| {cond['key']} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def truth_line(validation: Mapping[str, Any]) -> str:
    """The measured true LPFs with their standard errors, and the run's size."""
    parts = [f"{c} {t['lpf']:.1e} (se {t['lpf_se']:.1e})" if t.get("lpf_se") is not None
             else f"{c} {t['lpf']:.1e}" for c, t in validation["true_lpf"].items()]
    d, m = validation["design"], validation["measurement"]
    return (f"True LPF: {', '.join(parts)}. {d['replicates']} replicates, "
            f"{len(validation['conditions'])} conditions, false-negative rate "
            f"{d['false_negative_rate']}, sample {d['sample_n']}, {d['n_boot']} posterior "
            f"draws per interval; {m['n_ablations']} distinct ablations in {m['seconds']:.0f} s.\n")


def main(argv: list[str]) -> int:
    from saeflow.core.io import read_json

    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    validation = read_json(argv[0])
    sys.stdout.write(truth_line(validation) + "\n" + markdown_table(validation))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
