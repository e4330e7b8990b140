"""Integrated gradients as a second node estimator: AtP at one step, exact where the model is
linear, complete per site, ig.h5's round trip, and the summary's estimator comparison."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from saeflow.patch.attribution import read_atp, run_atp
from saeflow.patch.estimators import estimate_stage
from saeflow.patch.exhaustive import exhaustive_patching
from saeflow.patch.ig import ig_alphas, run_ig
from saeflow.patch.pairs import logit_diff
from saeflow.patch.splice import PatchRun, prepare_saes, run_spliced
from saeflow.patch.summary import estimator_comparison
from saeflow.testing.fixtures import patch_config, random_pair_batch
from tests.patch.test_attribution import make_model, make_saes

torch.set_num_threads(1)

KINDS = ("latent_effect", "latent_delta", "latent_mass", "error_effect")


def whole_site_effect(model, spliced, b, clean, base, h, with_error):
    """``[n]``: the effect of patching site ``h`` whole (latents and errors) clean into corrupted."""
    def whole_site(name, x, kind="act"):
        return getattr(clean[h], kind).clone() if name == h else x

    patched, _ = run_spliced(model, spliced, b.corrupted, with_error, whole_site,
                             lambda n, x: whole_site(n, x, "res"))
    return (logit_diff(patched, b.clean_answer, b.corrupted_answer) - base).detach().numpy()


@pytest.fixture(scope="module")
def setup():
    model = make_model(dtype=torch.float64)
    spliced = prepare_saes(model, make_saes(model))
    batches = [random_pair_batch(4, 6, [2], seed=3), random_pair_batch(3, 8, [5], seed=4)]
    return model, spliced, batches


def site_total(result, hook: str) -> np.ndarray:
    """``[n]``: the sum of one site's node effects (latents, and errors at every position)."""
    errors = result.error_effect.get(hook)
    return result.latent_effect[hook].sum(1) + (0 if errors is None else np.nansum(errors, 1))


@pytest.mark.parametrize("with_error", [True, False])
def test_one_step_is_atp_and_stacking_changes_nothing(setup, with_error):
    # alpha_0 = 0: a single point is the gradient at the corrupted run, i.e. AtP, exactly
    model, spliced, batches = setup
    assert ig_alphas(1) == [0.0] and ig_alphas(4) == [0.0, 0.25, 0.5, 0.75]
    atp = run_atp(model, spliced, batches, with_error)
    ig = run_ig(model, spliced, batches, with_error, steps=1)
    np.testing.assert_array_equal(ig.pair_ids, atp.pair_ids)
    np.testing.assert_allclose(ig.clean, atp.clean, atol=1e-12)
    for kind in KINDS:
        assert set(getattr(ig, kind)) == set(getattr(atp, kind))
        for h, arr in getattr(atp, kind).items():
            np.testing.assert_allclose(getattr(ig, kind)[h], arr, atol=1e-12)
    # the (site, alpha) copies per pass: one per pass (max_batch = the batch) or all at once
    few, many = (run_ig(model, spliced, batches, with_error, 5, max_batch=m) for m in (4, 1000))
    for kind in KINDS:
        for h, arr in getattr(few, kind).items():
            np.testing.assert_allclose(getattr(many, kind)[h], arr, atol=1e-12)
    assert np.abs(few.latent_effect["blocks.0.hook_resid_post"]
                  - atp.latent_effect["blocks.0.hook_resid_post"]).max() > 1e-3


def test_ig_is_exact_where_the_model_is_linear():
    # No LayerNorm: the logits are linear in the last block's resid_post, so along the path the
    # gradient of the last SAE's nodes is constant and IG is their exact effect at any number of
    # steps (the mean over the steps, not their sum, is what keeps it so).
    model = make_model(normalization_type=None, dtype=torch.float64)
    spliced = prepare_saes(model, make_saes(model))
    batches = [random_pair_batch(3, 6, [1, 3], seed=1)]
    last, first = "blocks.1.hook_resid_post", "blocks.0.hook_resid_post"
    for with_error in (True, False):
        exact = exhaustive_patching(model, spliced, batches, with_error)
        atp = run_atp(model, spliced, batches, with_error)
        for steps in (3, 40):
            ig = run_ig(model, spliced, batches, with_error, steps)
            assert np.abs(exact.latent_effect[last]).max() > 1e-2
            np.testing.assert_allclose(ig.latent_effect[last], exact.latent_effect[last],
                                       atol=1e-9)
            if with_error:
                np.testing.assert_allclose(ig.error_effect[last], exact.error_effect[last],
                                           atol=1e-9)
        # upstream of attention and the MLP the path matters: IG is not AtP there
        assert np.abs(ig.latent_effect[first] - atp.latent_effect[first]).max() > 1e-3


