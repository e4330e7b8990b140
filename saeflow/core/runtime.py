"""What every rule script does first: log to the rule's log, seed, pick threads and device.

Rule scripts call :func:`rule_main` with a function of the ``snakemake`` object; bad input
becomes one line in the log and a non-zero exit (Snakemake then deletes the outputs).
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from saeflow.core.errors import input_errors_exit

log = logging.getLogger("saeflow")


def setup_logging(log_path: str | None) -> None:
    """Send logging, stderr (tqdm bars) and warnings to the rule's log file."""
    if log_path:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        stream = open(log_path, "w", buffering=1)  # noqa: SIM115 - lives as long as the job
        sys.stderr = stream
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (if importable) so reruns give the same numbers."""
    random.seed(seed)
    import numpy as np

    np.random.seed(seed % 2**32)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def set_threads(n: int) -> None:
    """Size torch and the BLAS libraries to the rule's ``threads``: extra BLAS threads spinning
    beside other jobs slow small matrix products (probe permutations) many times over."""
    n = max(1, int(n))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)  # BLAS libraries loaded later (scipy's) read these
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n, user_api="blas")  # those already loaded
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(n)


def resolve_device(requested: str = "auto") -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def _size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, f))
                   for root, _, files in os.walk(path) for f in files)
    return os.path.getsize(path) if os.path.exists(path) else 0


def log_job(snakemake: Any) -> None:
    """What a job is: rule, wildcards, threads and inputs, so a log explains its outputs."""
    wildcards = dict(snakemake.wildcards.items()) if hasattr(snakemake.wildcards, "items") else {}
    log.info("rule %s %s, %s thread(s)", getattr(snakemake, "rule", "?"), wildcards or "",
             getattr(snakemake, "threads", 1))
    for path in snakemake.input:
        log.info("input %s", path)


def rule_main(body: Callable[[Any], None], snakemake: Any) -> None:
    """Run one rule's body with logging, threads and a clean one-line error on bad input."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    setup_logging(snakemake.log[0] if len(snakemake.log) else None)
    set_threads(getattr(snakemake, "threads", 1))
    log_job(snakemake)
    start = time.perf_counter()
    with input_errors_exit(log):
        body(snakemake)
    for path in snakemake.output:
        log.info("wrote %s (%d bytes)", path, _size(path))
    log.info("done in %.1f s", time.perf_counter() - start)
