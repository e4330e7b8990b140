"""Dashboards: latent pages for 1,000 latents over 10,000 prompts at Gemma Scope widths
(d_sae 16,384 and 65,536), from CSR codes on disk, against reading those codes once.

Files are written by the pipeline's own writers: the prompts' activations by
:func:`saeflow.extract.extract_to_hdf5` (every position, fp16, lzf; the tiny model, d_model
32: the codes' width, not the model's, is what the dashboards read) and their codes by
:func:`saeflow.encode.encode_to_hdf5` with a random SAE whose encoder bias lets each latent
fire on about ``L0 / d_sae`` of the tokens (mean L0 about 64, as Gemma Scope's canonical
SAEs), so each latent fires on a few hundred to a thousand tokens of the corpus.

The subject is what rule ``dashboard_pages`` does from the codes: read the corpus
(:class:`saeflow.latents.contexts.Corpus`), stream the 1,000 latents' non-zeros out of the
codes (:func:`saeflow.latents.contexts.gather_latents`), and write each latent's page and JSON
(:class:`saeflow.latents.stage.PageWriter`: top-k, quantile and non-activating contexts, the
histogram, HTML) and the index, with the schema's ``dashboards`` defaults (``n_random`` 5).
The baseline is :func:`saeflow.formats.codes.read_codes` of the same hook: the whole CSR
matrix, read once. Figures (both timed interleaved in this process, median of per-repeat
ratios):

- time per latent / reading the codes once: ``t(pages) / 1000 / t(read_codes)``;
- pages for 1000 latents / reading the codes once (the same, not divided);
- peak memory of the pages / of reading the codes once: the peak of traced allocations
  (tracemalloc, which counts NumPy's arrays), one untimed call each; the peak RSS increments
  of the timed calls (``VmHWM`` reset before each) are in the detail. The pages stream the
  codes in slices and keep only the chosen latents' non-zeros.

Not timed: the logit tables (one ``W_dec[latents] @ W_U`` product in chunks of 64 latents,
the weights only) and loading the model; the rule adds both.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Figure, Result

HOOK = "blocks.1.hook_resid_post"
L0 = 64
CALIBRATION_ROWS = 1024
PLANS = {
    "gemma widths": {"n_prompts": 10_000, "widths": (16_384, 65_536), "n_latents": 1000,
                     "repeats": 3, "batch_rows": 1024},
    "tiny": {"n_prompts": 120, "widths": (512,), "n_latents": 40, "repeats": 1,
             "batch_rows": 1024},
}


def _peak(fn: Any, peaks: list[int | None]) -> Any:
    """``fn`` that appends its call's peak RSS increment (KiB; None without a reset)."""
    def call() -> None:
        common.trim_heap()
        before = common.rss_kib()["VmRSS"]
        reset = common.reset_peak_rss()
        fn()
        peaks.append(common.rss_kib()["VmHWM"] - before if reset else None)
    return call


def _codes(acts: Path, d_sae: int, work: Path, batch_rows: int) -> tuple[Path, dict[str, Any]]:
    """The codes of ``acts`` through a random SAE of width ``d_sae`` (mean L0 about ``L0``)."""
    from saeflow.encode import encode_to_hdf5

    calibration = common.stored_rows(acts, HOOK)[:CALIBRATION_ROWS]
    sae = common.random_sae(calibration.shape[1], d_sae, HOOK, calibration, L0)
    path = work / f"codes_{d_sae}.h5"
    summary = encode_to_hdf5(acts, path, {HOOK: lambda: sae}, batch_rows=batch_rows)
    return path, summary[HOOK]


def measure(size: str, plan: dict[str, Any], acts: Path, d_sae: int, work: Path) -> list[Figure]:
    import numpy as np

    from saeflow.core.config import schema_defaults
    from saeflow.formats.codes import read_codes
    from saeflow.latents.contexts import Corpus, gather_latents, token_decoder
    from saeflow.latents.stage import PageWriter

    codes, summary = _codes(acts, d_sae, work, plan["batch_rows"])
    dashboards = {**schema_defaults("dashboards"), "n_random": 5}
    rng = np.random.default_rng(0)
    latents = np.sort(rng.choice(d_sae, plan["n_latents"], replace=False)).tolist()
    chosen = [{"latent": latent, "why": [{"source": "config", "text": "benchmark"}]}
              for latent in latents]
    decode = token_decoder(common.tokenizer())
    writer = PageWriter(work / f"pages_{d_sae}", HOOK, "bench", dashboards,
                        {"dashboards": dashboards, "benchmark": "dashboards"})

    def pages() -> None:
        corpus = Corpus.read(acts)
        found = gather_latents(codes, HOOK, latents, corpus)
        writer.index(writer.pages(chosen, found, corpus, decode))

    def read_once() -> None:
        read_codes(codes, HOOK)

    peaks: dict[str, list[int | None]] = {"pages": [], "read codes once": []}
    times = common.interleaved({"pages": _peak(pages, peaks["pages"]),
                                "read codes once": _peak(read_once, peaks["read codes once"])},
                               plan["repeats"])
    n = plan["n_latents"]
    per_latent = common.paired_ratio([t / n for t in times["pages"]], times["read codes once"])
    mib = {k: None if None in v else round(max(v) / 1024, 1) for k, v in peaks.items()}
    page_bytes = sum(p.stat().st_size for p in writer.out.iterdir())
    detail = {"d_sae": d_sae, "n_prompts": plan["n_prompts"], "n_latents": n,
              "nnz": summary["nnz"], "mean_l0": round(summary["mean_l0"], 1),
              "codes_mib": round(codes.stat().st_size / 2**20, 1),
              "s_per_latent": round(common.median(times["pages"]) / n, 5),
              "read_codes_s": round(common.median(times["read codes once"]), 3),
              "times_s": {k: common.rounded(v) for k, v in times.items()},
              "peak_rss_increment_mib": mib, "pages_mib_on_disk": round(page_bytes / 2**20, 1)}
    traced = {"pages": _traced_peak(pages), "read codes once": _traced_peak(read_once)}
    label = f"{size}, d_sae {d_sae}"
    return [Figure("time per latent / read codes once", label, per_latent, detail=detail),
            Figure(f"pages for {n} latents / read codes once", label,
                   common.paired_ratio(times["pages"], times["read codes once"])),
            Figure("peak memory, pages / read codes once", label,
                   traced["pages"] / traced["read codes once"],
                   detail={"traced_peak_mib": {k: round(v, 1) for k, v in traced.items()},
                           "peak_rss_increment_mib": mib})]


def _traced_peak(fn: Any) -> float:
    """The peak of ``fn()``'s traced allocations (NumPy arrays included), in MiB: the same
    measure on every machine (the RSS increments, in the detail, need a resettable VmHWM)."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def run(smoke: bool = False) -> Result:
    size = "tiny" if smoke else "gemma widths"
    plan = PLANS[size]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        acts = common.extract(common.model("tiny"), common.prompts(plan["n_prompts"]),
                              [HOOK], work / "acts.h5")
        figures = [f for d_sae in plan["widths"] for f in measure(size, plan, acts, d_sae, work)]
    return Result("dashboards", "Latent dashboards from CSR codes, vs reading the codes once",
                  figures, params={"plan": {**plan, "widths": list(plan["widths"])},
                                   "size": size, "hook": HOOK, "target_l0": L0,
                                   "dashboards": "schema defaults, n_random 5"},
                  notes=["Subject: Corpus.read + gather_latents + PageWriter (pages, JSON, "
                         "index); baseline: read_codes of the hook, the whole CSR matrix.",
                         "Logit tables and model loading are not timed (weights only)."])
