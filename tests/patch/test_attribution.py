"""SAE-latent attribution patching, exact latent patching, faithfulness, and the stage outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sae_lens import (HookedSAETransformer, StandardSAE, StandardSAEConfig, Transcoder,
                      TranscoderConfig)
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformer, HookedTransformerConfig

from saeflow.patch.attribution import (exact_latent_effects, rank_nodes, read_atp, run_atp,
                                       verify_atp)
from saeflow.core.errors import InputError
from saeflow.patch.estimators import estimate_stage
from saeflow.patch.faithfulness import faithfulness_curve, node_means, verify_stage
from saeflow.patch.summary import SummaryInputs, summary_stage
from saeflow.testing.fixtures import patch_config, patch_run, random_pair_batch
from saeflow.patch.pairs import logit_diff
from saeflow.patch.resid import run_resid_patching, write_resid
from saeflow.patch.splice import PatchRun, prepare_saes, run_spliced
from saeflow.patch.plots import (plot_faithfulness_stage, plot_latent_activations_stage,
                                 plot_resid_patching_stage, plot_top_latents_stage)

torch.set_num_threads(1)


D_SAE = 24


def make_model(normalization_type: str | None = "LN",
               dtype: torch.dtype = torch.float32) -> HookedSAETransformer:
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_vocab=50,
                                  n_ctx=16, act_fn="gelu", seed=0,
                                  normalization_type=normalization_type, dtype=dtype)
    return HookedSAETransformer(cfg).eval()


def make_saes(model: HookedSAETransformer, hooks: list[str] | None = None) -> list[StandardSAE]:
    """One SAE per hook; a hook ``blocks.L.ln2.hook_normalized`` gets a sae-lens transcoder
    to ``blocks.L.hook_mlp_out`` (the MLP's input to its output)."""
    saes = []
    dtype = str(model.cfg.dtype).split(".")[-1]
    for layer, hook in enumerate(hooks or [f"blocks.{i}.hook_resid_post" for i in range(2)]):
        torch.manual_seed(100 + layer)
        if hook.endswith("ln2.hook_normalized"):
            out = hook.replace("ln2.hook_normalized", "hook_mlp_out")
            tc = Transcoder(TranscoderConfig(d_in=32, d_out=32, d_sae=D_SAE, dtype=dtype,
                                             apply_b_dec_to_input=False,
                                             metadata=SAEMetadata(hook_name=hook,
                                                                  hook_name_out=out)))
            with torch.no_grad():  # kaiming rows are ~30x an MLP output's scale here
                tc.W_dec.mul_(0.05)
            saes.append(tc)
            continue
        cfg = StandardSAEConfig(d_in=32, d_sae=D_SAE, dtype=dtype,
                                reshape_activations="hook_z" if hook.endswith("hook_z") else "none",
                                metadata=SAEMetadata(hook_name=hook))
        saes.append(StandardSAE(cfg))
    return saes




@pytest.fixture(scope="module")
def model() -> HookedSAETransformer:
    return make_model()


def test_splice_with_error_term_reproduces_the_model(model: HookedSAETransformer) -> None:
    saes = make_saes(model)
    spliced = prepare_saes(model, saes)
    batch = random_pair_batch(4, 6, [2], seed=0)
    for tokens in (batch.clean, batch.corrupted):
        plain = model(tokens)
        ours, nodes = run_spliced(model, spliced, tokens, with_error=True)
        ld = logit_diff(ours, batch.clean_answer, batch.corrupted_answer)
        ref = logit_diff(plain, batch.clean_answer, batch.corrupted_answer)
        assert torch.allclose(ld, ref, atol=1e-4)
        assert nodes["blocks.0.hook_resid_post"].res.shape == (4, 6, 32)
        # Without the error term our splice is sae-lens's, and it is a different model.
        no_err, _ = run_spliced(model, spliced, tokens, with_error=False)
        lens = model.run_with_saes(tokens, saes=saes, use_error_term=False)
        assert torch.allclose(no_err, lens, atol=1e-5)
        assert (no_err - plain).abs().max() > 1e-2
    assert not model.acts_to_saes  # the splice is undone after each run


@pytest.mark.parametrize("jumprelu", [False, True])
def test_a_transcoder_splices_like_sae_lens_and_its_error_restores_the_model(jumprelu) -> None:
    """A transcoder reads the MLP's input and writes its output: without the error term our
    splice is sae-lens's own (``run_with_saes``); with it, the model exactly, the error node
    ``d_out`` wide at the output hook, the latents read from the input hook. Also for
    Gemma Scope's architecture (``JumpReLUTranscoder``, thresholds that switch latents off)."""
    from sae_lens import JumpReLUTranscoder, JumpReLUTranscoderConfig

    model = make_model(dtype=torch.float64)
    saes = make_saes(model, SITE_SETS["transcoder"])
    if jumprelu:
        plain_tc = saes[2]
        jump = JumpReLUTranscoder(JumpReLUTranscoderConfig(
            d_in=32, d_out=32, d_sae=D_SAE, dtype="float64", apply_b_dec_to_input=False,
            metadata=plain_tc.cfg.metadata))
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(jump, name).copy_(getattr(plain_tc, name))
            jump.threshold.fill_(0.3)
        saes[2] = jump.eval()
    spliced = prepare_saes(model, saes)
    tc = spliced["blocks.1.ln2.hook_normalized"]
    batch = random_pair_batch(4, 6, [2], seed=0)
    plain, cache = model.run_with_cache(batch.clean)
    ours, nodes = run_spliced(model, spliced, batch.clean, with_error=True)
    assert torch.allclose(ours, plain, atol=1e-10)
    assert torch.allclose(nodes["blocks.1.ln2.hook_normalized"].act,
                          tc.encode(cache["blocks.1.ln2.hook_normalized"]), atol=1e-10)
    err = cache["blocks.1.hook_mlp_out"] - tc.decode(tc.encode(cache["blocks.1.ln2.hook_normalized"]))
    assert torch.allclose(nodes["blocks.1.ln2.hook_normalized"].res, err, atol=1e-10)
    no_err, _ = run_spliced(model, spliced, batch.clean, with_error=False)
    lens = model.run_with_saes(batch.clean, saes=saes, use_error_term=False)
    assert torch.allclose(no_err, lens, atol=1e-12) and (no_err - plain).abs().max() > 1e-1
    assert not model.acts_to_saes
    if jumprelu:  # the thresholds switch some of the plain ReLU's latents off
        f = nodes["blocks.1.ln2.hook_normalized"].act
        assert ((f == 0) & (plain_tc.encode(cache["blocks.1.ln2.hook_normalized"]) > 0)).any()
    with pytest.raises(InputError, match="blocks.1.hook_mlp_out.*written by two sites"):
        prepare_saes(model, saes + make_saes(model, ["blocks.1.hook_mlp_out"]))
    with pytest.raises(InputError, match="blocks.1.hook_mlp_out.*written by two sites"):
        prepare_saes(model, make_saes(model, ["blocks.1.hook_mlp_out"]) + [saes[2]])
    from sae_lens import SkipTranscoder, SkipTranscoderConfig

    skip = SkipTranscoder(SkipTranscoderConfig(d_in=32, d_out=32, d_sae=D_SAE, dtype="float64",
                                               apply_b_dec_to_input=False,
                                               metadata=saes[2].cfg.metadata))
    with pytest.raises(InputError, match="skip transcoders are not supported"):
        prepare_saes(model, [skip])


def test_atp_is_exact_where_the_model_is_linear() -> None:
    # No LayerNorm: logits are linear in the last block's resid_post, so for its latents and
    # error nodes first-order attribution is exact.
    model = make_model(normalization_type=None)
    spliced = prepare_saes(model, make_saes(model))
    batch = random_pair_batch(3, 6, [1, 3], seed=1)
    last = "blocks.1.hook_resid_post"
    atps = {we: run_atp(model, spliced, [batch], we) for we in (True, False)}
    for with_error, atp in atps.items():
        latents = [(last, i) for i in range(D_SAE)]
        exact = exact_latent_effects(model, spliced, batch, latents, with_error, max_batch=16)
        assert np.abs(atp.latent_effect[last]).max() > 1e-2
        assert np.allclose(atp.latent_effect[last], exact.numpy(), atol=1e-4)
    _, clean = run_spliced(model, spliced, batch.clean, True)
    logits, _ = run_spliced(model, spliced, batch.corrupted, True)

    def patch_final_error(hook: str, err: torch.Tensor) -> torch.Tensor:
        if hook == last:
            err = err.clone()
            err[:, -1] = clean[last].res[:, -1]
        return err

    patched, _ = run_spliced(model, spliced, batch.corrupted, True, edit_error=patch_final_error)
    args = (batch.clean_answer, batch.corrupted_answer)
    exact_err = (logit_diff(patched, *args) - logit_diff(logits, *args)).detach().cpu().numpy()
    assert np.abs(exact_err).max() > 1e-3
    assert np.allclose(atps[True].error_effect[last][:, -1], exact_err, atol=1e-4)


# SAE sites beyond the residual stream: attention output (hook_z, as Gemma Scope's attention
# SAEs are trained: heads x d_head flattened) and MLP output, mixed with a residual site.
# Transcoders (MLP input -> MLP output) at both MLPs, keyed by the hook they read.
SITE_SETS = {"resid": None,
             "attn-mlp-resid": ["blocks.0.attn.hook_z", "blocks.0.hook_mlp_out",
                                "blocks.1.attn.hook_z", "blocks.1.hook_resid_post"],
             "transcoder": ["blocks.0.attn.hook_z", "blocks.0.ln2.hook_normalized",
                            "blocks.1.ln2.hook_normalized", "blocks.1.hook_resid_post"]}


@pytest.mark.parametrize("sites", list(SITE_SETS))
@pytest.mark.parametrize("with_error", [True, False])
def test_atp_is_the_small_patch_limit_of_exact_patching(with_error: bool, sites: str) -> None:
    # d(exact effect)/d(alpha) at alpha = 0 is AtP. For layer-0 latents this holds only if the
    # gradient passes the downstream SAE exactly as the patched forward pass does (identity
    # with the error term, the SAE itself without), which is what this test pins down.
    model = make_model(dtype=torch.float64)
    spliced = prepare_saes(model, make_saes(model, SITE_SETS[sites]))
    batch = random_pair_batch(3, 6, [2], seed=2)
    latents = [(h, i) for h in spliced for i in range(D_SAE)]
    atp = run_atp(model, spliced, [batch], with_error)
    alpha = 1e-5
    exact = exact_latent_effects(model, spliced, batch, latents, with_error, alpha=alpha) / alpha
    ours = np.concatenate([atp.latent_effect[h] for h in spliced], axis=1)
    assert np.abs(ours).max() > 1e-2
    assert np.allclose(ours, exact.numpy(), rtol=1e-3, atol=1e-6)


def test_atp_ranks_latents_like_exact_patching(model: HookedSAETransformer) -> None:
    spliced = prepare_saes(model, make_saes(model))
    batches = [random_pair_batch(4, 6, [2], seed=3), random_pair_batch(3, 8, [5], seed=4)]
    cfg = patch_config(top_k=8, n_random=6, seed=0)
    for with_error in (True, False):
        atp = run_atp(model, spliced, batches, with_error, max_batch=3)
        out = verify_atp(model, spliced, batches, atp, cfg)
        assert out["top_k"] == 8 and len(out["random"]) == 6
        assert out["spearman"] > 0, out
        assert [r["latent"] for r in out["random"]] == \
            [r["latent"] for r in verify_atp(model, spliced, batches, atp, cfg)["random"]]
        top = [abs(r["atp"]) for r in out["top"]]
        assert top == sorted(top, reverse=True)
        assert min(top) >= max(abs(r["atp"]) for r in out["random"])
        everything = verify_atp(model, spliced, batches, atp, patch_config(top_k=2 * D_SAE))
        assert everything["random"] == [] and everything["false_negatives"] == 0
        assert everything["miss_rate_ci95"] is None  # nothing sampled: no rate to bound
        # the miss rate's interval is scipy's exact binomial one over the sampled latents
        from scipy.stats import binomtest

        k, n = out["false_negatives"], len(out["random"])
        ci = binomtest(k, n).proportion_ci(0.95, "exact")
        assert out["miss_rate"] == k / n and out["miss_rate_ci95"] == [ci.low, ci.high]
        assert out["missed_latents_upper95"] == pytest.approx(
            ci.high * (out["n_candidates"] - out["top_k"]))
        if k == 0:  # 0 of 6 still allows a miss rate near 40%
            assert out["miss_rate_ci95"][1] > 0.35


def test_faithfulness_endpoints(model: HookedSAETransformer) -> None:
    spliced = prepare_saes(model, make_saes(model))
    batch = random_pair_batch(4, 6, [3], seed=5)
    atp = run_atp(model, spliced, [batch], True)
    ranking = [node for node, _ in rank_nodes(atp)]
    assert len(ranking) == 2 * D_SAE + 2 * 6  # latents + one error node per hook x position
    run = patch_run(model, spliced, [batch], max_batch=5, n_bootstrap=0)
    means = node_means(run, True)
    _, cache = model.run_with_cache(torch.cat([batch.clean, batch.corrupted]))
    first = spliced["blocks.0.hook_resid_post"]
    assert torch.allclose(means["blocks.0.hook_resid_post"].act,
                          first.encode(cache["blocks.0.hook_resid_post"]).mean(0), atol=1e-5)
    out = faithfulness_curve(run, ranking, [1, 5, 10**6], means, True)
    model_ld = logit_diff(model(batch.clean), batch.clean_answer, batch.corrupted_answer)
    assert out["F_model"] == pytest.approx(model_ld.mean().item(), abs=1e-4)
    # With every node ablated the last residual stream is the same constant for every prompt.
    last, sae = "blocks.1.hook_resid_post", spliced["blocks.1.hook_resid_post"]
    resid = sae.decode(means[last].act) + means[last].res
    logits = model.unembed(model.ln_final(resid[None])).expand(4, -1, -1)
    empty = logit_diff(logits, batch.clean_answer, batch.corrupted_answer).mean().item()
    assert out["F_empty"] == pytest.approx(empty, abs=1e-4)
    assert [p["n"] for p in out["curve"]] == [1, 5, len(ranking)]
    assert out["curve"][-1]["faithfulness"] == pytest.approx(1.0)
    assert out["curve"][-1]["completeness"] == pytest.approx(0.0, abs=1e-6)

    # m(M) is the model itself in both modes: without the error term keeping every node is
    # the SAE-reconstructed model, so faithfulness at all nodes is not 1 by construction.
    means_no_err = node_means(run, False)
    atp_no_err = run_atp(model, spliced, [batch], False)
    order = [node for node, _ in rank_nodes(atp_no_err)]
    rng = np.random.default_rng(0)
    shuffles = [[order[j] for j in rng.permutation(len(order))] for _ in range(3)]
    no_err = faithfulness_curve(patch_run(model, spliced, [batch], max_batch=5, n_bootstrap=200,
                                          seed=0), order, [1, 5, 10**6], means_no_err, False,
                                shuffles)
    assert no_err["F_model"] == pytest.approx(out["F_model"])
    assert no_err["faithfulness_all_nodes"] == pytest.approx(
        (no_err["F_all_nodes"] - no_err["F_empty"]) / (no_err["F_model"] - no_err["F_empty"]))
    assert abs(no_err["faithfulness_all_nodes"] - 1) > 1e-3
    for point in no_err["curve"]:
        lo, hi = point["faithfulness_ci95"]
        assert lo <= point["faithfulness"] <= hi
        assert "random_faithfulness_mean" in point
    # every random order keeps the same node set at n = all: the same F as the ranking
    assert no_err["curve"][-1]["random_faithfulness_range"] == pytest.approx(
        [no_err["curve"][-1]["faithfulness"]] * 2)


@pytest.mark.parametrize("hook, match", [
    ("blocks.5.hook_resid_post", r"sae: blocks\.5\.hook_resid_post: the model has no such hook"),
    (None, r"sae: cfg\.metadata\.hook_name: not set"),
])
def test_missing_hook_is_one_clear_error_and_no_output(model: HookedSAETransformer, tmp_path,
                                                       hook: str | None, match: str) -> None:
    saes = make_saes(model, ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"])
    saes[1].cfg.metadata.hook_name = hook
    out = tmp_path / "atp.h5"
    with pytest.raises(InputError, match=match) as err:
        run = PatchRun.build(model, saes, [random_pair_batch(2, 5, [1], seed=6)], patch_config())
        estimate_stage(run, "atp", out)
    assert "\n" not in str(err.value)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_stage_outputs_end_to_end(model: HookedSAETransformer, tmp_path) -> None:
    # The rules load a plain HookedTransformer; the stages splice SAEs into a copy sharing
    # its weights.
    model = HookedTransformer(model.cfg).eval()
    batches = [random_pair_batch(3, 5, [1], seed=7), random_pair_batch(3, 7, [2, 4], seed=8)]
    saes = make_saes(model)
    cfg = patch_config(n_bootstrap=50, top_k=4, n_random=3, faithfulness_n=(1, 3, 10))
    p = {name: tmp_path / name for name in ("resid.h5", "atp.h5", "verify.json",
                                            "faithfulness.json", "top_latents.json",
                                            "truth.json", "summary.json")}
    write_resid(p["resid.h5"], run_resid_patching(model, batches, cfg), {"patch": {}})
    run = PatchRun.build(model, saes, batches, cfg)
    estimate_stage(run, "atp", p["atp.h5"], {"patch": {}})
    atps, (model_clean, _) = read_atp(p["atp.h5"])
    assert set(atps) == {"with_error", "without_error"}
    assert np.allclose(atps["with_error"].clean, model_clean, atol=1e-4)
    assert atps["with_error"].error_effect and not atps["without_error"].error_effect

    # A stale atp.h5 (other pairs) is refused before any of the three outputs is written.
    with pytest.raises(InputError, match="pair_id"):
        verify_stage(PatchRun.build(model, saes, batches[:1], cfg), p["atp.h5"], {},
                     p["verify.json"], p["faithfulness.json"], p["top_latents.json"])
    assert not p["verify.json"].exists() and not p["faithfulness.json"].exists()

    verify_stage(run, p["atp.h5"],
                 {"blocks.0.hook_resid_post": {i: f"latent {i}" for i in range(D_SAE)}},
                 p["verify.json"], p["faithfulness.json"], p["top_latents.json"])
    top = json.loads(p["top_latents.json"].read_text())
    assert len(top["latents"]) == 4 and top["position_offsets"][-1] == -1
    for rec in top["latents"]:
        assert (rec["description"] is not None) == (rec["hook"] == "blocks.0.hook_resid_post")
        assert len(rec["activation"]["clean"]) == 6  # pairs
        assert rec["activation"]["clean"][0][:2] == [None, None]  # short prompt, left of start

    truth = {"pairs": [{"pair_id": pid, "length": b.length,
                        "diff_positions": [i for i in range(b.length)
                                           if b.clean[j, i] != b.corrupted[j, i]]}
                       for b in batches for j, pid in enumerate(b.pair_ids)]}
    p["truth.json"].write_text(json.dumps(truth))
    from saeflow.patch.exhaustive import exact_stage

    exact_stage(run, tmp_path / "exact.h5", {"patch": {}})
    from saeflow.patch.circuit import circuit_stage
    from saeflow.patch.plots import plot_circuit_stage

    circuit_stage(run, p["atp.h5"], {}, tmp_path / "circuit.json", {"patch": {}})
    circuit = json.loads((tmp_path / "circuit.json").read_text())
    ids = {n["id"] for n in circuit["nodes"]}
    assert ids and all(e["source"] in ids and (e["target"] in ids or e["target"] == "metric")
                       for e in circuit["edges"])
    assert all(abs(n["score"]) >= circuit["node_threshold"] for n in circuit["nodes"])
    assert all(abs(e["score"]) >= circuit["edge_threshold"] for e in circuit["edges"])
    assert circuit["edge_check"]["n_checked"] == min(
        cfg.circuit["n_check_edges"], sum(e["target"] != "metric" for e in circuit["edges"]))
    by_edges = circuit["edge_pruned"]
    assert by_edges["n_edges_kept"] == len(circuit["edges"])
    for name in ("faithfulness", "completeness"):
        lo, hi = by_edges[f"{name}_ci95"]
        assert lo <= by_edges[name] <= hi
    plot_circuit_stage(tmp_path / "circuit.json", tmp_path / "circuit.png")
    assert (tmp_path / "circuit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary_stage(SummaryInputs(p["resid.h5"], {"atp": p["atp.h5"]}, p["verify.json"],
                                p["faithfulness.json"], truth=p["truth.json"],
                                exact=tmp_path / "exact.h5", circuit=tmp_path / "circuit.json"),
                  cfg, p["summary.json"], {"patch": {}})
    s = json.loads(p["summary.json"].read_text())
    ld = s["logit_diff"]
    assert ld["model"]["clean"] == pytest.approx(ld["sae_with_error"]["clean"], abs=1e-4)
    assert set(ld) == {"model", "sae_with_error", "sae_without_error"}
    assert s["sae_gap_flag"] == (max(s["sae_gap"]["without_error"].values()) > 0.2)
    assert s["resid_top_cell"]["position"] < 0 and "provenance" in s
    assert [f["n"] for f in s["faithfulness"]["with_error"]] == [1, 3, 10]
    assert s["atp_vs_exact"]["with_error"]["top_k"] == 4
    # Layer 0 resid_pre is the embedding: patching the one differing token is the clean run,
    # patching any other changes nothing.
    identity = s["toy_check"]["embedding_identity"]
    assert identity["holds"] and identity["n_single_token_pairs"] == 3  # batches[0]
    assert identity["max_error_at_diff"] < 1e-4 and identity["max_effect_elsewhere"] < 1e-4
    assert s["toy_check"]["resid"][0]["chance_share"] < 0.5
    assert s["circuit"]["n_nodes"] == len(circuit["nodes"])
    # the held-out pairs may all be shorter than the longest: error nodes keep the ranking's
    # alignment (a regression: the curve once indexed them by the eval pairs' own width)
    from dataclasses import replace

    short = replace(run, batches=(batches[0],), n_positions=run.width,
                    cfg=patch_config(n_bootstrap=0))
    order = [n for n, _ in rank_nodes(atps["with_error"])]
    curve = faithfulness_curve(short, order, [1, 3], node_means(short, True), True)
    assert curve["n_pairs"] == 3
    faith = json.loads(p["faithfulness.json"].read_text())
    for mode in ("with_error", "without_error"):
        split = faith[mode]["split"]
        assert split["held_out"] and not set(split["rank_pairs"]) & set(split["eval_pairs"])
        assert len(split["rank_pairs"]) + len(split["eval_pairs"]) == 6
        assert faith[mode]["n_random_rankings"] == 5
    for mode in ("with_error", "without_error"):
        vs = s["atp_vs_exhaustive"][mode]
        assert vs["n_latents"] == 2 * D_SAE and vs["n_run"] > 0
        assert vs["n_nodes"] == 2 * D_SAE + (2 * 7 if mode == "with_error" else 0)
        assert vs["threshold"] == s["atp_vs_exact"][mode]["threshold"]
        assert set(vs["sampled_check"]) == {"true_miss_rate", "sampled_ci95", "covered",
                                            "pool_size", "n_real_in_pool", "can_tell", "why"}
        assert vs["sampled_check"]["can_tell"] == (vs["sampled_check"]["n_real_in_pool"] > 0)
        assert vs["gate"]["verdict"] in ("pass", "fail", "incomplete")

    for fn, src, name in ((plot_resid_patching_stage, "resid.h5", "resid.png"),
                          (plot_top_latents_stage, "verify.json", "top.png"),
                          (plot_faithfulness_stage, "faithfulness.json", "faith.png"),
                          (plot_latent_activations_stage, "top_latents.json", "acts.png")):
        fn(p[src], tmp_path / name)
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
