"""Category ablation with the SAE spliced in with its error term, on a tiny random model."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformer, HookedTransformerConfig

from saeflow.labels import ablation as ablation_module
from saeflow.labels.ablation import (
    IGNORE, AblationSettings, ablate_categories, ablation_losses, category_feature_sets, delta_covariance,
    eval_set_from_h5, next_token_eval, pool_draws, random_matched_set, start_layer, target_eval,
)
from saeflow.core.config import schema_defaults
from saeflow.core.errors import InputError

torch.set_num_threads(1)
HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def model_and_sae():
    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(
        n_layers=2, d_model=32, d_head=8, n_heads=4, d_vocab=50, n_ctx=16, act_fn="gelu",
        seed=0)).eval()
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=64, metadata=SAEMetadata(hook_name=HOOK))).eval()
    return model, sae


@pytest.fixture(scope="module")
def eval_set():
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 50, (6, 12), generator=generator)
    return next_token_eval(tokens, torch.tensor([12, 12, 9, 5, 12, 7]))


def own_loss(model, eval_set):
    """The model's mean next-token loss over counted positions, computed independently."""
    with torch.no_grad():
        logits = model(eval_set.tokens)
    logp = torch.log_softmax(logits.float(), -1)
    mask = eval_set.targets != IGNORE
    picked = logp.gather(-1, eval_set.targets.clamp(min=0)[..., None])[..., 0]
    return float(-(picked * mask).sum() / mask.sum())


def test_eval_sets_mark_counted_positions():
    tokens = torch.arange(12).reshape(2, 6)
    ev = next_token_eval(tokens, torch.tensor([6, 3]))
    assert ev.targets[0].tolist() == [1, 2, 3, 4, 5, IGNORE]
    assert ev.targets[1].tolist() == [7, 8, IGNORE, IGNORE, IGNORE, IGNORE]
    ans = target_eval(tokens, torch.tensor([5, 2]), torch.tensor([40, 41]))
    assert ans.n_targets == 2 and ans.targets[0, 5] == 40 and ans.targets[1, 2] == 41


def test_baseline_with_error_term_is_the_models_own_loss(model_and_sae, eval_set):
    model, sae = model_and_sae
    out = ablation_losses(model, sae, eval_set, {"none": []}, batch_size=4)
    assert out["hook_name"] == HOOK
    assert out["baseline_loss"] == pytest.approx(own_loss(model, eval_set), abs=1e-5)
    assert out["model_loss"] == pytest.approx(own_loss(model, eval_set), abs=1e-6)
    assert abs(out["sets"]["none"]["delta"]) < 1e-6
    assert out["n_targets"] == int(12 * 3 - 3 + 8 + 4 + 6)


def test_ablating_features_changes_the_loss(model_and_sae, eval_set):
    model, sae = model_and_sae
    with torch.no_grad():
        _, cache = model.run_with_cache(eval_set.tokens, names_filter=HOOK)
        firing = (sae.encode(cache[HOOK]) > 0).float().mean((0, 1))
    live = torch.nonzero(firing > 0.2)[:, 0].tolist()
    out = ablation_losses(model, sae, eval_set, {"live": live, "dead": torch.nonzero(
        firing == 0)[:, 0].tolist()}, batch_size=4)
    assert len(live) > 5
    assert abs(out["sets"]["live"]["delta"]) > 1e-3
    assert abs(out["sets"]["dead"]["delta"]) < 1e-6  # features that never fire change nothing
    assert out["sets"]["live"]["n_features"] == len(live)
    assert out["sets"]["live"]["delta_se"] > 0 and out["sets"]["dead"]["delta_se"] < 1e-7
    cov = np.array(out["delta_covariance"]["matrix"])
    assert out["delta_covariance"]["names"] == ["live", "dead"] and cov.shape == (2, 2)
    assert cov[0, 0] == pytest.approx(out["sets"]["live"]["delta_se"] ** 2)


