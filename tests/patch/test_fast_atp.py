"""AtP's fast path equals the plain computation: the metric from two answer logits at the final
position, leaf nodes (no encoder in the backward pass, one decode per site) and a clean run that
starts where the pairs first differ give the effects, deltas and metrics of differentiating
full logits through the default splice, for every kind of site and a gemma-2-like model."""

from __future__ import annotations

import pytest
import torch
from sae_lens import HookedSAETransformer
from transformer_lens import HookedTransformerConfig

from saeflow.patch.attribution import attribution_patching, exact_latent_effects
from saeflow.patch.pairs import logit_diff
from saeflow.patch.splice import (RunOptions, answer_logit_diff, prepare_saes,
                                  run_spliced, shared_prefix)
from saeflow.testing.fixtures import random_pair_batch
from saeflow.testing.reference_atp import reference_atp
from tests.patch.test_attribution import SITE_SETS, make_model, make_saes

torch.set_num_threads(1)


def gemma_like(dtype: torch.dtype = torch.float64) -> HookedSAETransformer:
    """gemma-2's architecture, tiny: RMS pre+post norms, rotary, grouped-query attention,
    local and global layers, gated GELU MLP, soft-capped attention scores and logits."""
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, n_key_value_heads=2, d_head=8, d_mlp=64,
        d_vocab=50, n_ctx=16, eps=1e-6, act_fn="gelu_pytorch_tanh", normalization_type="RMS",
        positional_embedding_type="rotary", rotary_dim=8, gated_mlp=True, final_rms=True,
        use_normalization_before_and_after=True, attn_scores_soft_cap=50.0,
        output_logits_soft_cap=3.0, use_local_attn=True, window_size=4,
        attn_types=["local", "global"], seed=0, dtype=dtype)
    return HookedSAETransformer(cfg).eval()


def assert_same(ours, ref, atol: float) -> None:
    (eff, delta, clean, corr), (eff_r, delta_r, clean_r, corr_r) = ours, ref
    assert torch.allclose(clean, clean_r, atol=atol) and torch.allclose(corr, corr_r, atol=atol)
    assert set(eff) == set(eff_r)
    for h in eff:
        assert torch.allclose(delta[h].act, delta_r[h].act, atol=atol), h
        assert torch.allclose(eff[h].act, eff_r[h].act, atol=atol), h
        assert (eff[h].res is None) == (eff_r[h].res is None)
        if eff[h].res is not None:
            assert torch.allclose(eff[h].res, eff_r[h].res, atol=atol), h
    assert max(float(e.act.abs().max()) for e in eff.values()) > 1e-3  # not vacuous


@pytest.mark.parametrize("sites", list(SITE_SETS))
@pytest.mark.parametrize("with_error", [True, False])
def test_fast_atp_equals_full_logits_through_the_default_splice(sites: str, with_error: bool):
    model = make_model(dtype=torch.float64)
    spliced = prepare_saes(model, make_saes(model, SITE_SETS[sites]))
    for diff_at in ([3], [0, 4], [5]):  # a shared prefix of 3, none, all but the final token
        batch = random_pair_batch(3, 6, diff_at, seed=7)
        assert shared_prefix(batch) == min(diff_at)
        assert_same(attribution_patching(model, spliced, batch, with_error),
                    reference_atp(model, spliced, batch, with_error), atol=1e-9)
    assert not model.acts_to_saes


@pytest.mark.parametrize("with_error", [True, False])
def test_fast_atp_equals_the_plain_computation_on_a_gemma_like_model(with_error: bool):
    model = gemma_like()
    saes = make_saes(model, ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z",
                             "blocks.1.hook_resid_post"])
    spliced = prepare_saes(model, saes)
    batch = random_pair_batch(4, 9, [6], seed=3)  # the prefix crosses the local window
    assert_same(attribution_patching(model, spliced, batch, with_error),
                reference_atp(model, spliced, batch, with_error), atol=1e-9)
    # float32, as the pipeline runs: the same to float32 rounding
    model32 = gemma_like(torch.float32)
    spliced32 = prepare_saes(model32, make_saes(model32, ["blocks.0.hook_resid_post",
                                                          "blocks.1.hook_resid_post"]))
    assert_same(attribution_patching(model32, spliced32, batch, with_error),
                reference_atp(model32, spliced32, batch, with_error), atol=1e-4)


def test_answer_logits_are_the_models_own_with_a_soft_cap():
    model = gemma_like()
    batch = random_pair_batch(3, 7, [2], seed=1)
    resid = model(batch.clean, stop_at_layer=model.cfg.n_layers)
    ours = answer_logit_diff(model, resid, batch.clean_answer, batch.corrupted_answer)
    ref = logit_diff(model(batch.clean), batch.clean_answer, batch.corrupted_answer)
    assert torch.allclose(ours, ref, atol=1e-12)
    assert ref.abs().max() < 2 * model.cfg.output_logits_soft_cap  # the cap is in force


def test_leaf_nodes_keep_the_values_and_the_node_gradients():
    """``RunOptions(leaf_nodes=True)``: the same forward values and the same gradient at every
    node, with no encoder in the backward pass (a leaf's ``grad_fn`` is None)."""
    model = make_model(dtype=torch.float64)
    spliced = prepare_saes(model, make_saes(model, SITE_SETS["transcoder"]))
    batch = random_pair_batch(2, 6, [1], seed=4)
    out = {}
    for leaf in (False, True):
        with torch.enable_grad():
            logits, nodes = run_spliced(model, spliced, batch.corrupted, True,
                                        options=RunOptions(leaf_nodes=leaf))
            metric = logit_diff(logits, batch.clean_answer, batch.corrupted_answer).sum()
            leaves = [n.act for n in nodes.values()] + [n.res for n in nodes.values()]
            out[leaf] = (logits, torch.autograd.grad(metric, leaves), nodes)
    assert torch.allclose(out[True][0], out[False][0], atol=1e-12)
    for g_leaf, g_ref in zip(out[True][1], out[False][1], strict=True):
        assert torch.allclose(g_leaf, g_ref, atol=1e-10)
    assert all(n.act.grad_fn is None for n in out[True][2].values())


def test_exact_patching_reads_the_same_metric():
    """Exact latent effects from the final position's answer logits equal patching the latent
    in a full run and reading full logits."""
    model = gemma_like()
    spliced = prepare_saes(model, make_saes(model, ["blocks.1.attn.hook_z"]))
    batch = random_pair_batch(2, 6, [2], seed=5)
    h = "blocks.1.attn.hook_z"
    latents = [(h, i) for i in range(6)]
    ours = exact_latent_effects(model, spliced, batch, latents, True)
    assert ours.abs().max() > 1e-4
    with torch.no_grad():
        _, clean = run_spliced(model, spliced, batch.clean, True)
        base, _ = run_spliced(model, spliced, batch.corrupted, True)
        args = (batch.clean_answer, batch.corrupted_answer)
        for j, (_, i) in enumerate(latents):
            def edit(name, f, i=i):
                if name == h:
                    f[:, :, i] = clean[h].act[:, :, i]
                return f
            patched, _ = run_spliced(model, spliced, batch.corrupted, True, edit)
            ref = logit_diff(patched, *args) - logit_diff(base, *args)
            assert torch.allclose(ours[:, j], ref.double(), atol=1e-10)
