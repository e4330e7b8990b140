"""Transcoders (``sae.transcoders``): a sae-lens ``Transcoder`` trained by our own loop, the one
place saeflow trains without sae-lens's runner -- sae-lens 6 trains SAEs only: its runner
reconstructs the one hook it reads, with no second (output) hook in its activation store.

The loop uses sae-lens's class and the loss sae-lens's standard SAE trains with (summed squared
error plus the L1 of each latent times its decoder row's norm, warmed up linearly), on the
activations of real tokens only (pad and BOS excluded, as the SAEs are trained), held in
memory: it suits transcoders of up to a few million training tokens. It writes no checkpoints.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from saeflow.core.errors import InputError
from saeflow.core.models import hook_widths, require_hooks
from saeflow.core.saes import load_sae_dir

log = logging.getLogger(__name__)


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


@torch.no_grad()
def _log_step(counts: tuple[int, int, int], start: float, losses: tuple[torch.Tensor, ...],
              codes: torch.Tensor, target: torch.Tensor) -> None:
    """One progress line: tokens, tokens/s, loss (MSE, L1), L0, explained variance."""
    step, steps, batch = counts
    mse, l1 = (float(v.detach()) for v in losses)
    total = float(((target - target.mean(0)) ** 2).sum(-1).mean())
    log.info("step %d/%d, %d tokens, %.0f tokens/s: mse %.4f, l1 %.4f, L0 %.1f, explained "
             "variance %.3f", step, steps, step * batch, step * batch / max(
                 time.perf_counter() - start, 1e-9), mse, l1,
             float((codes > 0).float().sum(-1).mean()), 1 - mse / max(total, 1e-12))


def train_transcoder(model: Any, hooks: tuple[str, str], sequences: torch.Tensor,
                     sae_cfg: dict[str, Any], exclude_token_ids: list[int], seed: int,
                     out_dir: str | Path, model_name: str = "saeflow-toy") -> Any:
    """Train a ReLU transcoder from ``hooks[0]`` to ``hooks[1]`` on the real tokens of
    ``sequences [n, context]`` (``sae_cfg``: the ``sae`` section: d_sae, l1_coefficient,
    l1_warm_up_steps, normalize_activations, training_tokens, batch_tokens, lr), save it to
    ``out_dir`` (its metadata naming ``model_name``) and return it loaded back.

    With ``normalize_activations: expected_average_only_in`` both sides are trained scaled to
    mean norm sqrt(d), so one l1 coefficient fits every site as for the SAEs; the scales are
    folded into the saved weights (``W_enc * s_in``, ``W_dec / s_out``, ``b_dec / s_out``), so
    the transcoder reads and writes raw activations and its latents are the trained ones.
    """
    from sae_lens import Transcoder, TranscoderConfig
    from sae_lens.saes.sae import SAEMetadata

    hook_in, hook_out = hooks
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
        metadata=SAEMetadata(hook_name=hook_in, hook_name_out=hook_out, model_name=model_name))
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
    start = time.perf_counter()
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
            _log_step((step + 1, steps, batch), start, (mse, l1), f, y[idx])
    with torch.no_grad():
        tc.W_enc.mul_(s_in)
        tc.W_dec.div_(s_out)
        tc.b_dec.div_(s_out)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tc.save_model(out_dir)
    return load_sae_dir(out_dir, device)