def test_a_transcoder_is_ablated_where_it_writes(model_and_sae, eval_set):
    """A transcoder (MLP input -> MLP output) reads ``ln2.hook_normalized`` and is spliced at
    ``hook_mlp_out``: nothing ablated is the model; every latent ablated is the MLP's output
    replaced by the error plus ``b_dec``, checked against a hook of our own."""
    from sae_lens import Transcoder, TranscoderConfig

    model, _ = model_and_sae
    hook_in, hook_out = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
    torch.manual_seed(3)
    tc = Transcoder(TranscoderConfig(d_in=32, d_out=32, d_sae=64, apply_b_dec_to_input=False,
                                     metadata=SAEMetadata(hook_name=hook_in,
                                                          hook_name_out=hook_out))).eval()
    with torch.no_grad():
        tc.W_dec.mul_(0.05)
    out = ablation_losses(model, tc, eval_set, {"none": [], "all": list(range(64))},
                          batch_size=4)
    assert out["hook_name"] == hook_in
    assert out["baseline_loss"] == pytest.approx(own_loss(model, eval_set), abs=1e-5)
    seen = {}

    def keep(x, hook):
        seen["x"] = x

    def ablate_all(y, hook):
        return y - tc.decode(tc.encode(seen["x"])) + tc.b_dec

    with torch.no_grad():
        logits = model.run_with_hooks(eval_set.tokens, fwd_hooks=[(hook_in, keep),
                                                                   (hook_out, ablate_all)])
    logp = torch.log_softmax(logits.float(), -1)
    mask = eval_set.targets != IGNORE
    picked = logp.gather(-1, eval_set.targets.clamp(min=0)[..., None])[..., 0]
    expected = float(-(picked * mask).sum() / mask.sum())
    assert abs(out["sets"]["all"]["delta"]) > 1e-3
    assert out["sets"]["all"]["loss"] == pytest.approx(expected, abs=1e-5)


def test_delta_covariance_matches_a_bootstrap_over_prompts():
    """The linearised covariance of ratio-of-sums deltas agrees with resampling prompts."""
    rng = np.random.default_rng(0)
    n = 400
    counts = rng.integers(1, 6, n).astype(float)
    shared = rng.normal(0.3, 1.0, n)
    deltas = np.stack([counts * 0.1 + shared + rng.normal(0, 0.5, n),
                       counts * 0.2 + shared + rng.normal(0, 0.5, n)], axis=1)
    cov = delta_covariance(deltas, counts)
    boot = []
    for _ in range(4000):
        i = rng.integers(0, n, n)
        boot.append(deltas[i].sum(0) / counts[i].sum())
    assert cov == pytest.approx(np.cov(np.array(boot).T), rel=0.1)
    assert cov[0, 1] > 0.5 * np.sqrt(cov[0, 0] * cov[1, 1])  # same prompts: correlated
    assert np.isnan(delta_covariance(deltas[:1], counts[:1])).all()


def test_bad_feature_index_is_an_error(model_and_sae, eval_set):
    model, sae = model_and_sae
    with pytest.raises(InputError, match="feature sets: big: feature index out of range"):
        ablation_losses(model, sae, eval_set, {"big": [64]})


def test_feature_sets_other_is_random_matched_and_outside_categories():
    predicted = {"digits": [1, 2, 3, 4], "quotes": [4, 5]}
    sets = category_feature_sets(predicted, list(range(30)), seed=0,
                                 truth={"digits": [1, 2, 9], "quotes": [5]})
    assert len(sets["other"]) == 3  # mean of 4 and 2
    assert not set(sets["other"]) & {1, 2, 3, 4, 5}
    assert sets["truth:digits"] == [1, 2, 9] and len(sets["truth:other"]) == 3
    assert not set(sets["truth:other"]) & {1, 2, 5, 9}
    assert sets == category_feature_sets(predicted, list(range(30)), seed=0,
                                         truth={"digits": [1, 2, 9], "quotes": [5]})
    assert random_matched_set([3, 1, 2], 10, seed=0) == [1, 2, 3]


def test_eval_sets_from_activations_file(tmp_path):
    path = tmp_path / "acts.h5"
    with h5py.File(path, "w") as fh:
        fh["tokens"] = np.array([[0, 5, 6, 1], [0, 7, 1, 1]], dtype=np.int32)
        fh["lengths"] = np.array([3, 2], dtype=np.int32)
    with pytest.raises(InputError, match="meta/answer_token_id: missing: labels.ablation.eval "
                                         "'answer' .* needs an 'answer' in every prompt"):
        eval_set_from_h5(path, "answer")
    with h5py.File(path, "a") as fh:  # extraction records which prompts lack an answer
        fh.attrs["answers"] = json.dumps({"prompts": "p.jsonl", "n_prompts": 2, "missing": 1,
                                          "missing_lines": [2]})
    with pytest.raises(InputError, match=r"^p.jsonl: line 2.answer: missing: labels.ablation"):
        eval_set_from_h5(path, "answer")
    with h5py.File(path, "a") as fh:  # each prompt's own answer, as extraction stores it
        fh["meta/answer_token_id"] = np.array([30, 31])
    ev = eval_set_from_h5(path, "answer")
    assert ev.targets[0, 2] == 30 and ev.targets[1, 1] == 31 and ev.n_targets == 2
    nt = eval_set_from_h5(path, "next_token")
    assert nt.targets[0].tolist() == [5, 6, IGNORE, IGNORE] and nt.n_targets == 3


