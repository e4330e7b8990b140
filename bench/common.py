"""What every benchmark shares: paired timing, the figure record, the machine record, the
models and prompts the benchmarks run on, and the table ``python -m bench`` prints.

Every figure is a ratio of two things measured in one process (or, for memory, in two fresh
processes of the same kind): the subject and its baseline run interleaved, in alternating
order, and the figure is the median over repeats of the per-repeat ratio. A busy machine slows
both sides of a pair alike, so the ratio holds where absolute times do not.
"""

from __future__ import annotations

import datetime
import functools
import gc
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "results" / "bench"

# Model shapes. "toy" is config/config.yaml's model; "mid" speaks to real models; "tiny" is
# the smoke mode's (the test suite's fixture size).
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"n_layers": 2, "d_model": 32, "n_heads": 4, "n_ctx": 64},
    "toy": {"n_layers": 2, "d_model": 128, "n_heads": 4, "n_ctx": 64},
    "mid": {"n_layers": 6, "d_model": 512, "n_heads": 8, "n_ctx": 128},
}
# The extraction hooks of config/config.yaml, and the same three depths on the mid model.
HOOKS: dict[str, list[str]] = {
    "tiny": ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"],
    "toy": ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"],
    "mid": ["blocks.0.hook_resid_pre", "blocks.2.hook_resid_post", "blocks.5.hook_resid_post"],
}
D_SAE = {"tiny": 96, "toy": 1024, "mid": 4096}  # toy: config's d_sae; mid: 8 x d_model
# Where the benchmarks' models run (``python -m bench --device``); times on "cuda" wait for
# the device (:func:`synchronize`) before each clock reading.
DEVICE = "cpu"


def synchronize() -> None:
    """Wait for queued CUDA work, so that a wall time covers it (a no-op on the CPU)."""
    if DEVICE.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


@dataclass
class Figure:
    """One measured figure: ``value`` in ``unit`` (``ratio``, ``x`` for a speedup, ``bytes``,
    ``rho``, ``rel``) and, where there is one, its target: ``value op target``."""

    name: str
    model: str
    value: float | None
    unit: str = "ratio"
    target: float | None = None
    op: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        if self.target is None or self.value is None:
            return None
        return self.value >= self.target if self.op == ">=" else self.value <= self.target

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


@dataclass
class Result:
    """What one benchmark returns: its figures and the parameters it ran with."""

    name: str
    title: str
    figures: list[Figure]
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --- timing -------------------------------------------------------------------------------

