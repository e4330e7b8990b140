"""AtP* QK fix: exact where a latent reaches the metric through attention patterns only
linearly otherwise, AtP where no attention layer is downstream, and the AtP limit for small
patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sae_lens import HookedSAETransformer, StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformerConfig

from saeflow.patch.attribution import exact_latent_effects, run_atp
from saeflow.patch.splice import prepare_saes
from saeflow.patch.qkfix import downstream_layers, run_qk_fix, to_residual
from saeflow.testing.fixtures import random_pair_batch
from tests.patch.test_attribution import SITE_SETS, make_model, make_saes

torch.set_num_threads(1)
SUBSPACE = 8  # the dimensions the latents write and queries / keys read; values ignore them


def pattern_only_world():
    """Attention-only, no LayerNorm, an SAE at blocks.0.hook_resid_post: half its latents write
    only the first SUBSPACE dimensions, which layer 1's queries and keys read (sharply:
    saturated patterns) and its values ignore; the other half write only the rest, which the
    values read and queries and keys ignore. The metric is linear in the last residual stream.
    A latent of the first half moves patterns and no value, one of the second half values and
    no pattern, so every exact effect is its direct path plus < dm/dA, exact pattern change >:
    the QK fix's formula. Without the error term the second half is what makes the values
    differ between positions (else a pattern change would move nothing)."""
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_vocab=50,
                                  n_ctx=16, attn_only=True, normalization_type=None, seed=0,
                                  dtype=torch.float64)
    model = HookedSAETransformer(cfg).eval()
    attn = model.blocks[1].attn
    with torch.no_grad():
        attn.W_V[:, :SUBSPACE] = 0
        attn.W_Q[:, SUBSPACE:] = 0
        attn.W_K[:, SUBSPACE:] = 0
        attn.W_Q *= 6
        attn.W_K *= 6
    torch.manual_seed(7)
    sae_cfg = StandardSAEConfig(d_in=32, d_sae=16, dtype="float64",
                                metadata=SAEMetadata(hook_name="blocks.0.hook_resid_post"))
    sae = StandardSAE(sae_cfg)
    with torch.no_grad():
        sae.W_dec[:8, SUBSPACE:] = 0
        sae.W_dec[8:, :SUBSPACE] = 0
        sae.W_dec[:8] *= 8  # large pattern moves: where the linearised softmax is off
        sae.W_dec[8:] *= 3
        sae.b_enc.fill_(0.05)
    batches = [random_pair_batch(4, 7, [1, 3], seed=11)]
    return model, prepare_saes(model, [sae]), batches


def _exact(model, spliced, batches, with_error):
    hook = next(iter(spliced))
    latents = [(hook, i) for i in range(spliced[hook].cfg.d_sae)]
    return np.concatenate([exact_latent_effects(model, spliced, b, latents, with_error).numpy()
                           for b in batches]), hook


@pytest.mark.parametrize("with_error", [True, False])
def test_exact_when_patterns_are_the_only_nonlinearity(with_error):
    model, spliced, batches = pattern_only_world()
    exact, hook = _exact(model, spliced, batches, with_error)
    fixed = run_qk_fix(model, spliced, batches, with_error).latent_effect[hook]
    plain = run_atp(model, spliced, batches, with_error).latent_effect[hook]
    moving = np.abs(exact).max(0) > 1e-6
    assert moving[:8].sum() >= 3 and moving[8:].sum() >= 3
    np.testing.assert_allclose(fixed, exact, atol=1e-9)
    # AtP's linearised softmax misses by a visible margin on the pattern latents, not the others
    assert np.abs(plain - exact)[:, :8].max() > 0.05 * np.abs(exact[:, :8]).max()
    np.testing.assert_allclose(plain[:, 8:], exact[:, 8:], atol=1e-9)


@pytest.mark.parametrize("sites", list(SITE_SETS))
def test_no_downstream_attention_is_atp_and_small_patches_are_atp(sites):
    model = make_model(dtype=torch.float64)
    spliced = prepare_saes(model, make_saes(model, SITE_SETS[sites]))
    batches = [random_pair_batch(3, 6, [2], seed=3)]
    fixed = run_qk_fix(model, spliced, batches, True)
    plain = run_atp(model, spliced, batches, True)
    for h in spliced:
        if not downstream_layers(h, model.cfg.n_layers):
            np.testing.assert_allclose(fixed.latent_effect[h], plain.latent_effect[h], atol=1e-12)
            np.testing.assert_allclose(fixed.error_effect[h], plain.error_effect[h], atol=1e-12)
    # a near-identical corrupted prompt: the exact pattern change is its linearisation
    near = [random_pair_batch(3, 6, [2], seed=3)]
    with torch.no_grad():
        emb = model.W_E.clone()
    try:
        with torch.no_grad():  # make the changed token's embedding that of the clean one, + eps
            c, k = near[0].clean, near[0].corrupted
            diff = c != k
            assert len(set(k[diff].tolist())) == int(diff.sum()), "one clean token per changed one"
            model.W_E[k[diff]] = emb[c[diff]] + 1e-5 * torch.randn_like(emb[c[diff]])
        f, a = run_qk_fix(model, spliced, near, True), run_atp(model, spliced, near, True)
        for h in spliced:
            scale = np.abs(a.latent_effect[h]).max() + 1e-30
            np.testing.assert_allclose(f.latent_effect[h], a.latent_effect[h],
                                       atol=1e-3 * scale)
    finally:
        with torch.no_grad():
            model.W_E.copy_(emb)


def test_hook_z_rows_reach_the_residual_through_w_o():
    model = make_model(dtype=torch.float64)
    v = torch.randn(3, model.cfg.n_heads * model.cfg.d_head, dtype=torch.float64)
    out = to_residual(model, "blocks.0.attn.hook_z", v)
    z = v.reshape(3, model.cfg.n_heads, model.cfg.d_head)
    expected = sum(z[:, h] @ model.blocks[0].attn.W_O[h] for h in range(model.cfg.n_heads))
    torch.testing.assert_close(out, expected)
    assert downstream_layers("blocks.0.hook_resid_pre", 2) == [0, 1]
    assert downstream_layers("blocks.0.attn.hook_z", 2) == [1]
    assert downstream_layers("blocks.1.hook_resid_post", 2) == []
