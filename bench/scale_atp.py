"""AtP at gemma-2-2b widths, a part of ``python -m bench scale`` (:mod:`bench.scale` builds the
model, the SAEs and the prompts).

:func:`saeflow.patch.attribution.run_atp` (error term included) is timed against two
baselines over the corrupted prompts of the same pairs, interleaved in one process:

- ``forward_backward``: one forward + backward of the logit difference to the residual at the
  SAE hooks, as TransformerLens computes it: ``run_with_hooks`` returns logits at every
  position (its ``Unembed`` copies the transposed ``W_U``, 2.4 GB, on each call) and the
  metric reads the final one. Issue 27's target: AtP <= 1.5x this.
- ``forward_backward_answers``: the same from the final position's two answer logits alone
  (:func:`saeflow.patch.splice.answer_logit_diff`), the bare computation the model needs; the
  rest of AtP is the two SAEs (encode and decode, clean and corrupted) and the clean run.

and AtP as first written (:func:`reference_atp`) against the first, timed in the same rounds:
the figure before issue 27's changes, on the same machine and load.

Equality: the same pairs through AtP as first written (full logits, the default splice's
graph; :func:`reference_atp`): per kind (latent and error effects, deltas, metrics) the
largest absolute difference, and that over the largest value of the kind.
"""

from __future__ import annotations

import json
from typing import Any

from bench import common
from bench.common import Figure
from bench.timing import figure, timed
from saeflow.testing.reference_atp import reference_atp

TARGET = 1.5


def difference_from_reference(model: Any, saes: Any, batches: Any) -> dict[str, dict[str, float]]:
    """Per kind, over every batch: ``max_abs`` = ``max |fast - reference|`` and ``max_rel`` =
    that over ``max |reference|``."""
    from saeflow.patch.attribution import attribution_patching

    worst: dict[str, dict[str, float]] = {}
    for b in batches:
        eff_r, delta_r, clean_r, corr_r = reference_atp(model, saes, b, True)
        ref = {"act": [eff_r[h].act for h in saes], "res": [eff_r[h].res for h in saes],
               "delta": [delta_r[h].act for h in saes], "metric": [clean_r, corr_r]}
        eff, delta, clean, corr = attribution_patching(model, saes, b, True)
        fast = {"act": [eff[h].act for h in saes], "res": [eff[h].res for h in saes],
                "delta": [delta[h].act for h in saes], "metric": [clean, corr]}
        for kind, ref_tensors in ref.items():
            for a, r in zip(fast[kind], ref_tensors, strict=True):
                diff = float((a - r).abs().max())
                rel = diff / max(float(r.abs().max()), 1e-30)
                w = worst.setdefault(kind, {"max_abs": 0.0, "max_rel": 0.0})
                w["max_abs"], w["max_rel"] = max(w["max_abs"], diff), max(w["max_rel"], rel)
        del ref, eff, delta
    return worst


def measure(run: Any) -> list[Figure]:
    """The AtP figures of :mod:`bench.scale` for its ``run`` (model, SAEs, plan, work dir)."""
    import torch

    from saeflow.patch.attribution import run_atp
    from saeflow.patch.pairs import load_pairs, logit_diff
    from saeflow.patch.splice import answer_logit_diff, prepare_saes, to_sae_transformer

    pairs = run.work / "pairs.jsonl"
    records = common.pair_records(run.plan["n_pairs"])
    pairs.write_text("".join(json.dumps(r) + "\n" for r in records))
    model = to_sae_transformer(run.model)
    batches = load_pairs(pairs, model.tokenizer)
    spliced = prepare_saes(model, list(run.saes.values()))
    n_layers = model.cfg.n_layers

    def forward_backward(answers_only: bool) -> None:
        for b in batches:
            captured: list[Any] = []

            def keep(act: Any, hook: Any, captured: list[Any] = captured) -> Any:
                act = act if act.requires_grad else act.detach().requires_grad_()
                captured.append(act)
                return act

            with torch.enable_grad():
                hooks = [(h, keep) for h in spliced]
                if answers_only:
                    resid = model.run_with_hooks(b.corrupted, fwd_hooks=hooks,
                                                 stop_at_layer=n_layers)
                    metric = answer_logit_diff(model, resid, b.clean_answer, b.corrupted_answer)
                else:
                    logits = model.run_with_hooks(b.corrupted, fwd_hooks=hooks)
                    metric = logit_diff(logits, b.clean_answer, b.corrupted_answer)
                torch.autograd.grad(metric.sum(), captured)

    times, peaks = timed({"forward_backward": lambda: forward_backward(False),
                           "forward_backward_answers": lambda: forward_backward(True),
                           "atp": lambda: run_atp(model, spliced, batches, True),
                           "atp_as_first_written": lambda: [reference_atp(model, spliced, b, True)
                                                            for b in batches]},
                          run.plan["repeats"], warmup=0)
    n = sum(len(b) for b in batches)
    shared = {"n_pairs": n, "sae_hooks": list(spliced),
              "tokens_per_prompt": [b.length for b in batches],
              "difference_from_reference": difference_from_reference(model, spliced, batches)}
    return [figure("AtP time / one forward + backward", run.size, times, "atp",
                    "forward_backward", peaks, n, target=TARGET, **shared),
            figure("AtP time / forward + backward of the answer logits only", run.size, times,
                    "atp", "forward_backward_answers", peaks, n, **shared),
            figure("AtP as first written (before issue 27) / one forward + backward", run.size,
                    times, "atp_as_first_written", "forward_backward", peaks, n, **shared)]