@pytest.mark.parametrize("with_error", [True, False])
def test_each_site_is_complete(setup, with_error):
    # Completeness along the path: a site's IG summed over all its nodes tends, as 1 / steps
    # (a left Riemann sum), to the effect of patching the whole site at once, no other site
    # intervened on. With the error term the whole site is the hook's activation at every
    # position, so that effect is metric(clean) - metric(corrupted), at either SAE.
    model, spliced, batches = setup
    b = batches[0]
    args = (b.clean_answer, b.corrupted_answer)
    _, clean = run_spliced(model, spliced, b.clean, with_error)
    logits, _ = run_spliced(model, spliced, b.corrupted, with_error)
    base = logit_diff(logits, *args)
    atp = run_atp(model, spliced, [b], with_error)
    coarse, fine = (run_ig(model, spliced, [b], with_error, s, max_batch=512) for s in (20, 200))
    for h in spliced:
        site = whole_site_effect(model, spliced, b, clean, base, h, with_error)
        if with_error:
            np.testing.assert_allclose(site, atp.clean - atp.corrupted, atol=1e-9)
        err_fine = np.abs(site_total(fine, h) - site).max()
        err_coarse = np.abs(site_total(coarse, h) - site).max()
        assert err_fine < 0.01 * np.abs(site).max(), (h, err_fine)
        assert err_fine < err_coarse / 3, (h, err_coarse, err_fine)
        # AtP has no such axiom: on this nonlinear model its site sum is far off
        assert np.abs(site_total(atp, h) - site).max() > 20 * err_fine


def test_ig_beats_atp_where_downstream_latents_switch_on():
    # AtP reads the gradient at the corrupted run, where a latent of a downstream SAE that is
    # off (ReLU) passes none; the path sees it switch on. Sparse SAEs without the error term
    # (every downstream SAE in the path) are that case: IG is much closer to exact patching,
    # pair by pair and node by node. Not a general law: with the error term, on this fixture,
    # IG's per-node errors are no smaller than AtP's (nodes of a site interact, and IG shares
    # the interactions out while single-node patching leaves them out).
    model = make_model(dtype=torch.float64)
    saes = make_saes(model)
    with torch.no_grad():
        for sae in saes:
            sae.b_enc.fill_(-1.5)  # ~10% of latents active
    spliced = prepare_saes(model, saes)
    batches = [random_pair_batch(6, 6, [2], seed=3), random_pair_batch(6, 8, [5], seed=4)]
    exact = exhaustive_patching(model, spliced, batches, False)
    atp = run_atp(model, spliced, batches, False)
    ig = run_ig(model, spliced, batches, False, steps=32)

    def error(result):
        return sum(np.abs(result.latent_effect[h] - exact.latent_effect[h]).sum()
                   for h in spliced)

    assert max(np.abs(e).max() for e in exact.latent_effect.values()) > 0.1
    assert error(ig) < 0.5 * error(atp), (error(ig), error(atp))


def test_ig_h5_round_trip(setup, tmp_path):
    model, spliced, batches = setup
    cfg = patch_config(ig_steps=4, max_batch=8)
    run = PatchRun.build(model, list(spliced.values()), batches, cfg)
    estimate_stage(run, "ig", tmp_path / "ig.h5", {"patch": {}})
    back, (model_clean, _) = read_atp(tmp_path / "ig.h5")
    assert set(back) == {"with_error", "without_error"}
    np.testing.assert_allclose(back["with_error"].clean, model_clean, atol=1e-6)
    for mode, with_error in (("with_error", True), ("without_error", False)):
        ref = run_ig(model, spliced, batches, with_error, 4, max_batch=8)
        np.testing.assert_array_equal(back[mode].pair_ids, ref.pair_ids)
        for kind in KINDS:
            assert set(getattr(back[mode], kind)) == set(getattr(ref, kind))
            for h, arr in getattr(ref, kind).items():  # stored as float32
                np.testing.assert_allclose(getattr(back[mode], kind)[h], arr, rtol=1e-5,
                                           atol=1e-6)
    import h5py

    with h5py.File(tmp_path / "ig.h5") as f:
        provenance = json.loads(f.attrs["provenance"])
    assert provenance["config"]["estimator"]["name"] == "ig"
    assert provenance["config"]["estimator"]["steps"] == 4


def test_estimator_table_names_the_winner_of_each_column():
    def vs(recall, rho, fn, err, site_rho, sign=1.0):
        return {"m": {"at_k": [{"k": 5, "recall": recall}], "spearman_active_latents": rho,
                      "false_negatives": fn, "relative_l1_error": err,
                      "sign_agreement_real": sign, "gate": {"verdict": "pass"},
                      "by_site": {s: {"spearman_active_latents": r, "relative_l1_error": err,
                                      "n_active_latents": 3} for s, r in site_rho.items()}}}

    table = estimator_comparison({"atp": vs(0.5, 0.9, 3, 0.2, {"a": 0.9, "b": 0.4}),
                                  "ig": vs(0.7, None, 3, 0.1, {"a": 0.5, "b": None}, 0.5)})
    rows = table["m"]["rows"]
    assert [r["estimator"] for r in rows] == ["atp", "ig"] and rows[1]["recall@5"] == 0.7
    assert table["m"]["best"] == {"recall@5": ["ig"], "spearman_active_latents": ["atp"],
                                  "sign_agreement_real": ["atp"],
                                  "false_negatives": ["atp", "ig"], "relative_l1_error": ["ig"]}
    assert table["m"]["gate"] == {"atp": "pass", "ig": "pass"}
    by_site = table["m"]["by_site"]
    assert by_site["a"]["spearman_active_latents"] == {"atp": 0.9, "ig": 0.5}
    assert by_site["a"]["best"] == ["atp"] and by_site["b"]["best"] == ["atp"]


