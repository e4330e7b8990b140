"""Scale: the heavy stages at gemma-2-2b widths (d_model 2304, d_sae 65,536, d_vocab 256,000)
on a randomly initialised gemma-2-like ``HookedTransformer`` with 2 layers instead of 26 and
the toy prompts (20-34 tokens, context 64), with a random JumpReLU SAE (Gemma Scope's kind,
thresholds set for a mean L0 near 64; ~87 measured, as 723 calibration rows resolve no finer)
on each layer's residual stream. What it asks: does each stage cost about what
its bare computation costs, and does each fit in memory at these widths?

Each figure is a time ratio, stage ÷ baseline (1.0 = no overhead), both timed interleaved in
this process (:func:`bench.common.interleaved`):

- extraction (:func:`saeflow.extract.extract_to_hdf5`: hooks, fp16, lzf, final-position
  predictions) ÷ a bare ``model(tokens, return_type=None)`` over the same padded batches
  (blocks and final norm), and ÷ the same plus what extraction must also compute, each
  prompt's prediction from its final position (``ln_final``, ``resid @ W_U``, soft cap,
  log-softmax: one read of the 2.4 GB ``W_U`` per batch); and the same prompts without
  answers (no prediction is read, so none is computed) ÷ the bare forward;
- encoding (:func:`saeflow.encode.encode_to_hdf5`, both hooks) ÷ bare ``sae.encode`` of the
  same real-token rows in the same batch size;
- probe dataset (:func:`saeflow.probe.strategies.build_probe_dataset`, ``sae-to-concept``
  over 2 layers x 4 positions: 524,288 columns) ÷ reading the two hooks' codes
  (:func:`saeflow.formats.codes.read_codes`);
- probe fit (:func:`saeflow.probe.fit.fit_probe`, the schema's ``probe.cv`` without the
  permutation baseline, which only repeats the fit) and effect sizes
  (:func:`saeflow.probe.effects.compute_effects`) on the CSR dataset ÷ on its dense copy;
- category ablation (:func:`saeflow.labels.ablation.ablation_losses` over the sets
  :func:`saeflow.labels.ablation.category_feature_sets` builds, as ``ablate_categories`` runs
  them) ÷ (2 + sets) bare forwards with logits over the same prompts: one pass per set, plus
  the model alone and the spliced baseline;
- AtP (:func:`saeflow.patch.attribution.run_atp`, error term included) ÷ one bare forward +
  backward of the logit difference to the residual at the SAE hooks, over the corrupted
  prompts, as TransformerLens computes it (logits at every position), and ÷ the same from
  the two answer logits at the final position alone (:mod:`bench.scale_atp`; AtP also runs
  the SAEs and the clean prompts forward).

Memory: each call's peak RSS increment (``VmHWM``, reset just before the call through
``/proc/self/clear_refs``), the largest over calls. torch's CPU allocations are invisible to
tracemalloc, so RSS is the measure for the torch stages; freed heap the process keeps can
hide part of a later stage's increment. The probe stages also report tracemalloc's peak
(NumPy/SciPy allocations are traced) and the bytes a dense X would take.
"""

from __future__ import annotations

import dataclasses
import tempfile
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common, scale_atp
from bench.common import Figure, Result
from bench.timing import MIB, figure, timed

SIZES: dict[str, dict[str, int]] = {
    "gemma-2-2b widths": {"n_layers": 2, "d_model": 2304, "n_heads": 8, "n_key_value_heads": 4,
                          "d_head": 256, "d_mlp": 9216, "d_vocab": 256_000, "n_ctx": 64,
                          "d_sae": 65_536},
    "tiny": {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_key_value_heads": 2, "d_head": 16,
             "d_mlp": 256, "d_vocab": 1024, "n_ctx": 64, "d_sae": 512},
}
# prompts through extraction, encoding and probing; prompts ablated; AtP pairs; repeats
PLANS = {"gemma-2-2b widths": {"n_prompts": 32, "n_ablate": 4, "n_pairs": 4, "repeats": 2},
         "tiny": {"n_prompts": 32, "n_ablate": 2, "n_pairs": 2, "repeats": 1}}
L0 = 64
BATCH = 64  # extraction.batch_size
BATCH_ROWS = 4096  # encoding.batch_rows
POSITIONS = ["final", "-2", "-3", "-4"]
CLASSES = ["TypeError", "SyntaxError", "NoError"]  # the classes 32 toy prompts hold >= 5 of
N_PERMUTATIONS = 200  # effect sizes (the config's 1000 would only scale the time)
# probe fits: probe.cv as the schema sets it but without the label-permutation baseline,
# which reruns the identical fit (1 + n_permutations) times and so only scales the time
FIT_OVERRIDES = {"n_permutations": 0}
# issue 27's targets (upper bounds on the time ratios)
TARGET_EXTRACTION, TARGET_ABLATION = 1.1, 1.1