def test_stage_ablates_classified_categories(tmp_path, model_and_sae, eval_set):
    import json

    model, sae = model_and_sae
    (tmp_path / "d.json").write_text(json.dumps({"records": [
        {"feature_id": f"s-{i}", "feature_index": i, "description": "t"} for i in range(64)]}))
    for name, members in (("a", {1, 2, 3}), ("b", {10, 11})):
        (tmp_path / f"{name}.json").write_text(json.dumps({"records": [
            {"feature_index": i, "label": "related" if i in members else "not-related"}
            for i in range(64)]}))
    settings = AblationSettings.from_dict({**schema_defaults("labels.ablation"), "batch_size": 3})
    out = ablate_categories(model, sae, eval_set, {"a": tmp_path / "a.json", "b": tmp_path / "b.json"},
                            tmp_path / "d.json", settings, truth={"a": [1, 2]})
    assert out["feature_sets"]["a"] == [1, 2, 3] and out["feature_sets"]["b"] == [10, 11]
    assert set(out["sets"]) == {"a", "b", "other", "truth:a", "truth:other"}
    assert out["sets"]["b"]["loss"] != out["baseline_loss"]


def test_stacked_masks_and_the_forward_from_the_hook_change_no_loss(model_and_sae, eval_set,
                                                                    monkeypatch):
    """Masks stacked per pass, prompts sorted and cut after their last counted position, and
    the forward started at the hook's layer give the losses of one full hooked forward per set."""
    model, sae = model_and_sae
    sets = {f"s{i}": list(range(i, 64, 7)) for i in range(5)}
    fast = ablation_losses(model, sae, eval_set, sets, batch_size=4, sets_per_pass=3)
    assert start_layer(model, HOOK) == 1 and start_layer(model, "blocks.1.hook_resid_pre") == 1
    assert start_layer(model, "blocks.0.hook_mlp_out") is None
    monkeypatch.setattr(ablation_module, "start_layer", lambda model, hook: None)
    slow = ablation_losses(model, sae, eval_set, sets, batch_size=2, sets_per_pass=1)
    assert fast["baseline_loss"] == pytest.approx(slow["baseline_loss"], abs=1e-6)
    for name in sets:
        assert fast["sets"][name]["delta"] == pytest.approx(slow["sets"][name]["delta"], abs=1e-6)
    assert np.allclose(fast["delta_covariance"]["matrix"], slow["delta_covariance"]["matrix"],
                       atol=1e-10)


def test_several_other_draws_are_pooled_with_their_spread():
    sets = category_feature_sets({"a": [1, 2, 3, 4]}, list(range(40)), seed=5, other_draws=3)
    assert [n for n in sets if n.startswith("other")] == ["other@0", "other@1", "other@2"]
    assert sets["other@0"] == category_feature_sets({"a": [1, 2, 3, 4]}, list(range(40)), 5)["other"]
    names = ["a", "other@0", "other@1", "other@2"]
    cov = np.diag([1.0, 2.0, 2.0, 2.0]) * 1e-4
    cov[0, 1:] = cov[1:, 0] = 0.5e-4
    result = {"baseline_loss": 1.0, "delta_covariance": {"names": names, "matrix": cov.tolist()},
              "sets": {n: {"n_features": 4, "delta": d, "loss": 1 + d, "delta_se": 0.0}
                       for n, d in zip(names, [0.5, 0.1, 0.2, 0.3])}}
    pooled = pool_draws(result, "other")
    assert pooled["delta_covariance"]["names"] == ["a", "other"]
    other = pooled["sets"]["other"]
    assert other["delta"] == pytest.approx(0.2) and other["loss"] == pytest.approx(1.2)
    between = np.var([0.1, 0.2, 0.3], ddof=1) / 3
    assert other["delta_se"] ** 2 == pytest.approx(2e-4 / 3 + between)
    assert pooled["delta_covariance"]["matrix"][0][1] == pytest.approx(0.5e-4)
    assert other["draws"]["n"] == 3 and pool_draws(pooled, "other") == pooled