def test_summary_judges_both_estimators(setup, tmp_path):
    from saeflow.patch.exhaustive import exact_stage
    from saeflow.patch.faithfulness import verify_stage
    from saeflow.patch.resid import run_resid_patching, write_resid
    from saeflow.patch.summary import SummaryInputs, summary_stage

    model, spliced, batches = setup
    saes = list(spliced.values())
    cfg = patch_config(n_bootstrap=20, top_k=4, n_random=3, faithfulness_n=(1, 3),
                       faithfulness_random=1, ig_steps=4, estimators=("atp", "ig"))
    p = {n: tmp_path / n for n in ("resid.h5", "atp.h5", "ig.h5", "exact.h5", "verify.json",
                                   "faithfulness.json", "top.json", "summary.json",
                                   "summary_no_exact.json")}
    write_resid(p["resid.h5"], run_resid_patching(model, batches, cfg), {"patch": {}})
    run = PatchRun.build(model, saes, batches, cfg)
    estimate_stage(run, "atp", p["atp.h5"], {"patch": {}})
    estimate_stage(run, "ig", p["ig.h5"], {"patch": {}})
    exact_stage(run, p["exact.h5"], {"patch": {}})
    verify_stage(run, p["atp.h5"], {}, p["verify.json"], p["faithfulness.json"], p["top.json"])
    inputs = SummaryInputs(p["resid.h5"], {"atp": p["atp.h5"], "ig": p["ig.h5"]},
                           p["verify.json"], p["faithfulness.json"], exact=p["exact.h5"])
    summary_stage(inputs, cfg, p["summary.json"], {"patch": {}})
    s = json.loads(p["summary.json"].read_text())
    assert s["estimators"] == ["atp", "ig"]
    for mode in ("with_error", "without_error"):
        ig, atp = s["ig_vs_exhaustive"][mode], s["atp_vs_exhaustive"][mode]
        assert ig["n_nodes"] == atp["n_nodes"] and ig["threshold"] == atp["threshold"]
        assert "sampled_check" in atp and "sampled_check" not in ig  # verify sampled AtP only
        assert 0 <= ig["relative_l1_error"] < 1
        table = s["estimator_comparison"][mode]
        assert [r["estimator"] for r in table["rows"]] == ["atp", "ig"]
        assert table["rows"][1]["false_negatives"] == ig["false_negatives"]
        assert set(table["best"]) >= {"spearman_active_latents", "false_negatives",
                                      "relative_l1_error", f"recall@{cfg.exhaustive_k[0]}"}
        assert all(set(names) <= {"atp", "ig"} for names in table["best"].values())
    # without the exhaustive reference IG is compared with AtP
    summary_stage(replace(inputs, exact=None), cfg, p["summary_no_exact.json"], {"patch": {}})
    s = json.loads(p["summary_no_exact.json"].read_text())
    assert "estimator_comparison" not in s and "ig_vs_exhaustive" not in s
    assert s["ig_vs_atp"]["with_error"]["spearman_active_latents"] > 0.5


@pytest.mark.parametrize("sites", ["attn-mlp-resid", "transcoder"])
def test_attention_and_mlp_sites_are_complete_too(sites):
    """hook_z (heads flattened), MLP-output and transcoder sites: each site's IG sums, as steps grow, to
    the effect of patching that whole site (latents and errors) clean into corrupted, which
    for a site inside a block is not the whole clean-corrupted gap."""
    from tests.patch.test_attribution import SITE_SETS

    model = make_model(dtype=torch.float64)
    spliced = prepare_saes(model, make_saes(model, SITE_SETS[sites]))
    b = random_pair_batch(4, 6, [2], seed=3)
    args = (b.clean_answer, b.corrupted_answer)
    _, clean = run_spliced(model, spliced, b.clean, True)
    logits, _ = run_spliced(model, spliced, b.corrupted, True)
    base = logit_diff(logits, *args)
    fine = run_ig(model, spliced, [b], True, 200, max_batch=512)
    for h in spliced:
        site = whole_site_effect(model, spliced, b, clean, base, h, True)
        assert np.abs(site).max() > 1e-3, h
        assert np.abs(site_total(fine, h) - site).max() < 0.01 * np.abs(site).max(), h