def interleaved(subjects: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1
                ) -> dict[str, list[float]]:
    """Wall times of each callable, ``repeats`` rounds, order reversed every other round.

    ``warmup`` rounds first (not recorded) so one-off costs (allocator, oneDNN primitive
    caches, first HDF5 file) fall on no one side.
    """
    names = list(subjects)
    for _ in range(warmup):
        for name in names:
            subjects[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            gc.collect()
            synchronize()
            t0 = time.perf_counter()
            subjects[name]()
            synchronize()
            times[name].append(time.perf_counter() - t0)
    return times


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over repeats of ``numerator[r] / denominator[r]``."""
    return float(statistics.median(a / b for a, b in zip(numerator, denominator, strict=True)))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def rounded(values: Sequence[float], digits: int = 4) -> list[float]:
    return [round(float(v), digits) for v in values]


# --- memory -------------------------------------------------------------------------------

def rss_kib() -> dict[str, int]:
    """``VmRSS`` (now) and ``VmHWM`` (peak) of this process, in KiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def trim_heap() -> None:
    """Hand freed heap pages back to the kernel (glibc ``malloc_trim``), so that RSS counts
    live memory only; a no-op where the C library has no ``malloc_trim``."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (``/proc/self/clear_refs``), where the kernel allows
    it; False where it does not (then ``VmHWM`` is the process's lifetime peak)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --- machine and output -------------------------------------------------------------------

def machine() -> dict[str, Any]:
    """Where the figures were measured: CPUs, platform, torch threads, load, memory."""
    import torch

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda": torch.cuda.is_available(),
        "device": DEVICE,
        "gpu": torch.cuda.get_device_name() if DEVICE.startswith("cuda") else None,
        "load_average": rounded(os.getloadavg(), 2) if hasattr(os, "getloadavg") else None,
    }
    try:
        meminfo = Path("/proc/meminfo").read_text().split("\n")[0].split()
        info["mem_total_gib"] = round(int(meminfo[1]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_result(result: Result, out_dir: Path, smoke: bool, elapsed_s: float,
                 load_before: list[float] | None) -> Path:
    """``out_dir/<name>.json``: figures, params, machine (load average before and after), the
    date (UTC), plus the ``provenance`` block (params as config, package versions, git
    commit) every saeflow JSON output carries."""
    from saeflow.core.io import write_json

    info = machine()
    info["load_average_before"] = load_before
    record = {
        "benchmark": result.name, "title": result.title, "smoke": smoke,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "figures": [f.record() for f in result.figures],
        "notes": result.notes, "params": result.params, "machine": info,
        "elapsed_s": round(elapsed_s, 1),
    }
    path = out_dir / f"{result.name}.json"
    write_json(path, record, config={"benchmark": result.name, "smoke": smoke, **result.params})
    return path


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ratio":
        return f"{value:.2f}"
    if unit == "x":
        return f"{value:,.0f}x" if value >= 100 else f"{value:.1f}x"
    if unit == "rho":
        return f"{value:.3f}"
    if unit == "rel":
        return f"{value:.1e}"
    if unit == "bytes":
        return f"{value:.2f} B"
    if unit == "MiB":
        return f"{value:.0f} MiB"
    return f"{value:.3g} {unit}"


def table(records: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table (also valid Markdown) of every figure in ``records`` (JSON dicts)."""
    rows = [("benchmark", "figure", "model", "value", "target", "met")]
    for rec in records:
        for f in rec["figures"]:
            target = f"{f['op']} {f['target']:g}" if f["target"] is not None else "-"
            met = {True: "yes", False: "NO", None: "-"}[f["met"]]
            value = format_value(f["value"], f["unit"])
            rows.append((rec["benchmark"], f["name"], f["model"], value, target, met))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# --- what the benchmarks run on -----------------------------------------------------------

@functools.cache
def tokenizer() -> Any:
    """The toy world's BPE tokenizer (every answer one token), trained on a small fixed world."""
    from saeflow.toy.world import (WorldConfig, build_prompt_sets, load_tokenizer, save_tokenizer,
                                   train_tokenizer)

    world = build_prompt_sets(WorldConfig.defaults(seed=0, n_train=400, n_heldout=60, n_pairs=12))
    texts = [r["text"] + r["answer"] for s in world.prompt_sets.values() for r in s]
    # Kept for the process's life: TransformerLens reloads a tokenizer from its directory.
    directory = _TOKENIZER_DIR.name
    save_tokenizer(train_tokenizer(texts, 512), directory)
    return load_tokenizer(directory)


_TOKENIZER_DIR = tempfile.TemporaryDirectory(prefix="saeflow-bench-tokenizer-")


def prompts(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """``n`` held-out-style toy prompt records (text, answer, label, ...)."""
    from saeflow.toy.world import WorldConfig, build_prompt_sets

    cfg = WorldConfig.defaults(seed=seed, n_train=0, n_heldout=n, n_pairs=0)
    return build_prompt_sets(cfg).prompt_sets["heldout_seen"]


def pair_records(n: int, seed: int = 2) -> list[dict[str, Any]]:
    """``n`` clean/corrupted pairs as ``pairs.jsonl`` records (rows 2k, 2k+1 = pair k)."""
    from saeflow.toy.world import WorldConfig, build_prompt_sets

    world = build_prompt_sets(WorldConfig.defaults(seed=seed, n_train=0, n_heldout=0, n_pairs=n))
    return world.prompt_sets["pairs"]


def model(size: str, seed: int = 0) -> Any:
    """A randomly initialised ``HookedTransformer`` of ``SIZES[size]`` with the toy tokenizer,
    built the way the pipeline builds its toy model (:func:`saeflow.toy.train.toy_model_config`)."""
    import torch
    from transformer_lens import HookedTransformer

    from saeflow.toy.train import toy_model_config

    tok = tokenizer()
    torch.manual_seed(seed)
    cfg = toy_model_config(SIZES[size], len(tok), seed)
    cfg.device = DEVICE
    return HookedTransformer(cfg, tokenizer=tok, default_padding_side="right").eval()


def random_sae(d_in: int, d_sae: int, hook: str, calibration: Any, l0: float, seed: int = 0) -> Any:
    """A randomly initialised sae-lens ``StandardSAE`` whose encoder bias is set so each
    latent fires on a share ``l0 / d_sae`` of ``calibration [rows, d_in]``: sparse codes with
    mean L0 about ``l0``, as a trained SAE's are."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(seed)
    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae)
    cfg.metadata.hook_name = hook
    sae = StandardSAE(cfg).eval()
    with torch.no_grad():
        pre = sae.process_sae_in(calibration.float()) @ sae.W_enc
        q = 1.0 - l0 / d_sae
        k = min(pre.shape[0], max(1, int(round(q * pre.shape[0]))))
        sae.b_enc.copy_(-pre.kthvalue(k, dim=0).values)
    return sae


def resid_sample(model_: Any, hook: str, records: Sequence[Mapping[str, Any]]) -> Any:
    """Activations ``[rows, d_model]`` of ``hook`` at every real token of ``records``."""
    import torch

    from saeflow.core.models import pad_batch
    from saeflow.core.prompts import encode_prompt

    seqs = [encode_prompt(model_.tokenizer, r["text"]) for r in records]
    tokens, lengths = pad_batch(seqs, model_.tokenizer.pad_token_id)
    with torch.no_grad():
        _, cache = model_.run_with_cache(tokens, names_filter=[hook])
    valid = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return cache[hook][valid.to(cache[hook].device)]


def file_bytes(path: str | os.PathLike[str]) -> int:
    return os.path.getsize(path)


def extract(model_: Any, records: list[dict[str, Any]], hooks: Sequence[str], path: Path,
            compression: str | None = "lzf") -> Path:
    """Extraction as config/config.yaml runs it: every position, fp16, lzf, batches of 64."""
    from saeflow.extract import Storage, extract_to_hdf5

    extract_to_hdf5(model_, records, list(hooks), path,
                    Storage(positions="all", dtype="float16", batch_size=64,
                            compression=compression))
    return path


def stored_rows(path: Path, hook: str) -> Any:
    """The valid (real-token) rows of ``acts/{hook}`` as a float32 tensor ``[rows, d]``."""
    import h5py
    import torch

    with h5py.File(path, "r") as f:
        valid = f["positions"][()] >= 0
        acts = f[f"acts/{hook}"][()]
    return torch.from_numpy(acts[valid].astype("float32"))
