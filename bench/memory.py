"""Memory: peak RSS of a process that extracts a prompt set (as the ``extract`` rule does: load
the model, read the prompts, :func:`saeflow.extract.extract_to_hdf5`) at 1x and 8x the
prompt count. Each size runs in a fresh subprocess so the two share no high-water mark.
Target: peak(8x) / peak(1x) <= 1.2.

The child also resets its high-water mark just before extracting (``/proc/self/clear_refs``,
where the kernel allows it), so ``extraction_peak_mib`` is the peak during extraction alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Figure, Result

TARGET = 1.2
SCALE = 8


def child(size: str, n_prompts: int, threads: int, out_dir: str) -> dict[str, Any]:
    """Run in the subprocess: extract ``n_prompts`` prompts with the ``size`` model."""
    import torch

    torch.set_num_threads(threads)
    model = common.model(size)
    records = common.prompts(n_prompts)
    before = common.rss_kib()
    reset = common.reset_peak_rss()
    common.extract(model, records, common.HOOKS[size], Path(out_dir) / "acts.h5")
    after = common.rss_kib()
    return {"size": size, "n_prompts": n_prompts, "rss_before_kib": before["VmRSS"],
            "peak_kib": after["VmHWM"], "peak_reset": reset,
            "extraction_increment_kib": after["VmHWM"] - before["VmRSS"]}


def _spawn_all(jobs: list[tuple[str, int]], threads: int) -> list[dict[str, Any]]:
    """One fresh subprocess per ``(size, n_prompts)``, run side by side (memory, unlike time,
    does not suffer from sharing the machine)."""
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for i, (size, n_prompts) in enumerate(jobs):
            out = Path(tmp) / str(i)
            out.mkdir()
            cmd = [sys.executable, "-m", "bench.memory", size, str(n_prompts), str(threads),
                   str(out)]
            procs.append(subprocess.Popen(
                cmd,
                cwd=common.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env={**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}))
        results = []
        for (size, n_prompts), proc in zip(jobs, procs, strict=True):
            stdout, stderr = proc.communicate(timeout=1200)
            if proc.returncode != 0:
                raise RuntimeError(f"memory child {size} x{n_prompts} failed:\n{stderr[-3000:]}")
            results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def measure(size: str, n_prompts: int) -> Figure:
    import torch

    small, large = _spawn_all([(size, n_prompts), (size, SCALE * n_prompts)],
                              torch.get_num_threads())
    mib = 1024.0
    return Figure(
        f"peak RSS {SCALE}x / 1x prompts", size, large["peak_kib"] / small["peak_kib"],
        target=TARGET, op="<=",
        detail={"n_prompts": [n_prompts, SCALE * n_prompts],
                "peak_mib": [round(small["peak_kib"] / mib, 1), round(large["peak_kib"] / mib, 1)],
                "rss_before_extraction_mib": [round(small["rss_before_kib"] / mib, 1),
                                              round(large["rss_before_kib"] / mib, 1)],
                "extraction_increment_mib": [round(small["extraction_increment_kib"] / mib, 1),
                                             round(large["extraction_increment_kib"] / mib, 1)],
                "peak_is_extraction_only": small["peak_reset"] and large["peak_reset"]})


def run(smoke: bool = False) -> Result:
    plan = [("tiny", 8)] if smoke else [("toy", 256), ("mid", 64)]
    figures = [measure(size, n) for size, n in plan]
    return Result("memory", f"Peak RSS of extraction at 1x and {SCALE}x the prompts", figures,
                  params={"plan": [{"model": s, "n_prompts": [n, SCALE * n]} for s, n in plan],
                          "hooks": {s: common.HOOKS[s] for s, _ in plan}, "positions": "all",
                          "dtype": "float16", "compression": "lzf"},
                  notes=["peak_mib: VmHWM of a fresh process (reset to the current RSS just "
                         "before extraction when the kernel allows it; then it is the peak "
                         "during extraction, model and prompts already loaded)."])


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")
    size_, n_, threads_, out_ = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    print(json.dumps(child(size_, n_, threads_, out_)))
