"""Train the toy model's SAEs: a standard sae-lens SAE per hook with sae-lens's own runner,
or a sae-lens ``Transcoder`` (the MLP's input to its output) where ``sae.transcoders`` names
the hook, saved in sae-lens's format so ``SAE.load_from_disk`` and every later stage read it.

sae-lens 6 trains SAEs only: its runner reconstructs the one hook it reads, with no second
(output) hook in its activation store. So the transcoder loop is written here, with sae-lens's
class and the loss sae-lens's standard SAE trains with (summed squared error plus the L1 of
each latent times its decoder row's norm, warmed up linearly), on activations of real tokens
only (pad and BOS excluded, as the SAEs are trained).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from tqdm import tqdm
from transformer_lens import HookedTransformer

from saeflow.core.errors import InputError
from saeflow.core.models import hook_widths, require_hooks
from saeflow.core.saes import load_sae_dir

log = logging.getLogger(__name__)


def train_sae(model: HookedTransformer, hook_name: str, sequences: torch.Tensor,
              sae_cfg: dict[str, Any], exclude_token_ids: list[int], seed: int,
              device: str, out_dir: str | Path) -> SAE:
    """Train a standard ReLU SAE on ``hook_name`` with sae-lens's own runner, offline.

    ``sequences [n, context]`` are right-padded prompts; pad and BOS activations are excluded
    from training (``exclude_special_tokens``), so the SAE sees only real tokens.
    """
    require_hooks(model, [hook_name], "sae.hooks")
    os.environ["WANDB_MODE"] = "disabled"
    from datasets import Dataset
    from sae_lens import (LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner,
                          LoggingConfig, StandardTrainingSAEConfig)

    dataset = Dataset.from_dict({"input_ids": sequences.tolist()})
    runner_cfg = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(
            d_in=hook_widths(model, [hook_name])[hook_name], d_sae=sae_cfg["d_sae"],
            # hook_z SAEs read heads x d_head flat and give it back per head, as Gemma Scope's
            reshape_activations="hook_z" if hook_name.endswith("hook_z") else "none",
            l1_coefficient=sae_cfg["l1_coefficient"], l1_warm_up_steps=sae_cfg["l1_warm_up_steps"],
            apply_b_dec_to_input=False, normalize_activations=sae_cfg["normalize_activations"],
        ),
        model_name="saeflow-toy", hook_name=hook_name, dataset_path="saeflow-toy-prompts",
        is_dataset_tokenized=True, streaming=False, context_size=sequences.shape[1],
        prepend_bos=False, exclude_special_tokens=exclude_token_ids,
        training_tokens=sae_cfg["training_tokens"], train_batch_size_tokens=sae_cfg["batch_tokens"],
        store_batch_size_prompts=64,
        # sae-lens sizes its shuffle buffer as n_batches_in_buffer * context_size tokens.
        n_batches_in_buffer=max(8, 4 * sae_cfg["batch_tokens"] // sequences.shape[1]), lr=sae_cfg["lr"],
        lr_warm_up_steps=0, device=device, seed=seed, dtype="float32",
        logger=LoggingConfig(log_to_wandb=False), n_checkpoints=0, checkpoint_path=None,
        output_path=str(out_dir), n_eval_batches=0, verbose=False,
        n_batches_for_norm_estimate=20,  # sae-lens default (1000 LM batches) dominates toy runs
    )
    runner = LanguageModelSAETrainingRunner(runner_cfg, override_dataset=dataset,
                                            override_model=model)
    runner.run()
    return load_sae_dir(out_dir, device)


DECODER_INIT_NORM = 0.1  # sae-lens's default decoder row norm at initialisation


@torch.no_grad()
def collect_pairs(model: Any, hook_in: str, hook_out: str, sequences: torch.Tensor,
                  exclude_token_ids: list[int], n_tokens: int, batch_size: int = 64
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Input and output activations ``[N, d_in]``, ``[N, d_out]`` (float32, flat) of up to
    ``n_tokens`` real tokens of ``sequences [n, context]``, in prompt order."""
    xs, ys, total = [], [], 0
    excluded = torch.as_tensor(exclude_token_ids, device=model.cfg.device)
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start:start + batch_size].to(model.cfg.device)
        _, cache = model.run_with_cache(batch, names_filter=[hook_in, hook_out])
        if hook_in not in cache or hook_out not in cache:
            raise InputError("config", f"sae.transcoders.{hook_in}", "its input or output "
                             "hook did not fire in a forward pass (e.g. hook_mlp_in needs "
                             "use_hook_mlp_in)")
        real = ~torch.isin(batch, excluded)
        xs.append(cache[hook_in][real].flatten(1).float().cpu())
        ys.append(cache[hook_out][real].flatten(1).float().cpu())
        total += int(real.sum())
        if total >= n_tokens:
            break
    return torch.cat(xs)[:n_tokens], torch.cat(ys)[:n_tokens]


def _scale(acts: torch.Tensor) -> float:
    """sae-lens's ``expected_average_only_in`` factor: mean norm scaled to sqrt(d)."""
    return math.sqrt(acts.shape[1]) / float(acts.norm(dim=1).mean().clamp_min(1e-12))


