"""What a latent writes and how often it fires: the logit table of its decoder direction and its
activation histogram, two panels of every dashboard page.

The logit table is SAEDashboard's (``sae_dashboard/feature_data_generator.py``: the feature's
residual direction ``W_dec[latent]`` times the unembedding ``W_U``, top and bottom k tokens;
``LogitsTableData``), from the weights alone, with no forward pass and, as there, without the
final LayerNorm. The histogram is its ``ActsHistogramData``: the latent's non-zero activations
over the corpus, with the share of tokens where it fires (its density) in the title.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from saeflow.core.hooks import attention_z_layer


def residual_directions(model: Any, sae: Any, hook: str, latents: np.ndarray) -> Any | None:
    """``[k, d_model]`` float32: where each of ``latents`` writes in the residual stream.

    ``W_dec[latents]`` for an SAE (or transcoder) whose output is ``d_model`` wide; for an
    attention ``hook_z`` SAE, its per-head output through that layer's ``W_O``; None for any
    other width (no logit table)."""
    import torch

    w_dec = sae.W_dec.detach().float()[torch.as_tensor(latents, dtype=torch.long)]
    d_model = model.cfg.d_model
    if w_dec.shape[1] == d_model:
        return w_dec
    layer = attention_z_layer(hook)
    n_heads, d_head = model.cfg.n_heads, model.cfg.d_head
    if layer is not None and w_dec.shape[1] == n_heads * d_head:
        w_o = model.blocks[layer].attn.W_O.detach().float()  # [n_heads, d_head, d_model]
        return torch.einsum("khd,hdm->km", w_dec.view(-1, n_heads, d_head), w_o)
    return None


def logit_tables(model: Any, directions: Any, k: int, decode: Callable[[Sequence[int]], list[str]],
                 chunk: int = 64) -> list[dict[str, list[dict[str, Any]]]]:
    """Per direction (``[n, d_model]``), the ``k`` tokens it raises most and lowers most:
    ``{"positive": [{"token", "id", "logit"}, ...], "negative": [...]}``, strongest first.
    ``chunk`` directions at a time, so memory is ``chunk x d_vocab``."""
    import torch

    w_u = model.W_U.detach().float()
    k = min(k, w_u.shape[1])
    tables = []
    with torch.no_grad():
        for start in range(0, directions.shape[0], chunk):
            logits = directions[start:start + chunk].to(w_u.device) @ w_u
            top, bottom = logits.topk(k, dim=1), logits.topk(k, dim=1, largest=False)
            for i in range(logits.shape[0]):
                tables.append({name: _entries(res.values[i], res.indices[i], decode)
                               for name, res in (("positive", top), ("negative", bottom))})
    return tables


def _entries(values: Any, ids: Any, decode: Callable[[Sequence[int]], list[str]]
             ) -> list[dict[str, Any]]:
    ids_list = [int(t) for t in ids]
    return [{"token": tok, "id": t, "logit": round(float(v), 4)}
            for tok, t, v in zip(decode(ids_list), ids_list, values.tolist(), strict=True)]


def activation_histogram(values: np.ndarray, n_tokens: int, bins: int) -> dict[str, Any]:
    """The histogram of a latent's non-zero activations ``values`` in ``bins`` equal bins from
    0 to its maximum, and its ``density``: the share of the corpus's ``n_tokens`` tokens where
    it fires."""
    if not len(values):
        return {"edges": [], "counts": [], "density": 0.0, "n_active": 0, "n_tokens": n_tokens}
    hi = float(values.max())
    counts, edges = np.histogram(values, bins=bins, range=(0.0, hi if hi > 0 else 1.0))
    return {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist(),
            "density": len(values) / max(n_tokens, 1), "n_active": int(len(values)),
            "n_tokens": int(n_tokens)}
