"""How good an SAE is where it sits: SAEBench's core metrics on one prompt set (rule
``evaluate_saes``, every study, trained and pretrained SAEs alike). A transcoder reads its
input hook and is judged on, spliced at and zero-ablated at its output hook.

Definitions follow SAEBench's core eval (``sae_bench/evals/core/main.py``: ``run_evals``,
``get_recons_loss``, ``calculate_misc_metrics``) and sae-lens 6.54's copy of it
(``sae_lens/evals.py``), on the tokens of a prompt set rather than an activation store:

- evaluated tokens: every real token but BOS (padding and BOS excluded, as in training and
  as SAEBench's ``ignore_tokens`` mask); L0, explained variance and firing counts are over them;
- ``l0``: mean over evaluated tokens of the number of latents ``!= 0`` (sae-lens 6.54 counts
  ``!= 0`` so signed architectures count; the same as ``> 0`` for ReLU, JumpReLU, TopK);
- ``explained_variance``: ``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` (x the output
  hook's activation), :class:`ExplainedVariance`;
- ``lm_loss_{model,spliced,zero_ablated}``: mean next-token cross-entropy (nats) over every
  prediction of a real token (positions 0..len-2) with the model alone, with the SAE's
  reconstruction (no error term) in place of the output hook at every position, and with the
  output hook set to zero at every position (SAEBench's ``ce_loss_without_sae``,
  ``ce_loss_with_sae``, ``ce_loss_with_ablation``);
- ``lm_loss_recovered``: ``(zero_ablated - spliced) / (zero_ablated - model)`` (SAEBench's
  ``ce_loss_score``), null when zero-ablation leaves the loss unchanged;
- ``kl_div_with_{sae,ablation}``: mean over real positions (0..len-1) of
  ``KL(p_model || p_spliced)`` and ``KL(p_model || p_zero_ablated)`` of the next-token
  distributions; ``kl_div_score`` ``(kl_div_with_ablation - kl_div_with_sae) /
  kl_div_with_ablation``, null when that is 0;
- the dead and dense latent fractions: :mod:`saeflow.sae_density`.

Everything here is written by hand rather than called from ``sae_lens.evals``, which computes
the same quantities but not on this input: its ``get_sparsity_and_variance_metrics`` draws
tokens from an ``ActivationsStore`` (a dataset), not a prompt set; its ``get_recons_loss``
encodes the activation it replaces, where a transcoder reads another hook, and returns
per-token losses without the logits the answer metrics need, so calling it would add two
full-vocabulary forward passes per batch. tests/sae_eval checks that the numbers here equal
``get_recons_loss``'s on a standard SAE. The explained variance is float64 on purpose (see
:class:`ExplainedVariance`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from transformer_lens import HookedTransformer

from saeflow.core.bundle import ModelSAEs
from saeflow.core.transcoders import output_hook
from saeflow.sae_density import density_metrics

# the three forward passes each batch makes: the model alone, the SAE spliced in, the output
# hook zero-ablated
RUNS = ("model", "spliced", "zero_ablated")


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


class _Totals:
    """Running sums over batches of one SAE's evaluation."""

    def __init__(self, d_sae: int) -> None:
        self.explained = ExplainedVariance()
        self.fires = torch.zeros(d_sae, dtype=torch.int64)  # [d_sae] evaluated tokens firing
        self.n_tok = 0
        self.lm = dict.fromkeys(RUNS, 0.0)
        self.lm_n = 0
        self.kl = {"spliced": 0.0, "zero_ablated": 0.0}
        self.kl_n = 0
        self.answer = {"model": 0.0, "spliced": 0.0}
        self.correct = {"model": 0, "spliced": 0}


def kl_sum(p_logits: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor,
           rows: int = 1024) -> float:
    """``sum KL(p || q)`` over the positions ``mask [B, T]`` selects of ``p_logits``,
    ``q_logits`` ``[B, T, V]``, the distributions their softmax; the same as sae-lens's
    ``_kl(original, new)``. ``rows`` positions at a time, so a 256k vocabulary never needs
    more than a few ``[rows, V]`` float32 copies."""
    index = mask.flatten().nonzero().squeeze(1)
    p_flat, q_flat = p_logits.flatten(0, 1), q_logits.flatten(0, 1)
    total = 0.0
    for start in range(0, len(index), rows):
        at = index[start:start + rows]
        log_p = torch.log_softmax(p_flat[at].float(), -1)
        log_q = torch.log_softmax(q_flat[at].float(), -1)
        total += float(torch.nn.functional.kl_div(log_q, log_p, log_target=True,
                                                  reduction="sum"))
    return total


