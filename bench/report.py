"""``python -m bench.report [--results DIR] [--readme README.md] [--check]``: the tables of
README's Performance section, regenerated from the benchmarks' JSON (``results/bench/*.json``,
full runs only: a ``--smoke`` record measures nothing).

Two blocks, each between its markers in the README (``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->``; the text outside them is never touched):

- ``figures``: every figure of every benchmark, with its target, the load average of the
  machine when the benchmark started (1, 5, 15 min) and the date; a header line with the
  machine, the package versions and the git commit; the benchmarks with no full-run record;
- ``scale``: the gemma-2-2b-widths stages (:mod:`bench.scale`), each subject's seconds per
  prompt and peak-RSS increment next to its ratio.

Without ``--readme`` it prints the blocks; with it, it rewrites them in place; ``--check``
fails (exit 1) where the README's blocks differ from what the JSON gives.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_OUT, REPO, format_value

VERSIONS = ("torch", "transformer-lens", "sae-lens", "snakemake")


def load_records(results: Path, include_smoke: bool = False) -> list[dict[str, Any]]:
    """Every benchmark record in ``results`` (``*.json``), in :data:`bench.BENCHMARKS` order
    then by name; smoke records only with ``include_smoke``."""
    from bench import BENCHMARKS

    records = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    records = [r for r in records if "benchmark" in r and (include_smoke or not r.get("smoke"))]
    order = {name: i for i, name in enumerate(BENCHMARKS)}
    return sorted(records, key=lambda r: (order.get(r["benchmark"], len(order)), r["benchmark"]))


def _cell(text: Any) -> str:
    """``text`` for a Markdown table cell (a ``|`` in it would end the cell)."""
    return str(text).replace("|", "\\|")


def _load(record: Mapping[str, Any]) -> str:
    load = record.get("machine", {}).get("load_average_before") or \
        record.get("machine", {}).get("load_average")
    return " / ".join(f"{v:.1f}" for v in load) if load else "-"


def _date(record: Mapping[str, Any]) -> str:
    return str(record.get("date") or "-")[:10]


def _machine_line(records: Sequence[Mapping[str, Any]]) -> str:
    """Where and with what the figures were measured, from the records' own fields."""
    first = records[0]
    m, versions = first.get("machine", {}), first.get("provenance", {}).get("versions", {})
    commits = sorted({r.get("provenance", {}).get("git_commit", "?")[:12] +
                      ("-dirty" if r.get("provenance", {}).get("git_commit", "").endswith("-dirty")
                       else "") for r in records})
    dates = sorted({_date(r) for r in records})
    span = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    device = "CUDA" if m.get("cuda") else "CPU"
    return (f"Measured {span} on {m.get('processor', '?')} ({m.get('cpus_usable', '?')} of "
            f"{m.get('cpu_count', '?')} CPUs usable, {m.get('mem_total_gib', '?')} GiB, "
            f"{device}; torch threads {m.get('torch_threads', '?')}); "
            + ", ".join(f"{k} {versions[k]}" for k in VERSIONS if k in versions)
            + f"; commit {', '.join(commits)}. Load: the 1/5/15-min load average when the "
            "benchmark started (2 cores: above 2 means the benchmark shared them).")


def figures_block(records: Sequence[Mapping[str, Any]]) -> str:
    """Every figure of ``records`` as one Markdown table, with its machine line."""
    from bench import BENCHMARKS

    if not records:
        return "No benchmark results yet: run `python -m bench`, then `python -m bench.report`."
    rows = ["| Benchmark | Figure | Model | Value | Target | Met | Load at start | Date |",
            "|---|---|---|---|---|---|---|---|"]
    for rec in records:
        for f in rec["figures"]:
            target = f"{f['op']} {f['target']:g}" if f.get("target") is not None else "–"
            met = {True: "yes", False: "**no**", None: "–"}[f.get("met")]
            rows.append(f"| {rec['benchmark']} | {_cell(f['name'])} | {f['model']} | "
                        f"{format_value(f['value'], f['unit'])} | {target} | {met} | "
                        f"{_load(rec)} | {_date(rec)} |")
    missing = [n for n in BENCHMARKS if n not in {r["benchmark"] for r in records}]
    tail = f"\n\nNot in this table (no full-run record): {', '.join(missing)}." if missing else ""
    return _machine_line(records) + "\n\n" + "\n".join(rows) + tail


def scale_block(records: Sequence[Mapping[str, Any]]) -> str:
    """The scale benchmark's stages: ratio, target, and per subject the seconds per prompt
    and the peak-RSS increment (MiB) of a call."""
    scale = next((r for r in records if r["benchmark"] == "scale"), None)
    if scale is None:
        return "No full `scale` record yet: run `python -m bench scale`."
    rows = [f"`{scale['params'].get('model', '?')}`, {scale['params'].get('repeats', '?')} "
            f"repeats; load at start {_load(scale)}; {_date(scale)}.", "",
            "| Stage (figure) | Ratio | Target | s / prompt | Peak RSS + (MiB) |",
            "|---|---|---|---|---|"]
    for f in scale["figures"]:
        d = f.get("detail", {})
        per = d.get("s_per_prompt")
        peaks = d.get("peak_rss_increment_mib", {})
        target = f"{f['op']} {f['target']:g}" if f.get("target") is not None else "–"
        rows.append(f"| {_cell(f['name'])} | {format_value(f['value'], f['unit'])} | {target} | "
                    + (", ".join(f"{k} {v:.3g}" for k, v in per.items()) if per else "–")
                    + " | " + (", ".join(f"{k} {v:.0f}" for k, v in peaks.items() if v is not None)
                               if peaks else "–") + " |")
    return "\n".join(rows)


BLOCKS = {"figures": figures_block, "scale": scale_block}


def render(records: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """``{block name: Markdown}`` for every block."""
    return {name: fn(records) for name, fn in BLOCKS.items()}


def replace_blocks(text: str, blocks: Mapping[str, str]) -> str:
    """``text`` with the contents between each block's markers replaced; a block whose
    markers are missing is a ValueError naming them."""
    for name, body in blocks.items():
        start, end = f"<!-- bench:{name} -->\n", f"<!-- /bench:{name} -->"
        pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            raise ValueError(f"no {start.strip()} ... {end} markers")
        text = pattern.sub(lambda m: start + body + "\n" + end, text, count=1)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--results", type=Path, default=DEFAULT_OUT, help="benchmark JSON folder")
    parser.add_argument("--readme", type=Path, nargs="?", const=REPO / "README.md",
                        help="rewrite the blocks in this README (default README.md)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    parser.add_argument("--include-smoke", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    blocks = render(load_records(args.results, args.include_smoke))
    if args.readme is None:
        print("\n\n".join(blocks.values()))
        return 0
    old = args.readme.read_text()
    new = replace_blocks(old, blocks)
    if args.check:
        if new != old:
            print(f"{args.readme}: the benchmark tables differ from {args.results}; run "
                  "python -m bench.report --readme", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