def train_transcoder(model: Any, hook_in: str, hook_out: str, sequences: torch.Tensor,
                     sae_cfg: dict[str, Any], exclude_token_ids: list[int], seed: int,
                     out_dir: str | Path) -> Any:
    """Train a ReLU transcoder from ``hook_in`` to ``hook_out`` (``sae_cfg``: the toy's
    ``sae`` section: d_sae, l1_coefficient, l1_warm_up_steps, normalize_activations,
    training_tokens, batch_tokens, lr), save it to ``out_dir`` and return it loaded back.

    With ``normalize_activations: expected_average_only_in`` both sides are trained scaled to
    mean norm sqrt(d), so one l1 coefficient fits every site as for the SAEs; the scales are
    folded into the saved weights (``W_enc * s_in``, ``W_dec / s_out``, ``b_dec / s_out``), so
    the transcoder reads and writes raw activations and its latents are the trained ones.
    """
    from sae_lens import Transcoder, TranscoderConfig
    from sae_lens.saes.sae import SAEMetadata

    device = str(model.cfg.device)
    require_hooks(model, [hook_in, hook_out], "sae.transcoders")
    widths = hook_widths(model, [hook_in, hook_out])
    x, y = collect_pairs(model, hook_in, hook_out, sequences, exclude_token_ids,
                         sae_cfg["training_tokens"])
    if len(x) < sae_cfg["batch_tokens"]:
        raise InputError("config", "sae.batch_tokens", f"{len(x)} real training tokens, fewer "
                         f"than one batch of {sae_cfg['batch_tokens']}")
    normalise = sae_cfg["normalize_activations"] == "expected_average_only_in"
    s_in, s_out = (_scale(x), _scale(y)) if normalise else (1.0, 1.0)
    x, y = (x * s_in).to(device), (y * s_out).to(device)
    generator = torch.Generator().manual_seed(seed)
    cfg = TranscoderConfig(
        d_in=widths[hook_in], d_out=widths[hook_out], d_sae=sae_cfg["d_sae"], dtype="float32",
        device=device, apply_b_dec_to_input=False, normalize_activations="none",
        metadata=SAEMetadata(hook_name=hook_in, hook_name_out=hook_out, model_name="saeflow-toy"))
    torch.manual_seed(seed)
    tc = Transcoder(cfg)
    with torch.no_grad():
        direction = torch.randn(cfg.d_sae, cfg.d_out, generator=generator).to(device)
        tc.W_dec.copy_(direction / direction.norm(dim=1, keepdim=True) * DECODER_INIT_NORM)
        tc.b_dec.copy_(y.mean(0))
    optimiser = torch.optim.Adam(tc.parameters(), lr=sae_cfg["lr"])
    batch = sae_cfg["batch_tokens"]
    steps = max(1, sae_cfg["training_tokens"] // batch)
    order = torch.cat([torch.randperm(len(x), generator=generator)
                       for _ in range(math.ceil(steps * batch / len(x)))]).to(device)
    warm_up = max(1, sae_cfg["l1_warm_up_steps"])
    for step in tqdm(range(steps), desc=f"transcoder {hook_in} -> {hook_out}", mininterval=5):
        idx = order[step * batch:(step + 1) * batch]
        f = tc.encode(x[idx])
        mse = ((tc.decode(f) - y[idx]) ** 2).sum(-1).mean()
        l1 = (f * tc.W_dec.norm(dim=1)).sum(-1).mean()
        loss = mse + sae_cfg["l1_coefficient"] * min(1.0, (step + 1) / warm_up) * l1
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            log.info("step %d/%d: mse %.4f, l1 %.4f, l0 %.1f", step + 1, steps,
                     float(mse.detach()), float(l1.detach()), float((f > 0).float().sum(-1).mean()))
    with torch.no_grad():
        tc.W_enc.mul_(s_in)
        tc.W_dec.div_(s_out)
        tc.b_dec.div_(s_out)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tc.save_model(out_dir)
    return load_sae_dir(out_dir, device)


def train_sae_stage(model_dir: str | Path, train_path: str | Path, hook_name: str,
                    sae_cfg: dict[str, Any], seed: int, device: str,
                    out_dir: str | Path) -> None:
    """Rule ``train_sae``: seed, train an sae-lens SAE on ``hook_name`` of the toy model (a
    transcoder where ``sae.transcoders`` names the hook) in
    ``model_dir`` over ``train_path`` (prompts/train.jsonl; pad and BOS excluded), saved in
    sae-lens's format to ``out_dir`` (sae/{hook}/) with ``provenance.json``."""
    from saeflow.core.io import read_jsonl, write_json
    from saeflow.core.models import load_model
    from saeflow.core.runtime import resolve_device, seed_everything
    from saeflow.toy.train import encode_set

    seed_everything(seed)
    device = resolve_device(device)
    model = load_model({"source": "toy"}, model_dir, device)
    tokenizer = model.tokenizer
    sequences = encode_set(tokenizer, read_jsonl(train_path)).tokens
    excluded = [tokenizer.pad_token_id, tokenizer.bos_token_id]
    hook_out = (sae_cfg.get("transcoders") or {}).get(hook_name)
    if hook_out:
        train_transcoder(model, hook_name, hook_out, sequences, sae_cfg, excluded, seed, out_dir)
    else:
        train_sae(model, hook_name, sequences, sae_cfg, exclude_token_ids=excluded, seed=seed,
                  device=device, out_dir=out_dir)
    write_json(Path(out_dir) / "provenance.json",
               {"hook_name": hook_name, "hook_name_out": hook_out or hook_name},
               config={"sae": sae_cfg, "seed": seed})
