"""Exhaustive exact patching: every latent and error node, equal to patching them one by one,
and AtP judged against it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saeflow.patch.attribution import exact_latent_effects, run_atp
from saeflow.patch.splice import prepare_saes, run_spliced
from saeflow.patch.exhaustive import (compare_with_exact, exhaustive_patching, read_exact,
                                      write_exact)
from saeflow.patch.pairs import logit_diff
from saeflow.testing.fixtures import random_pair_batch
from tests.patch.test_attribution import D_SAE, SITE_SETS, make_model, make_saes

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup():
    model = make_model(dtype=torch.float64)
    spliced = prepare_saes(model, make_saes(model))
    batches = [random_pair_batch(4, 6, [2], seed=3), random_pair_batch(3, 8, [5], seed=4)]
    return model, spliced, batches


def assert_every_latent_is_patching_it_alone(model, spliced, batches, with_error, max_batch=5):
    """Exhaustive latent effects equal patching each latent alone, from the tokens up."""
    result = exhaustive_patching(model, spliced, batches, with_error, max_batch=max_batch)
    latents = [(h, i) for h in spliced for i in range(D_SAE)]
    alone = np.concatenate([exact_latent_effects(model, spliced, b, latents, with_error).numpy()
                            for b in batches])
    ours = np.concatenate([result.latent_effect[h] for h in spliced], axis=1)
    assert np.abs(ours).max() > 1e-2
    np.testing.assert_allclose(ours, alone, atol=1e-9)
    return result


@pytest.mark.parametrize("with_error", [True, False])
def test_every_latent_equals_patching_it_alone(setup, with_error):
    model, spliced, batches = setup
    result = assert_every_latent_is_patching_it_alone(model, spliced, batches, with_error)
    # only nodes that differ were run: fewer rows than pairs x latents
    assert 0 < result.n_run < 7 * (2 * D_SAE + (14 if with_error else 0))


@pytest.mark.parametrize("hooks", [["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"],
                                   ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"]])
def test_runs_resumed_at_the_site_equal_full_runs(setup, hooks, monkeypatch):
    """Residual sites start their patched runs at their own layer; the result is the full run's
    (every node patched alone, from the tokens up), and no full run is needed."""
    import saeflow.patch.exhaustive as exhaustive

    model, _, batches = setup
    spliced = prepare_saes(model, make_saes(model, hooks))

    def no_full_run(*args, **kwargs):
        raise AssertionError("a residual site fell back to a full forward pass")

    monkeypatch.setattr(exhaustive, "_full_run", no_full_run)
    for with_error in (True, False):
        assert_every_latent_is_patching_it_alone(model, spliced, batches, with_error)
    from saeflow.core.hooks import resume_layer

    assert resume_layer("blocks.3.hook_resid_post") == 4
    assert resume_layer("blocks.3.hook_resid_pre") == 3
    assert resume_layer("blocks.3.attn.hook_z") is None


@pytest.mark.parametrize("sites", ["attn-mlp-resid", "transcoder"])
@pytest.mark.parametrize("with_error", [True, False])
def test_attention_and_mlp_sites_equal_patching_each_node_alone(setup, with_error, sites):
    """hook_z (heads flattened), MLP-output SAEs and transcoders: patched from the tokens up,
    each latent and each error node equals patching it alone."""
    model, _, batches = setup
    spliced = prepare_saes(model, make_saes(model, SITE_SETS[sites]))
    b = batches[0]
    result = exhaustive_patching(model, spliced, [b], with_error, max_batch=16)
    latents = [(h, i) for h in spliced for i in range(D_SAE)]
    alone = exact_latent_effects(model, spliced, b, latents, with_error).numpy()
    ours = np.concatenate([result.latent_effect[h] for h in spliced], axis=1)
    assert all(np.abs(result.latent_effect[h]).max() > 1e-3 for h in spliced)
    np.testing.assert_allclose(ours, alone, atol=1e-9)
    if with_error:
        _, clean = run_spliced(model, spliced, b.clean, True)
        logits, _ = run_spliced(model, spliced, b.corrupted, True)
        args = (b.clean_answer, b.corrupted_answer)
        pos = b.length - 1
        for hook in ("blocks.0.attn.hook_z", SITE_SETS[sites][1]):
            def edit(name, err, hook=hook):
                if name == hook:
                    err = err.clone()
                    err[:, pos] = clean[hook].res[:, pos]  # one vector: all heads, or d_out
                return err

            patched, _ = run_spliced(model, spliced, b.corrupted, True, edit_error=edit)
            expected = (logit_diff(patched, *args) - logit_diff(logits, *args)).detach().numpy()
            assert clean[hook].res.shape[-1] == 32 and np.abs(expected).max() > 1e-3
            np.testing.assert_allclose(result.error_effect[hook][:, -1], expected, atol=1e-9)


def test_every_error_node_equals_patching_it_alone(setup):
    model, spliced, batches = setup
    result = exhaustive_patching(model, spliced, batches, True, max_batch=7)
    b = batches[1]  # pairs 4..6, length 8 = P: columns are token positions
    _, clean = run_spliced(model, spliced, b.clean, True)
    logits, _ = run_spliced(model, spliced, b.corrupted, True)
    args = (b.clean_answer, b.corrupted_answer)
    base = logit_diff(logits, *args)
    for hook in spliced:
        for pos in range(b.length):
            def edit(name, err, pos=pos, hook=hook):
                if name == hook:
                    err = err.clone()
                    err[:, pos] = clean[hook].res[:, pos]
                return err

            patched, _ = run_spliced(model, spliced, b.corrupted, True, edit_error=edit)
            expected = (logit_diff(patched, *args) - base).detach().numpy()
            np.testing.assert_allclose(result.error_effect[hook][4:, pos], expected, atol=1e-9)
    # the first batch is 6 tokens long: its two leftmost columns are absent
    assert np.isnan(result.error_effect[hook][:4, :2]).all()
    assert not np.isnan(result.error_effect[hook][:4, 2:]).any()


def test_round_trip_and_comparison(setup, tmp_path):
    model, spliced, batches = setup
    exact = {m: exhaustive_patching(model, spliced, batches, we)
             for m, we in (("with_error", True), ("without_error", False))}
    write_exact(tmp_path / "exact.h5", exact, {"patch": {}})
    back = read_exact(tmp_path / "exact.h5")
    for mode, r in exact.items():
        for h in spliced:
            np.testing.assert_array_equal(back[mode].latent_effect[h], r.latent_effect[h])
        assert back[mode].n_run == r.n_run
        # what the reference cost, per (pair, node) row and against one forward pass
        assert back[mode].cost == pytest.approx(r.cost)
        assert r.cost["rows_per_pair"] == pytest.approx(r.n_run / 7)
        assert r.cost["seconds_per_row"] > 0 and r.cost["forward_seconds_per_prompt"] > 0
        assert r.cost["row_cost_forwards"] == pytest.approx(
            r.cost["seconds_per_row"] / r.cost["forward_seconds_per_prompt"])
    atp = run_atp(model, spliced, batches, True)
    out = compare_with_exact(atp, back["with_error"], ks=[1, 5, 200], top_k=5, threshold=0.01)
    assert out["n_nodes"] == 2 * D_SAE + 2 * 8 and out["n_latents"] == 2 * D_SAE
    assert [a["k"] for a in out["at_k"]] == [1, 5, out["n_nodes"]]  # k capped at the nodes
    assert out["at_k"][-1]["recall"] == 1.0  # every node is in the top of all of them
    assert out["spearman_all_latents"] > 0.5
    # the exact results compared with themselves: perfect on every count
    self_check = compare_with_exact(back["with_error"], back["with_error"], ks=[5], top_k=5,
                                    threshold=0.01)
    assert self_check["spearman_all_nodes"] == pytest.approx(1.0)
    assert self_check["at_k"][0]["overlap_with_exact_top"] == 1.0
    real = self_check["n_real_latents"]
    assert self_check["false_negatives"] == max(0, real - 5)
    # per site: perfect against itself; AtP's site rows are its own numbers over that site
    assert list(self_check["by_site"]) == list(spliced)
    assert all(row["spearman_active_latents"] == pytest.approx(1.0)
               and row["relative_l1_error"] == 0 for row in self_check["by_site"].values())
    from scipy.stats import spearmanr

    h = "blocks.1.hook_resid_post"
    moving = np.abs(atp.latent_delta[h]).sum(0) > 0
    own = spearmanr(atp.latent_effect[h].mean(0)[moving],
                    back["with_error"].latent_effect[h].mean(0)[moving]).statistic
    assert out["by_site"][h]["spearman_active_latents"] == pytest.approx(own)
    assert out["by_site"][h]["n_active_latents"] == int(moving.sum())


@pytest.mark.parametrize("with_error", [True, False])
def test_a_batch_of_one_pair_patches_residual_sites_as_in_a_larger_batch(setup, with_error):
    """One pair of its token length (a batch of 1) and several latents per pass: the runs that
    resume at a residual site stack copies whose layout is not contiguous; the MLP above
    needs it to be (a replicate of the toy DAG crashed here)."""
    model, spliced, batches = setup
    site = next(h for h in spliced if h.endswith("hook_resid_post") and h.startswith("blocks.0"))
    latents = [(site, i) for i in range(D_SAE)]
    together = exact_latent_effects(model, spliced, batches[0], latents, with_error).numpy()
    alone = exact_latent_effects(model, spliced, batches[0].select([True, False, False, False]),
                                 latents, with_error, max_batch=8).numpy()
    assert np.abs(alone).max() > 1e-3
    np.testing.assert_allclose(alone[0], together[0], atol=1e-10)