def gemma_like(size: str, seed: int = 0) -> Any:
    """A random ``HookedTransformer`` with gemma-2's architecture (RMS pre+post norms, rotary,
    grouped-query attention, gated GELU MLP, soft-capped scores and logits) at ``SIZES[size]``,
    with the toy tokenizer (its ids are a prefix of the vocabulary). Built as sae-lens's
    ``HookedSAETransformer`` subclass, which runs as a plain ``HookedTransformer`` while no
    SAE is attached, so AtP needs no second 5 GiB copy (``to_sae_transformer`` returns it)."""
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    dims = {k: v for k, v in SIZES[size].items() if k != "d_sae"}
    cfg = HookedTransformerConfig(
        **dims, eps=1e-6, act_fn="gelu_pytorch_tanh", normalization_type="RMS",
        positional_embedding_type="rotary", rotary_base=10000.0, use_attn_scale=True,
        gated_mlp=True, final_rms=True, use_normalization_before_and_after=True,
        attn_scores_soft_cap=50.0, output_logits_soft_cap=30.0, use_local_attn=True,
        window_size=4096, attn_types=(["local", "global"] * dims["n_layers"])[:dims["n_layers"]],
        initializer_range=0.02, seed=seed, default_prepend_bos=False, model_name="gemma-2-like",
        device=common.DEVICE)
    return HookedSAETransformer(cfg, tokenizer=common.tokenizer(),
                                default_padding_side="right").eval()


def jumprelu_sae(d_in: int, d_sae: int, hook: str, calibration: Any, l0: float, seed: int = 0
                 ) -> Any:
    """A random sae-lens ``JumpReLUSAE`` whose thresholds let each latent fire on a share
    ``l0 / d_sae`` of ``calibration [rows, d_in]`` (mean L0 about ``l0``; coarser when there
    are fewer than ``d_sae / l0`` rows, as the measured ``mean_l0`` shows)."""
    import torch
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    torch.manual_seed(seed)
    cfg = JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae)
    cfg.metadata.hook_name = hook
    sae = JumpReLUSAE(cfg).eval().to(calibration.device)  # initialised on the CPU: same weights
    with torch.no_grad():
        pre = sae.process_sae_in(calibration.float()) @ sae.W_enc + sae.b_enc
        k = min(pre.shape[0], max(1, round((1.0 - l0 / d_sae) * pre.shape[0])))
        sae.threshold.copy_(pre.kthvalue(k, dim=0).values.clamp(min=0.0))
    return sae


