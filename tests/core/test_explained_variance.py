"""Explained variance accumulated in float64: a large-mean dimension must not cancel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saeflow.evaluate import ExplainedVariance, sae_metrics


def _data(n: int = 8192, d: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    x[:, 0] += 3000.0  # one dimension with a large mean, SD 1 like the rest
    return x, x + 0.3 * torch.randn(n, d, generator=g)


def _reference(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    a, b = x.double().numpy(), x_hat.double().numpy()
    return float(1 - ((a - b) ** 2).sum() / ((a - a.mean(0)) ** 2).sum())


def _old_float32(x: torch.Tensor, x_hat: torch.Tensor, batch: int) -> float:
    """What sae_metrics did: float32 sums of x and x^2, total variance E[x^2] - E[x]^2."""
    s = q = None
    err = 0.0
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        s = xb.sum(0) if s is None else s + xb.sum(0)
        q = (xb ** 2).sum(0) if q is None else q + (xb ** 2).sum(0)
        err += float(((xb - x_hat[i:i + batch]) ** 2).sum())
    return 1.0 - err / float((q - s ** 2 / len(x)).sum())


@pytest.mark.parametrize("batch", [64, 1000, 8192])
def test_float64_accumulation_matches_the_reference_where_float32_cancels(batch):
    x, x_hat = _data()
    ref = _reference(x, x_hat)  # ~0.91
    acc = ExplainedVariance()
    for i in range(0, len(x), batch):
        acc.add(x[i:i + batch], x_hat[i:i + batch])
    assert acc.compute() == pytest.approx(ref, abs=1e-9)


def test_the_old_float32_sums_were_wrong():
    x, x_hat = _data()
    # 0.870 instead of 0.910 in batches of 64 rows; how wrong depends on the rounding luck
    assert abs(_old_float32(x, x_hat, 64) - _reference(x, x_hat)) > 0.03


def test_no_rows_or_no_variance_is_nan():
    assert np.isnan(ExplainedVariance().compute())
    acc = ExplainedVariance()
    acc.add(torch.ones(5, 3), torch.ones(5, 3))
    assert np.isnan(acc.compute())


def test_sae_metrics_uses_the_float64_variance(tiny_model, random_sae, toy_tokenizer,
                                               small_world):
    from saeflow.core.models import tokenize_prompt_set

    tokens, lengths, _ = tokenize_prompt_set(toy_tokenizer,
                                             small_world.prompt_sets["heldout_seen"][:12], "s")
    m = sae_metrics(tiny_model, random_sae, tokens, lengths, batch_size=5)
    hook = random_sae.cfg.metadata.hook_name
    _, cache = tiny_model.run_with_cache(tokens[:, :int(lengths.max())], names_filter=[hook])
    real = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]
    real[:, 0] = False  # BOS excluded, as in training
    x = cache[hook][real].float()
    with torch.no_grad():
        assert m["explained_variance"] == pytest.approx(
            _reference(x, random_sae.decode(random_sae.encode(x))), abs=1e-6)