def ratio_or_none(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``; None (JSON null) where the denominator is 0."""
    return numerator / denominator if denominator != 0 else None


def _site_hooks(sae: SAE) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """Forward hooks that splice the SAE's reconstruction (no error term) into its output
    hook at every position (a transcoder encodes its input hook's activation), and that set
    the output hook to zero."""
    hook_in, hook_out = sae.cfg.metadata.hook_name, output_hook(sae)
    seen: dict[str, torch.Tensor] = {}

    def keep_input(act: torch.Tensor, hook: Any) -> torch.Tensor:
        seen["x"] = act
        return act

    def splice(act: torch.Tensor, hook: Any) -> torch.Tensor:
        x = seen.pop("x", act)
        return sae.decode(sae.encode(x)).to(act.dtype).reshape(act.shape)

    def zero(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return torch.zeros_like(act)

    spliced = ([(hook_in, keep_input)] if hook_out != hook_in else []) + [(hook_out, splice)]
    return spliced, [(hook_out, zero)]


def _add_latents(totals: _Totals, sae: SAE, x: torch.Tensor, target: torch.Tensor) -> None:
    """L0, firing counts and explained variance of the evaluated tokens' input ``x [N, ...]``
    and output-hook activation ``target [N, d]``."""
    codes = sae.encode(x)
    totals.fires += (codes != 0).sum(0).cpu()
    totals.n_tok += x.shape[0]
    totals.explained.add(target, sae.decode(codes).reshape(target.shape))


def _add_run(totals: _Totals, name: str, logits: torch.Tensor, batch: torch.Tensor,
             next_valid: torch.Tensor) -> None:
    """Summed next-token cross-entropy of one run over the predictions of real tokens."""
    predicted = logits[:, :-1][next_valid].float()
    targets = batch[:, 1:][next_valid]
    totals.lm[name] += float(torch.nn.functional.cross_entropy(predicted, targets, reduction="sum"))


def _add_answers(totals: _Totals, name: str, logits: torch.Tensor, lens: torch.Tensor,
                 answers: torch.Tensor) -> None:
    """Summed answer loss and correct answers of one run at each prompt's final token."""
    final = logits[torch.arange(len(lens), device=logits.device), lens - 1].float()
    totals.answer[name] += float(torch.nn.functional.cross_entropy(final, answers, reduction="sum"))
    totals.correct[name] += int((final.argmax(-1) == answers).sum())


def _add_batch(model: HookedTransformer, sae: SAE, batch: torch.Tensor, lens: torch.Tensor,
               answers: torch.Tensor | None, totals: _Totals) -> None:
    """One right-padded batch ``[B, T]`` of ``lens [B]`` real tokens through the three runs."""
    hook_in, hook_out = sae.cfg.metadata.hook_name, output_hook(sae)
    logits, cache = model.run_with_cache(batch, names_filter=[hook_in, hook_out])
    valid = torch.arange(batch.shape[1], device=batch.device)[None, :] < lens[:, None]
    real = valid.clone()
    real[:, 0] = False  # BOS excluded, as in training
    _add_latents(totals, sae, cache[hook_in][real].float(),
                 cache[hook_out][real].float().flatten(1))
    del cache
    next_valid = valid[:, 1:]
    totals.lm_n += int(next_valid.sum())
    totals.kl_n += int(valid.sum())
    splice, zero = _site_hooks(sae)
    for name, hooks in zip(RUNS, ([], splice, zero), strict=True):
        out = logits if name == "model" else model.run_with_hooks(batch, fwd_hooks=hooks)
        _add_run(totals, name, out, batch, next_valid)
        if name != "model":
            totals.kl[name] += kl_sum(logits, out, valid)
        if answers is not None and name != "zero_ablated":
            _add_answers(totals, name, out, lens, answers)
        del out


def _summary(totals: _Totals, n_prompts: int, with_answers: bool) -> dict[str, Any]:
    """The per-SAE metrics (module docstring) from the totals over every batch."""
    lm = {name: totals.lm[name] / totals.lm_n for name in RUNS}
    kl_sae, kl_abl = (totals.kl[k] / totals.kl_n for k in ("spliced", "zero_ablated"))
    metrics: dict[str, Any] = {
        "n_tokens": totals.n_tok, "n_lm_tokens": totals.lm_n, "n_kl_positions": totals.kl_n,
        "l0": int(totals.fires.sum()) / totals.n_tok,
        "explained_variance": totals.explained.compute(),
        "lm_loss_model": lm["model"], "lm_loss_spliced": lm["spliced"],
        "lm_loss_zero_ablated": lm["zero_ablated"],
        "lm_loss_recovered": ratio_or_none(lm["zero_ablated"] - lm["spliced"],
                                           lm["zero_ablated"] - lm["model"]),
        "kl_div_with_sae": kl_sae, "kl_div_with_ablation": kl_abl,
        "kl_div_score": ratio_or_none(kl_abl - kl_sae, kl_abl),
        **density_metrics(totals.fires, totals.n_tok),
    }
    if with_answers:
        for name in ("model", "spliced"):
            metrics[f"answer_loss_{name}"] = totals.answer[name] / n_prompts
            metrics[f"answer_accuracy_{name}"] = totals.correct[name] / n_prompts
    return metrics


@torch.no_grad()
def evaluate_sae(model: HookedTransformer, sae: SAE, tokens: torch.Tensor, lengths: torch.Tensor,
                 answers: torch.Tensor | None = None, batch_size: int = 64
                 ) -> tuple[dict[str, Any], torch.Tensor]:
    """The metrics of the module docstring on ``tokens [n, T]`` (right-padded, ``lengths
    [n]`` real tokens each, BOS first), plus answer loss and accuracy at each prompt's final
    token with the model alone and spliced when ``answers [n]`` are given; and each latent's
    firing count over the evaluated tokens, ``[d_sae]`` int64."""
    device = model.cfg.device
    totals = _Totals(int(sae.cfg.d_sae))
    for start in range(0, len(lengths), batch_size):
        sl = slice(start, start + batch_size)
        width = int(lengths[sl].max())
        _add_batch(model, sae, tokens[sl, :width].to(device), lengths[sl].to(device),
                   None if answers is None else answers[sl].to(device), totals)
    metrics = {"hook_name": sae.cfg.metadata.hook_name, "hook_name_out": output_hook(sae),
               "d_sae": int(sae.cfg.d_sae)}
    metrics.update(_summary(totals, len(lengths), answers is not None))
    return metrics, totals.fires


def sae_metrics(model: HookedTransformer, sae: SAE, tokens: torch.Tensor, lengths: torch.Tensor,
                answers: torch.Tensor | None = None, batch_size: int = 64) -> dict[str, Any]:
    """:func:`evaluate_sae`'s metrics alone."""
    return evaluate_sae(model, sae, tokens, lengths, answers, batch_size)[0]


def evaluate_saes_stage(bundle: ModelSAEs, prompts: str | Path, device: str,
                        out_path: str | Path, density_path: str | Path | None = None) -> None:
    """Rule ``evaluate_saes``: :func:`evaluate_sae` of each hook's SAE of ``bundle`` on the
    prompt set ``prompts`` (JSONL) into ``out_path`` (sae/metrics.json, ``{"prompt_set",
    "saes": {hook: metrics}}``) and the firing counts into ``density_path`` (sae/density.json,
    :func:`saeflow.sae_density.write_density`; None: ``density.json`` beside ``out_path``).
    Answer metrics when every prompt has an ``answer``; some but not all is an InputError
    naming the lines without one."""
    from saeflow.core.io import write_json
    from saeflow.core.models import tokenize_prompt_set
    from saeflow.core.prompts import load_prompt_set, require_answers
    from saeflow.core.runtime import resolve_device
    from saeflow.sae_density import write_density

    device = resolve_device(device)
    records = load_prompt_set(prompts)
    # answer loss over every prompt or none: a few prompts without one are a mistake to name
    require_answers(records, prompts, "the SAE evaluation's answer loss", allow_none=True)
    model = bundle.load_model(device)
    tokens, lengths, answers = tokenize_prompt_set(model.tokenizer, records, prompts)
    metrics, counts = {}, {}
    for hook in bundle.hooks:
        (sae,) = bundle.site(hook).load_saes(device)
        metrics[hook], fires = evaluate_sae(model, sae, tokens, lengths, answers)
        counts[hook] = (fires, metrics[hook]["n_tokens"])
    config = bundle.provenance()
    write_json(out_path, {"prompt_set": str(prompts), "saes": metrics}, config=config)
    write_density(density_path or Path(out_path).with_name("density.json"), str(prompts), counts,
                  config)
