"""Residual patching: the project's batched layer x position patching
(:func:`saeflow.patch.resid.resid_patching`: one forward per layer over stacked copies, started at
that layer) vs ``transformer_lens.patching.get_act_patch_resid_pre`` (one full forward per
(layer, position)) on the same pairs; the speedup, and whether the results are equal.

Both sides include their clean and corrupted runs; TransformerLens runs under ``no_grad`` with
a cache of only the ``resid_pre`` hooks, its fastest fair setting. The metric is the mean
over pairs of the logit difference, so TransformerLens's ``[layer, pos]`` must equal the mean
over pairs of ours.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from bench import common
from bench.common import Figure, Result

MAX_BATCH = 256  # config patch.max_batch
RTOL = 1e-4


def measure(size: str, n_pairs: int, max_pairs: int, repeats: int, workdir: Path) -> list[Figure]:
    import torch
    from transformer_lens.patching import get_act_patch_resid_pre

    from saeflow.patch.pairs import load_pairs, logit_diff
    from saeflow.patch.resid import resid_patching

    model = common.model(size)
    path = workdir / f"pairs_{size}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in common.pair_records(n_pairs)))
    # The largest group of pairs of one token length: one PairBatch, as TransformerLens needs.
    batch = next(max(load_pairs(path, model.tokenizer), key=len).chunks(max_pairs))
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)]

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logit_diff(logits, batch.clean_answer, batch.corrupted_answer).mean()

    out: dict[str, torch.Tensor] = {}

    def ours() -> None:
        patched, _, _ = resid_patching(model, batch, MAX_BATCH)
        out["saeflow"] = patched.mean(0)  # [n_layers, T]

    @torch.no_grad()
    def transformer_lens() -> None:
        _, clean_cache = model.run_with_cache(batch.clean, names_filter=names)
        metric(model(batch.corrupted))  # the corrupted baseline, as ours computes it
        out["transformer_lens"] = get_act_patch_resid_pre(model, batch.corrupted, clean_cache,
                                                          metric)

    # No warm-up round: one TransformerLens round is many forward passes already.
    times = common.interleaved({"transformer_lens": transformer_lens, "saeflow": ours}, repeats,
                               warmup=0)
    a, b = out["saeflow"].double(), out["transformer_lens"].double()
    max_abs = float((a - b).abs().max())
    scale = float(b.abs().max())
    per_pass = max(1, MAX_BATCH // len(batch))  # positions patched per forward pass (ours)
    passes = {"saeflow": 2 + model.cfg.n_layers * -(-batch.length // per_pass),
              "transformer_lens": 2 + model.cfg.n_layers * batch.length}
    detail = {"n_pairs": len(batch), "tokens": batch.length, "n_layers": model.cfg.n_layers,
              "forward_passes": passes,
              "times_s": {k: common.rounded(v) for k, v in times.items()}}
    return [
        Figure("resid patching speedup over TransformerLens", size,
               common.paired_ratio(times["transformer_lens"], times["saeflow"]), unit="x",
               detail=detail),
        Figure("resid patching max |saeflow - TL| / max |TL|", size, max_abs / max(scale, 1e-12),
               unit="rel", target=RTOL, op="<=",
               detail={"max_abs_diff": max_abs, "max_abs_value": scale, "shape": list(b.shape)}),
    ]


def run(smoke: bool = False) -> Result:
    plan = [("tiny", 6, 4, 1)] if smoke else [("toy", 32, 16, 5), ("mid", 16, 4, 3)]
    with tempfile.TemporaryDirectory() as tmp:
        figures = [f for size, n, cap, reps in plan for f in measure(size, n, cap, reps, Path(tmp))]
    return Result("patching", "Batched residual patching vs TransformerLens", figures,
                  params={"plan": [{"model": s, "n_pairs_sampled": n, "max_pairs": c, "repeats": r}
                                   for s, n, c, r in plan],
                          "max_batch": MAX_BATCH, "rtol": RTOL},
                  notes=["One PairBatch: the largest group of sampled pairs sharing a token "
                         "length, at most max_pairs of them.",
                         "Equality: TransformerLens's [layer, pos] metric vs the mean over pairs "
                         "of ours, relative to the largest |value|."])
