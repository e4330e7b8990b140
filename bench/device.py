"""``python -m bench.device --scale FILE --dag-log FILE --dag-rc N --dag-s S --out FILE``: the
one JSON file of a GPU check (``bench/device.sh``): the ``scale`` benchmark's absolute figures
on the device and how the toy DAG's gpu rules ran there.

- ``scale``: extraction tokens/s (real tokens over the median extraction time), seconds per
  AtP pair and per prompt of every stage, every stage's ratio, peak GPU memory per stage
  (the largest increment of ``torch.cuda.max_memory_allocated`` over a call) and in all;
- ``dag``: its exit status and wall time, the gpu rules that finished (from Snakemake's log),
  and each gpu rule's ``benchmark:`` file (seconds, peak RSS) where it has one.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path
from typing import Any

from bench.common import REPO

GPU_RULES = ("train_model", "train_sae", "evaluate_saes", "extract", "encode",
             "ablate_categories", "patch_resid", "patch_estimate", "patch_verify", "patch_exact",
             "patch_circuit")


def scale_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The absolute figures of a ``scale`` record (``results/bench/scale.json``)."""
    out: dict[str, Any] = {"model": record["params"].get("model"), "machine": record["machine"],
                           "stages": {}}
    peak = 0.0
    for f in record["figures"]:
        d = f.get("detail", {})
        stage = {"ratio": f["value"], "target": f.get("target"), "met": f.get("met"),
                 "s_per_prompt": d.get("s_per_prompt"),
                 "peak_gpu_increment_mib": d.get("peak_gpu_increment_mib")}
        out["stages"][f["name"]] = stage
        peak = max([peak, *(stage["peak_gpu_increment_mib"] or {}).values()])
        times = d.get("times_s", {})
        if f["name"].startswith("extraction") and "n_tokens" in d and times.get("extraction"):
            ext = sorted(times["extraction"])[len(times["extraction"]) // 2]
            out["extraction_tokens_per_s"] = round(d["n_tokens"] / ext, 1)
        if f["name"].startswith("AtP") and d.get("s_per_prompt"):
            out["atp_s_per_pair"] = d["s_per_prompt"].get("atp")
    out["peak_gpu_increment_mib"] = peak
    out["rss_after_model_mib"] = record["params"].get("rss_after_model_mib")
    return out


def dag_summary(log: Path, rc: int, seconds: float, benchmarks: Path) -> dict[str, Any]:
    """How the toy DAG's gpu rules ran: Snakemake's exit status, wall time, the gpu rules
    its log shows starting, and their benchmark files' seconds and peak RSS."""
    text = log.read_text(errors="replace") if log.exists() else ""
    started = sorted({m for m in re.findall(r"^(?:local)?rule (\w+):", text, re.M)
                      if m in GPU_RULES})
    timings: dict[str, list[dict[str, float]]] = {}
    for tsv in sorted(benchmarks.rglob("*.tsv")) if benchmarks.exists() else []:
        rule = tsv.parent.name
        if rule in GPU_RULES:
            with tsv.open() as fh:
                for row in csv.DictReader(fh, delimiter="\t"):
                    timings.setdefault(rule, []).append(
                        {"s": float(row["s"]), "max_rss_mib": float(row.get("max_rss") or 0)})
    return {"rc": rc, "seconds": seconds, "gpu_rules_run": started,
            "gpu_rules_missing": [r for r in GPU_RULES if r not in started],
            "benchmarks": timings, "log_tail": text[-3000:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.device", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--scale", type=Path, required=True)
    parser.add_argument("--dag-log", type=Path, required=True)
    parser.add_argument("--dag-rc", type=int, required=True)
    parser.add_argument("--dag-s", type=float, required=True)
    parser.add_argument("--benchmarks", type=Path, default=REPO / "results" / "toy" / "benchmarks")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from saeflow.core.io import write_json

    record = {"scale": scale_summary(json.loads(args.scale.read_text()))
              if args.scale.exists() else {"error": f"{args.scale}: no scale record"},
              "dag": dag_summary(args.dag_log, args.dag_rc, args.dag_s, args.benchmarks)}
    write_json(args.out, record, config={"device_check": {"gpu_rules": list(GPU_RULES)}})
    print(json.dumps({k: v for k, v in record["scale"].items() if k != "machine"}, indent=1))
    return 0 if "error" not in record["scale"] and args.dag_rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
