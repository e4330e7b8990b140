"""How good an SAE is where it sits: L0 and explained variance on real tokens, and the loss
with its reconstruction spliced into the model against the model alone (rule
``evaluate_saes``, every study). A transcoder reads its input hook and is judged on, and
spliced at, its output hook.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from transformer_lens import HookedTransformer

from saeflow.core.bundle import ModelSAEs
from saeflow.core.transcoders import output_hook


class ExplainedVariance:
    """Streaming explained variance ``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over
    batches ``[B, d]``, accumulated in float64.

    The total variance is merged from each batch's own mean and centred sum of squares (Chan
    et al.'s parallel update), never formed as ``E[x^2] - E[x]^2``: for a dimension of mean
    3000 and SD 1, float32 ``x^2 ~ 9e6`` is stored in steps of 1, as large as the variance.
    sae-lens's ``ExplainedVarianceCalculator`` merges in float64 too but still subtracts
    ``E[x^2] - E[x]^2`` built from float32 per-batch sums of squares (off by ~2.5e-4 on such
    a dimension), so it is not used here.
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None  # [d] float64
        self.m2: torch.Tensor | None = None  # [d] centred sum of squares, float64
        self.sq_err = 0.0

    def add(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        """One batch of activations ``x`` and reconstructions ``x_hat`` ``[B, d]``."""
        x64 = x.detach().to("cpu", torch.float64)
        b = x64.shape[0]
        if b == 0:
            return
        self.sq_err += float(((x64 - x_hat.detach().to("cpu", torch.float64)) ** 2).sum())
        mean_b = x64.mean(0)
        m2_b = ((x64 - mean_b) ** 2).sum(0)
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = b, mean_b, m2_b
            return
        n = self.n + b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (b / n)
        self.m2 = self.m2 + m2_b + delta ** 2 * (self.n * b / n)
        self.n = n

    def compute(self) -> float:
        """The explained variance; NaN before any row or when x has no variance."""
        total = float(self.m2.sum()) if self.m2 is not None else 0.0
        return 1.0 - self.sq_err / total if total > 0 else float("nan")


@torch.no_grad()
def sae_metrics(model: HookedTransformer, sae: SAE, tokens: torch.Tensor, lengths: torch.Tensor,
                answers: torch.Tensor | None = None, batch_size: int = 64) -> dict[str, float]:
    """L0 and explained variance on real tokens (BOS excluded, as in training), and the loss
    with the SAE's reconstruction spliced in (no error term) vs the model alone: next-token
    LM loss over real tokens, plus answer loss/accuracy when ``answers [n]`` are given. A
    transcoder reads its input hook and is judged on, and spliced at, its output hook."""
    hook_name = sae.cfg.metadata.hook_name
    hook_out = output_hook(sae)
    device = model.cfg.device
    totals = {"l0": 0.0, "n_tok": 0, "lm_model": 0.0, "lm_spliced": 0.0, "lm_n": 0,
              "ans_model": 0.0, "ans_spliced": 0.0, "acc_model": 0, "acc_spliced": 0}
    explained = ExplainedVariance()
    seen: dict[str, torch.Tensor] = {}

    def keep_input(act: torch.Tensor, hook: Any) -> torch.Tensor:
        seen["x"] = act
        return act

    def splice(act: torch.Tensor, hook: Any) -> torch.Tensor:
        x = seen.pop("x", act)
        return sae.decode(sae.encode(x)).to(act.dtype).reshape(act.shape)

    fwd = ([(hook_name, keep_input)] if hook_out != hook_name else []) + [(hook_out, splice)]
    for start in range(0, len(lengths), batch_size):
        sl = slice(start, start + batch_size)
        width = int(lengths[sl].max())
        batch, lens = tokens[sl, :width].to(device), lengths[sl].to(device)
        logits, cache = model.run_with_cache(batch, names_filter=[hook_name, hook_out])
        valid = torch.arange(width, device=device)[None, :] < lens[:, None]
        real = valid.clone()
        real[:, 0] = False
        x = cache[hook_name][real].float()
        codes = sae.encode(x)
        totals["l0"] += float((codes > 0).sum())
        totals["n_tok"] += x.shape[0]
        target = cache[hook_out][real].float().flatten(1)
        explained.add(target, sae.decode(codes).reshape(target.shape))
        spliced = model.run_with_hooks(batch, fwd_hooks=fwd)
        next_valid = valid[:, 1:]
        targets = batch[:, 1:][next_valid]
        rows = torch.arange(batch.shape[0], device=device)
        for name, out in (("model", logits), ("spliced", spliced)):
            predicted = out[:, :-1][next_valid].float()
            totals[f"lm_{name}"] += float(torch.nn.functional.cross_entropy(predicted, targets, reduction="sum"))
            if answers is not None:
                final = out[rows, lens - 1].float()
                ans = answers[sl].to(device)
                totals[f"ans_{name}"] += float(torch.nn.functional.cross_entropy(final, ans, reduction="sum"))
                totals[f"acc_{name}"] += int((final.argmax(-1) == ans).sum())
        totals["lm_n"] += int(next_valid.sum())
    n_tok, n = totals["n_tok"], len(lengths)
    metrics = {
        "hook_name": hook_name, "hook_name_out": hook_out, "d_sae": int(sae.cfg.d_sae),
        "n_tokens": n_tok,
        "l0": totals["l0"] / n_tok, "explained_variance": explained.compute(),
        "lm_loss_model": totals["lm_model"] / totals["lm_n"],
        "lm_loss_spliced": totals["lm_spliced"] / totals["lm_n"],
    }
    if answers is not None:
        metrics.update({
            "answer_loss_model": totals["ans_model"] / n, "answer_loss_spliced": totals["ans_spliced"] / n,
            "answer_accuracy_model": totals["acc_model"] / n,
            "answer_accuracy_spliced": totals["acc_spliced"] / n,
        })
    return metrics


def evaluate_saes_stage(bundle: ModelSAEs, prompts: str | Path, device: str,
                        out_path: str | Path) -> None:
    """Rule ``evaluate_saes``: :func:`sae_metrics` of each hook's SAE of ``bundle`` on the
    prompt set ``prompts`` (JSONL) into ``out_path`` (sae/metrics.json, ``{"prompt_set",
    "saes": {hook: metrics}}``). Answer metrics when every prompt has an ``answer``; some but
    not all is an InputError naming the lines without one."""
    from saeflow.core.io import write_json
    from saeflow.core.models import tokenize_prompt_set
    from saeflow.core.prompts import load_prompt_set, require_answers
    from saeflow.core.runtime import resolve_device

    device = resolve_device(device)
    records = load_prompt_set(prompts)
    # answer loss over every prompt or none: a few prompts without one are a mistake to name
    require_answers(records, prompts, "the SAE evaluation's answer loss", allow_none=True)
    model = bundle.load_model(device)
    tokens, lengths, answers = tokenize_prompt_set(model.tokenizer, records, prompts)
    metrics = {}
    for hook in bundle.hooks:
        (sae,) = bundle.site(hook).load_saes(device)
        metrics[hook] = sae_metrics(model, sae, tokens, lengths, answers)
    write_json(out_path, {"prompt_set": prompts, "saes": metrics},
               config={"sae": dict(bundle.sae), "model": dict(bundle.model)})