def _traced_peak(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and the peak of its traced (NumPy/SciPy/Python) allocations, in MiB."""
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] / MIB
    finally:
        tracemalloc.stop()


@dataclasses.dataclass
class _Run:
    size: str
    plan: dict[str, int]
    work: Path
    model: Any
    records: list[dict[str, Any]]
    hooks: list[str]
    acts: Path
    codes: Path
    saes: dict[str, Any] = dataclasses.field(default_factory=dict)


def _extraction(run: _Run) -> list[Figure]:
    import torch

    from saeflow.core.models import pad_batch
    from saeflow.core.prompts import encode_prompt
    from saeflow.extract import Storage, extract_to_hdf5, final_logits

    tok = run.model.tokenizer
    seqs = [encode_prompt(tok, r["text"]) for r in run.records]
    batches = [pad_batch(seqs[s:s + BATCH], tok.pad_token_id)[0] for s in range(0, len(seqs), BATCH)]

    finals = [torch.tensor([len(q) - 1 for q in seqs[s:s + BATCH]], device=common.DEVICE)
              for s in range(0, len(seqs), BATCH)]

    @torch.no_grad()
    def bare() -> None:
        for batch in batches:
            run.model(batch, return_type=None)

    @torch.no_grad()
    def bare_predictions() -> None:  # + what extraction must store: each prompt's prediction
        for batch, last in zip(batches, finals, strict=True):
            resid = run.model(batch, stop_at_layer=run.model.cfg.n_layers)
            x = run.model.ln_final(resid[torch.arange(len(last), device=last.device), last])
            final_logits(run.model, x).float().log_softmax(-1).argmax(-1)

    storage = Storage(positions="all", dtype="float16", batch_size=BATCH, compression="lzf")
    unanswered = [{k: v for k, v in r.items() if k != "answer"} for r in run.records]
    other = run.acts.with_name("unanswered.h5")

    def extract() -> None:
        extract_to_hdf5(run.model, run.records, run.hooks, run.acts, storage)

    times, peaks = timed({"bare_forward": bare, "bare_forward_predictions": bare_predictions,
                          "extraction": extract, "extraction_no_answers": lambda: extract_to_hdf5(
                              run.model, unanswered, run.hooks, other, storage)},
                         run.plan["repeats"])
    shared = {"hooks": run.hooks, "n_tokens": sum(len(s) for s in seqs),
              "file_mib": round(run.acts.stat().st_size / MIB, 1)}
    return [figure("extraction time / bare forward (no unembed)", run.size, times, "extraction",
                    "bare_forward", peaks, len(run.records), target=TARGET_EXTRACTION, **shared),
            figure("extraction time / bare forward + final-position predictions", run.size,
                    times, "extraction", "bare_forward_predictions", peaks, len(run.records),
                    target=TARGET_EXTRACTION, **shared),
            figure("extraction time, prompts without answers / bare forward (no unembed)",
                   run.size, times, "extraction_no_answers", "bare_forward", peaks,
                   len(run.records), target=TARGET_EXTRACTION, **shared)]


def _encoding(run: _Run) -> Figure:
    import torch

    from saeflow.encode import encode_to_hdf5

    rows = {h: common.stored_rows(run.acts, h).to(common.DEVICE) for h in run.hooks}
    d_model, d_sae = run.model.cfg.d_model, SIZES[run.size]["d_sae"]
    run.saes.update({h: jumprelu_sae(d_model, d_sae, h, x, L0, seed=i)
                     for i, (h, x) in enumerate(rows.items())})

    @torch.no_grad()
    def bare() -> None:
        for h, x in rows.items():
            for s in range(0, len(x), BATCH_ROWS):
                run.saes[h].encode(x[s:s + BATCH_ROWS])

    loaders = {h: (lambda sae=sae: sae) for h, sae in run.saes.items()}
    times, peaks = timed({"bare_encode": bare, "encoding": lambda: encode_to_hdf5(
        run.acts, run.codes, loaders, batch_rows=BATCH_ROWS, device=common.DEVICE)},
        run.plan["repeats"])
    summary = encode_to_hdf5(run.acts, run.codes, loaders, batch_rows=BATCH_ROWS,
                             device=common.DEVICE)
    return figure("encoding time / bare sae.encode", run.size, times, "encoding", "bare_encode",
                   peaks, len(run.records), rows=sum(len(x) for x in rows.values()),
                   mean_l0={h: round(s["mean_l0"], 1) for h, s in summary.items()},
                   file_mib=round(run.codes.stat().st_size / MIB, 1))


def _probe(run: _Run) -> list[Figure]:
    import numpy as np

    from saeflow.core.config import schema_defaults
    from saeflow.formats.codes import read_codes
    from saeflow.probe.effects import compute_effects
    from saeflow.probe.crossval import ProbeConfig
    from saeflow.probe.fit import fit_probe
    from saeflow.probe.strategies import build_probe_dataset

    spec = {"name": "sae_concept", "strategy": "sae-to-concept",
            "layers": f"0-{len(run.hooks) - 1}", "positions": POSITIONS,
            "target": {"column": "label", "classes": CLASSES}}
    n, repeats = len(run.records), run.plan["repeats"]

    def build() -> Any:
        return build_probe_dataset(spec, run.acts, run.codes)

    times, peaks = timed({"read_codes": lambda: [read_codes(run.codes, h) for h in run.hooks],
                           "build": build}, repeats)
    ds, build_traced = _traced_peak(build)
    X = ds.X
    dense_bytes = X.shape[0] * X.shape[1] * 4
    csr_bytes = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    dense = dataclasses.replace(ds, X=X.toarray(), meta=dict(ds.meta))
    shared = {"shape": list(X.shape), "nnz": int(X.nnz), "dense_x_mib": round(dense_bytes / MIB, 1),
              "csr_x_mib": round(csr_bytes / MIB, 3)}
    figures = [
        figure("probe dataset build time / reading the codes", run.size, times, "build",
                "read_codes", peaks, n, build_traced_peak_mib=round(build_traced, 2), **shared),
        Figure("probe X bytes, dense / CSR", run.size, dense_bytes / csr_bytes, unit="x",
               detail={**shared, "build_traced_peak_mib": round(build_traced, 2),
                       "dense_x_per_prompt_mib": round(dense_bytes / X.shape[0] / MIB, 2),
                       "csr_x_per_prompt_kib": round(csr_bytes / X.shape[0] / 1024, 1)})]
    cfg = ProbeConfig.from_dict({**schema_defaults("probe.cv"), **FIT_OVERRIDES})
    kw = {"positive_class": CLASSES[0], "n_permutations": N_PERMUTATIONS, "seed": 0}
    for label, fn in (("probe fit", lambda d: fit_probe(d, cfg)),
                      ("effect sizes", lambda d: compute_effects(d, **kw))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # sklearn: a class absent from a fold
            times, peaks = timed({"dense": lambda fn=fn: fn(dense), "csr": lambda fn=fn: fn(ds)},
                                  repeats, warmup=0)
            (a, traced_csr), (b, traced_dense) = _traced_peak(lambda fn=fn: fn(ds)), \
                _traced_peak(lambda fn=fn: fn(dense))
        agree = float(np.max(np.abs(a.oof - b.oof))) if label == "probe fit" else \
            float(np.nanmax(np.abs(a.d - b.d)))
        extra = {"test_accuracy": round(a.metrics["accuracy"]["test"]["mean"], 3)} \
            if label == "probe fit" else {"n_permutations": N_PERMUTATIONS}
        figures.append(figure(f"{label} time, CSR / dense copy", run.size, times, "csr",
                               "dense", peaks, n, traced_peak_mib={
                                   "csr": round(traced_csr, 1), "dense": round(traced_dense, 1)},
                               max_abs_difference=agree, **extra, **shared))
    return figures


def _ablation(run: _Run) -> Figure:
    import numpy as np
    import torch

    from saeflow.labels.ablation import (
        EvalSet,
        ablation_losses,
        category_feature_sets,
        eval_set_from_h5,
    )

    full = eval_set_from_h5(run.acts, "answer")
    k = run.plan["n_ablate"]
    eval_set = EvalSet(full.tokens[:k], full.targets[:k])
    d_sae = SIZES[run.size]["d_sae"]
    rng = np.random.default_rng(0)
    predicted = {name: rng.choice(d_sae, L0, replace=False).tolist() for name in ("a", "b")}
    sets = category_feature_sets(predicted, range(d_sae), seed=0)
    sae = run.saes[run.hooks[-1]]
    passes = 2 + len(sets)

    @torch.inference_mode()
    def bare() -> None:
        run.model(eval_set.tokens)

    times, peaks = timed({"bare_forward": bare, "ablation": lambda: ablation_losses(
        run.model, sae, eval_set, sets)}, run.plan["repeats"], warmup=0)
    return figure(f"category ablation time / {passes} bare forwards", run.size, times,
                   "ablation", "bare_forward", peaks, k, scale=passes, target=TARGET_ABLATION,
                   n_sets=len(sets),
                   hook=run.hooks[-1], padded_tokens=int(eval_set.tokens.numel()),
                   set_sizes={name: len(s) for name, s in sets.items()})


def run(smoke: bool = False) -> Result:
    size = "tiny" if smoke else "gemma-2-2b widths"
    plan = PLANS[size]
    with tempfile.TemporaryDirectory(prefix="saeflow-bench-scale-") as tmp:
        work = Path(tmp)
        model = gemma_like(size)
        hooks = [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
        state = _Run(size, plan, work, model, common.prompts(plan["n_prompts"]), hooks,
                     work / "acts.h5", work / "codes.h5")
        setup_mib = round(common.rss_kib()["VmRSS"] / 1024, 1)
        figures = [*_extraction(state), _encoding(state)]
        with_saes_mib = round(common.rss_kib()["VmRSS"] / 1024, 1)
        figures += [*_probe(state), _ablation(state), *scale_atp.measure(state)]
    return Result("scale", "The heavy stages at gemma-2-2b widths (random weights, 2 layers)",
                  figures, params={"model": size, "dims": SIZES[size], **plan, "target_l0": L0,
                                   "sae": "sae-lens JumpReLUSAE, random, thresholds calibrated",
                                   "probe_positions": POSITIONS, "probe_classes": CLASSES,
                                   "effects_permutations": N_PERMUTATIONS,
                                   "probe_cv_overrides": FIT_OVERRIDES,
                                   "rss_after_model_mib": setup_mib,
                                   "rss_with_saes_mib": with_saes_mib},
                  notes=[("Each value: median over repeats of t(stage) / t(baseline), both timed "
                          "interleaved in this process; 1.0 = the stage costs its bare "
                          "computation."),
                         ("detail.peak_rss_increment_mib: per subject, the largest peak-RSS "
                          "increment of a call (VmHWM reset before it); traced_peak_mib: "
                          "tracemalloc's peak (NumPy/SciPy allocations only)."),
                         ("probe X bytes: a dense float32 X against the CSR arrays (data, "
                          "indices, indptr) the dataset holds.")])
