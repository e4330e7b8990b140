"""A checkout's workflow copied elsewhere and run there: what the end-to-end tests and the
benchmarks share. Paths are this source checkout's (an editable install), never a user's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# What a user's checkout holds besides results: copied, the copy runs like the original.
WORKFLOW_FILES = ("Snakefile", "workflow", "scripts", "config", "envs")
# The end-to-end tests' world: config/test.yaml is a smaller toy, merged over the default
# (a --configfile stands alone, so both are named).
TEST_CONFIGS = ("config/config.yaml", "config/test.yaml")


def sync_workflow(dest: Path) -> Path:
    """Copy the checkout's workflow files (not its results) into ``dest``; returns ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src, target = REPO / name, dest / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, target)
    return dest


def e2e_config() -> dict[str, Any]:
    """The config the end-to-end tests run: :data:`TEST_CONFIGS` merged key by key, as
    Snakemake merges several --configfile files."""
    from snakemake.utils import update_config

    from saeflow.core.io import read_yaml

    config: dict[str, Any] = {}
    for path in TEST_CONFIGS:
        update_config(config, read_yaml(REPO / path))
    return config


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: float = 1800,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m snakemake ARGS`` in ``workdir`` (``env`` added to this process's);
    ``check``: a failure raises with its output."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "WANDB_MODE": "disabled", **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def as_from_a_terminal() -> None:
    """``preexec_fn`` for a child a test will Ctrl-C: SIGINT's default action, as a terminal
    gives it. A shell without job control (CI run in the background) starts its children with
    SIGINT ignored; Python then never raises KeyboardInterrupt, and a Ctrl-C test would read
    the end of stdin, or a kill after a timeout, as the interruption."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
