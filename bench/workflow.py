"""Workflow overhead: wall time of ``snakemake -n`` on a completed toy run over that of an
empty workflow (one rule whose output exists). Both are fresh ``python -m snakemake``
processes, so interpreter start-up and Snakemake's own import sit in the denominator and the
ratio is what the saeflow workflow adds: config validation, parsing the rule files, building
the DAG and checking every output's timestamps and provenance. Target <= 3.

The completed toy run is config/test.yaml's (a smaller toy world) in ``results/bench/_toy_run``:
the workflow files are copied there and ``snakemake`` brings it up to date, which runs the
whole DAG once (minutes) and afterwards only what the workflow's changes invalidate.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Figure, Result
from saeflow.testing.workspace import TEST_CONFIGS, run_snakemake, sync_workflow

TARGET = 3.0
RUN_DIR = common.DEFAULT_OUT / "_toy_run"
EMPTY_SNAKEFILE = """rule done:
    output:
        "done.txt",
    shell:
        "touch {output}"
"""
# Smoke mode: a three-rule chain, complete, instead of the toy run.
SMOKE_SNAKEFILE = """rule all:
    input:
        "c.txt",


rule a:
    output:
        "a.txt",
    shell:
        "touch {output}"


rule b:
    input:
        "a.txt",
    output:
        "b.txt",
    shell:
        "touch {output}"


rule c:
    input:
        "b.txt",
    output:
        "c.txt",
    shell:
        "touch {output}"
"""


def snakemake(workdir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return run_snakemake(workdir, *args, check=False, timeout=timeout, env={"TQDM_DISABLE": "1"})


def completed_toy_run() -> tuple[Path, list[str], dict[str, Any]]:
    """``RUN_DIR`` brought up to date with config/test.yaml; (dir, dry-run args, record)."""
    sync_workflow(RUN_DIR)
    args = ["--configfile", *TEST_CONFIGS]
    info: dict[str, Any] = {"run_dir": str(RUN_DIR.relative_to(common.REPO)), "config": list(TEST_CONFIGS)}
    pending = snakemake(RUN_DIR, "-n", "--cores", "1", *args)
    info["up_to_date_before"] = "Nothing to be done" in pending.stdout + pending.stderr
    if not info["up_to_date_before"]:
        import time

        t0 = time.perf_counter()
        build = snakemake(RUN_DIR, "--cores", "2", "--resources", "gpu=1", "--keep-going", *args,
                          timeout=3600)
        info["build_s"] = round(time.perf_counter() - t0, 1)
        if build.returncode != 0:
            lines = (build.stdout + build.stderr).splitlines()
            info["build_error"] = [ln.strip() for ln in lines
                                   if "Error in rule" in ln or "error:" in ln.lower()][:10]
    check = snakemake(RUN_DIR, "-n", "--cores", "1", *args)
    text = check.stdout + check.stderr
    info["complete"] = check.returncode == 0 and "Nothing to be done" in text
    totals = re.findall(r"^total\s+(\d+)\s*$", text, flags=re.M)
    info["pending_jobs"] = 0 if info["complete"] else int(totals[-1]) if totals else None
    return RUN_DIR, args, info


def smoke_run(workdir: Path) -> tuple[Path, list[str], dict[str, Any]]:
    run_dir = workdir / "chain"
    run_dir.mkdir()
    (run_dir / "Snakefile").write_text(SMOKE_SNAKEFILE)
    done = snakemake(run_dir, "--cores", "1")
    return run_dir, [], {"run_dir": "three-rule chain", "complete": done.returncode == 0}


def run(smoke: bool = False) -> Result:
    repeats = 1 if smoke else 5
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty"
        empty.mkdir()
        (empty / "Snakefile").write_text(EMPTY_SNAKEFILE)
        (empty / "done.txt").touch()
        run_dir, args, info = smoke_run(Path(tmp)) if smoke else completed_toy_run()

        def dry(workdir: Path, extra: list[str]) -> Any:
            def call() -> None:
                proc = snakemake(workdir, "-n", "--cores", "1", *extra)
                if proc.returncode != 0:
                    raise RuntimeError(f"dry run in {workdir} failed:\n{proc.stderr[-3000:]}")
            return call

        times = common.interleaved({"empty": dry(empty, []), "toy_run": dry(run_dir, args)},
                                   repeats, warmup=0 if smoke else 1)
    figure = Figure("dry run: completed toy run / empty workflow",
                    "toy (test.yaml)" if not smoke else "chain", common.paired_ratio(
                        times["toy_run"], times["empty"]), target=TARGET, op="<=",
                    detail={**info, "dry_run_s": {k: common.median(v) for k, v in times.items()},
                            "times_s": {k: common.rounded(v) for k, v in times.items()}})
    notes = ["Both sides are `python -m snakemake -n --cores 1` in a fresh process.",
             "detail.complete: the dry run of the toy run had nothing to do."]
    if not info["complete"]:
        notes.append(f"The toy run is NOT complete ({info.get('pending_jobs')} jobs pending; "
                     "see detail.build_error): the toy-run side lists those jobs as well.")
    return Result("workflow", "Snakemake dry-run overhead", [figure],
                  params={"repeats": repeats, "config": list(TEST_CONFIGS) if not smoke else None},
                  notes=notes)
