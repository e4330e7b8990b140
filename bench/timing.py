"""Timing and memory of the subjects a benchmark compares in one process (:mod:`bench.scale`,
:mod:`bench.scale_atp`): interleaved repeats with each subject's peak RSS (and, on CUDA, GPU
memory) increment, and a figure of one subject's median ratio to a baseline's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench import common
from bench.common import Figure

MIB = 2.0 ** 20


def _with_peak(fn: Callable[[], Any], peaks: list[int | None], gpu: list[int]
               ) -> Callable[[], None]:
    """``fn`` that appends its call's peak RSS increment (KiB; None without a reset) to
    ``peaks`` and, on CUDA, its peak allocated GPU memory increment (bytes) to ``gpu``."""
    import torch

    cuda = common.DEVICE.startswith("cuda")

    def call() -> None:
        before = common.rss_kib()["VmRSS"]
        reset = common.reset_peak_rss()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            allocated = torch.cuda.memory_allocated()
        fn()
        peaks.append(common.rss_kib()["VmHWM"] - before if reset else None)
        if cuda:
            gpu.append(torch.cuda.max_memory_allocated() - allocated)
    return call


def timed(subjects: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
           ) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """:func:`bench.common.interleaved` times and each subject's largest peak RSS increment
    (MiB; under ``"gpu"``, on CUDA, the largest peak GPU memory increment, MiB)."""
    peaks: dict[str, list[int | None]] = {name: [] for name in subjects}
    gpu: dict[str, list[int]] = {name: [] for name in subjects}
    times = common.interleaved({name: _with_peak(fn, peaks[name], gpu[name]) for name, fn in
                                subjects.items()}, repeats, warmup)
    out: dict[str, Any] = {name: None if None in p else round(max(p) / 1024, 1)
                           for name, p in peaks.items()}
    if any(gpu.values()):
        out["gpu"] = {name: round(max(g) / MIB, 1) for name, g in gpu.items() if g}
    return times, out


def figure(name: str, size: str, times: dict[str, list[float]], subject: str, baseline: str,
            peaks: dict[str, float | None], n: int, scale: float = 1.0,
            target: float | None = None, **detail: Any) -> Figure:
    """Median over repeats of t(subject) / (scale x t(baseline)), with seconds per prompt;
    ``target``: an upper bound."""
    ratio = common.paired_ratio(times[subject], [t * scale for t in times[baseline]])
    gpu = {"peak_gpu_increment_mib": peaks["gpu"]} if "gpu" in peaks else {}
    return Figure(name, size, ratio, target=target, op=None if target is None else "<=", detail={
        "s_per_prompt": {k: round(common.median(v) / n, 4) for k, v in times.items()},
        "peak_rss_increment_mib": {k: v for k, v in peaks.items() if k != "gpu"}, **gpu,
        "times_s": {k: common.rounded(v) for k, v in times.items()}, **detail})
