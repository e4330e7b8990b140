"""AtP* GradDrop: each dropped term is the direct effect it claims to be, the last block's nodes
get L / (L - 1) |AtP|, and the h5 round trip and summary judge it against exact patching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saeflow.patch.attribution import exact_latent_effects, run_atp
from saeflow.patch.splice import prepare_saes, run_spliced
from saeflow.patch.graddrop import magnitudes, run_graddrop
from saeflow.patch.pairs import logit_diff
from saeflow.testing.fixtures import random_pair_batch
from tests.patch.test_attribution import D_SAE, make_model, make_saes

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup():
    model = make_model(dtype=torch.float64)
    spliced = prepare_saes(model, make_saes(model))
    batch = random_pair_batch(4, 6, [2], seed=3)
    return model, spliced, batch


def direct_limit(model, spliced, batch, hook, latent, alpha=1e-6):
    """d/d alpha of patching ``latent`` by alpha with block 1's attention and MLP outputs held at
    their corrupted values: the effect along block 1's residual skip only."""
    from saeflow.patch.splice import _splice_hooks

    names = ["blocks.1.hook_attn_out", "blocks.1.hook_mlp_out"]
    _, clean = run_spliced(model, spliced, batch.clean, True)
    held, corr = {}, {}

    def keep(x, hook):
        held[hook.name] = x.detach().clone()

    def run(fwd):
        with model.saes(saes=list(spliced.values()), use_error_term=False):
            return model.run_with_hooks(batch.corrupted, fwd_hooks=fwd)

    splice = [h for name, sae in spliced.items() for h in _splice_hooks(name, sae, True, corr, None, None)]
    logits = run(splice + [(n, keep) for n in names])  # the spliced corrupted run, as AtP's
    base = logit_diff(logits, batch.clean_answer, batch.corrupted_answer)

    def edit(name, f):
        if name == hook:
            f[:, :, latent] = corr[hook].act[:, :, latent] + alpha * (
                clean[hook].act[:, :, latent] - corr[hook].act[:, :, latent])
        return f

    nodes = {}
    fwd = [h for name, sae in spliced.items() for h in _splice_hooks(name, sae, True, nodes, edit, None)]
    patched = run(fwd + [(n, lambda x, hook: held[hook.name]) for n in names])
    return ((logit_diff(patched, batch.clean_answer, batch.corrupted_answer) - base) / alpha
            ).detach().numpy()


def test_each_term_is_plain_or_the_direct_effect(setup):
    model, spliced, batch = setup
    atp = run_atp(model, spliced, [batch], True)
    gd = run_graddrop(model, spliced, [batch], True)
    first, last = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"
    # the last block's nodes: every term is plain AtP, so L / (L - 1) = 2 times |AtP|
    np.testing.assert_allclose(gd.latent_effect[last], 2 * np.abs(atp.latent_effect[last]),
                               atol=1e-12)
    np.testing.assert_allclose(gd.error_effect[last], 2 * np.abs(atp.error_effect[last]),
                               atol=1e-12)
    # layer 0's nodes: |AtP| (block 0 dropped: not upstream) + |direct effect past block 1|
    moving = np.flatnonzero(np.abs(atp.latent_effect[first]).max(0) > 1e-3)[:6]
    assert len(moving) >= 3
    for i in moving:
        direct = direct_limit(model, spliced, batch, first, int(i))
        expected = np.abs(atp.latent_effect[first][:, i]) + np.abs(direct)
        np.testing.assert_allclose(gd.latent_effect[first][:, i], expected, rtol=1e-4, atol=1e-8)
    # dropping block 1 changes the estimate: the direct effect is not AtP's total
    assert np.abs(gd.latent_effect[first] - 2 * np.abs(atp.latent_effect[first])).max() > 1e-3
    assert (gd.latent_effect[first] >= 0).all() and (gd.error_effect[first] >= 0).all()


def test_a_one_layer_model_is_a_config_error():
    from saeflow.core.errors import InputError
    from tests.patch.test_attribution import HookedSAETransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=32, n_heads=4, d_head=8, d_vocab=50,
                                  n_ctx=16, act_fn="gelu", seed=0, dtype=torch.float64)
    model = HookedSAETransformer(cfg).eval()
    spliced = prepare_saes(model, make_saes(model, ["blocks.0.hook_resid_post"]))
    with pytest.raises(InputError, match="patch.estimators.*at least 2 layers"):
        run_graddrop(model, spliced, [random_pair_batch(2, 6, [2], seed=1)], True)


def test_magnitude_view_compares_like_with_like(setup):
    model, spliced, batch = setup
    from saeflow.patch.exhaustive import compare_with_exact, exhaustive_patching

    exact = exhaustive_patching(model, spliced, [batch], True)
    gd = run_graddrop(model, spliced, [batch], True)
    mags = magnitudes(exact)
    assert (mags.latent_effect["blocks.0.hook_resid_post"] >= 0).all()
    report = compare_with_exact(gd, mags, [5, 10], 10, threshold=1e-3)
    assert report["spearman_active_latents"] > 0.5
    latents = [(h, i) for h in spliced for i in range(D_SAE)]
    alone = exact_latent_effects(model, spliced, batch, latents, True).numpy()
    np.testing.assert_allclose(
        np.concatenate([mags.latent_effect[h] for h in spliced], 1), np.abs(alone), atol=1e-9)
