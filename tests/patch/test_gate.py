"""The estimator gate (saeflow.patch.gate) against exhaustive exact patching: three wrong
rankers built from a real AtP result on the fixtures' tiny model -- activation change without
the gradient, sign-flipped AtP, AtP with another pair's signs -- fail it while AtP passes; the
false-negative count and the sampled coverage check cannot tell them apart."""

from __future__ import annotations

from copy import deepcopy

import numpy as np
import pytest
import torch

from saeflow.patch.attribution import MODES, AtPResult, run_atp
from saeflow.patch.exhaustive import compare_with_exact, exhaustive_patching
from saeflow.patch.gate import coverage_judgement, gate, miss_rate_judgement
from saeflow.patch.pairs import align_right
from saeflow.patch.splice import prepare_saes, run_spliced
from saeflow.patch.summary import exhaustive_comparison, magnitude_comparison
from saeflow.testing.fixtures import patch_config, random_pair_batch
from tests.patch.test_attribution import make_model, make_saes

torch.set_num_threads(1)

MEASURES = {"spearman_active_latents", "sign_agreement_real", "relative_l1_error"}


@pytest.fixture(scope="module")
def world():
    """The tiny model (float64), its two SAEs, 8 pairs; per mode AtP and exact patching."""
    model = make_model(dtype=torch.float64)
    spliced = prepare_saes(model, make_saes(model))
    batches = [random_pair_batch(4, 6, [2], seed=3), random_pair_batch(4, 8, [5], seed=4)]
    atps = {m: run_atp(model, spliced, batches, we) for m, we in MODES.items()}
    exact = {m: exhaustive_patching(model, spliced, batches, we) for m, we in MODES.items()}
    return model, spliced, batches, atps, exact


def _with(atp: AtPResult, latent, error) -> AtPResult:
    out = deepcopy(atp)
    out.latent_effect = {h: latent(h, v) for h, v in atp.latent_effect.items()}
    out.error_effect = {h: error(h, v) for h, v in atp.error_effect.items()}
    return out


def sign_flipped(atp: AtPResult) -> AtPResult:
    return _with(atp, lambda h, v: -v, lambda h, v: -v)


def other_pairs_sign(atp: AtPResult) -> AtPResult:
    """Each pair's |AtP| with the sign of the next pair's AtP (a cyclic shift: never its own)."""
    shift = np.roll(np.arange(len(atp.pair_ids)), 1)
    return _with(atp, lambda h, v: np.abs(v) * np.sign(v[shift]),
                 lambda h, v: np.abs(v) * np.sign(v[shift]))


def without_gradient(model, spliced, batches, atp: AtPResult) -> AtPResult:
    """AtP with the gradient left out: each node's change clean - corrupted, summed over its
    positions (a latent) or its dimensions (an error node)."""
    P = max(b.length for b in batches)
    lat, err = {h: [] for h in spliced}, {h: [] for h in spliced}
    for b in batches:
        with torch.no_grad():
            _, clean = run_spliced(model, spliced, b.clean, atp.with_error)
            _, corr = run_spliced(model, spliced, b.corrupted, atp.with_error)
        for h in spliced:
            lat[h].append((clean[h].act - corr[h].act).sum(1).numpy())
            if atp.with_error:
                err[h].append(align_right((clean[h].res - corr[h].res).sum(-1).numpy(), P))
    return _with(atp, lambda h, v: np.concatenate(lat[h]), lambda h, v: np.concatenate(err[h]))


def judged(est: AtPResult, exact, mode: str, **gate_opts) -> dict:
    """summary.json's record of ``est`` against exact patching (the real code path)."""
    thr = 0.05 * abs(float((est.clean - est.corrupted).mean()))  # patch_verify's threshold
    cfg = patch_config(top_k=5, **({"gate": gate_opts} if gate_opts else {}))
    return exhaustive_comparison({mode: est}, exact, {mode: {"threshold": thr}}, cfg,
                                 "exact.h5", sampled=False)[mode]


@pytest.mark.parametrize("mode", list(MODES))
def test_three_wrong_rankers_fail_the_gate_while_atp_passes(world, mode):
    model, spliced, batches, atps, exact = world
    atp = atps[mode]
    right = judged(atp, exact, mode)
    assert right["gate"]["verdict"] == "pass", right["gate"]
    assert set(right["gate"]["measures"]) == MEASURES
    wrong = {"sign-flipped": sign_flipped(atp), "another pair's sign": other_pairs_sign(atp),
             "no gradient": without_gradient(model, spliced, batches, atp)}
    for name, est in wrong.items():
        g = judged(est, exact, mode)["gate"]
        assert g["verdict"] == "fail", (name, g)
        # each fails on the order of the moving latents and on the real nodes' signs
        assert {"spearman_active_latents", "sign_agreement_real"} <= set(g["failed"]), (name, g)
    # the scale: a flipped sign is off by twice the effect, a gradient-free change is in
    # activation units
    for name in ("sign-flipped", "no gradient"):
        assert "relative_l1_error" in judged(wrong[name], exact, mode)["gate"]["failed"]
    # what the gate replaces cannot tell: a flipped sign ranks by the same |effect|, so its
    # false negatives and recall are AtP's exactly
    flipped = judged(wrong["sign-flipped"], exact, mode)
    assert flipped["false_negatives"] == right["false_negatives"]
    assert flipped["at_k"] == right["at_k"]


def test_every_measure_states_its_value_threshold_and_count(world):
    _, _, _, atps, exact = world
    g = judged(atps["with_error"], exact, "with_error")["gate"]
    for name, m in g["measures"].items():
        assert set(m) >= {"value", "threshold", "rule", "n", "pass", "over"}, name
    assert g["measures"]["spearman_active_latents"]["threshold"] == 0.5  # the schema default
    assert g["measures"]["relative_l1_error"]["rule"] == "<="
    # thresholds are read from patch.gate: an unreachable one fails AtP too
    strict = judged(atps["with_error"], exact, "with_error", min_spearman=0.9999,
                    min_sign_agreement=0.75, max_relative_l1=0.5, min_nodes=5)["gate"]
    assert strict["verdict"] == "fail" and strict["failed"] == ["spearman_active_latents"]


def test_too_few_nodes_is_not_judged():
    record = {"spearman_active_latents": 0.9, "n_active_latents": 300, "sign_agreement_real": 1.0,
              "n_real": 3, "relative_l1_error": 0.1, "n_nodes": 300}
    opts = patch_config().gate
    g = gate(record, opts)
    assert g["verdict"] == "incomplete" and g["not_judged"] == ["sign_agreement_real"]
    sign = g["measures"]["sign_agreement_real"]
    assert sign["pass"] is None and "3 nodes" in sign["note"] and "too few" in sign["note"]
    # a wrong sign on 3 nodes is not judged either, but the order still fails it
    g = gate({**record, "spearman_active_latents": -0.9, "sign_agreement_real": 0.0}, opts)
    assert g["verdict"] == "fail" and g["failed"] == ["spearman_active_latents"]
    assert gate({**record, "n_real": 5}, opts)["verdict"] == "pass"


def test_magnitude_estimators_are_gated_on_the_measures_that_apply(world):
    from saeflow.patch.graddrop import magnitudes

    _, _, _, atps, exact = world
    verify = {m: {"threshold": 0.05 * abs(float((a.clean - a.corrupted).mean()))}
              for m, a in atps.items()}

    def shuffled(a: AtPResult) -> AtPResult:  # magnitudes of other latents: no information
        rng = np.random.default_rng(0)
        return _with(magnitudes(a), lambda h, v: v[:, rng.permutation(v.shape[1])],
                     lambda h, v: v)

    good = magnitude_comparison(atps, {"graddrop": {m: magnitudes(a) for m, a in atps.items()}},
                                exact, verify, patch_config(), "exact.h5")
    bad = magnitude_comparison(atps, {"graddrop": {m: shuffled(a) for m, a in atps.items()}},
                               exact, verify, patch_config(), "exact.h5")
    for mode in MODES:
        graddrop, abs_atp = good["graddrop"][mode]["gate"], good["atp"][mode]["gate"]
        assert set(graddrop["measures"]) == {"spearman_active_latents"}
        assert set(graddrop["not_applicable"]) == {"sign_agreement_real", "relative_l1_error"}
        assert set(abs_atp["measures"]) == {"spearman_active_latents", "relative_l1_error"}
        assert graddrop["verdict"] == abs_atp["verdict"] == "pass"
        assert bad["graddrop"][mode]["gate"]["verdict"] == "fail"
        assert good["estimator_comparison"][mode]["gate"] == {"atp": "pass", "graddrop": "pass"}


def test_the_sampled_checks_say_when_they_cannot_tell(world):
    # the toy's numbers: 0 misses in 20 draws from a pool of 500, 5 real latents in the top k
    from scipy.stats import binomtest

    hi = binomtest(0, 20).proportion_ci(0.95, "exact").high
    toy = miss_rate_judgement(5, hi * 500, 500)
    assert not toy["can_tell"] and "raise patch.n_random" in toy["why"]
    every = binomtest(0, 100).proportion_ci(0.95, "exact").high * 100  # the whole pool drawn
    assert miss_rate_judgement(5, every, 100)["can_tell"]
    assert not miss_rate_judgement(0, 0.5, 100)["can_tell"]  # nothing real found to compare
    assert miss_rate_judgement(5, None, 0)["can_tell"]  # no latent left outside the top k
    # coverage of the pool's true miss rate: with no real latent in the pool, every ranker is
    # "covered" -- the sign-flipped one too -- and the check says it cannot tell
    _, _, _, atps, exact = world
    flipped = sign_flipped(atps["with_error"])
    sampled = {"miss_rate_ci95": [0.0, hi]}
    out = compare_with_exact(flipped, exact["with_error"], [5], top_k=5, threshold=1e9,
                             sampled=sampled)
    check = out["sampled_check"]
    assert check["covered"] and check["n_real_in_pool"] == 0 and not check["can_tell"]
    assert check == {**check, **coverage_judgement(0)}
    out = compare_with_exact(flipped, exact["with_error"], [5], top_k=5, threshold=1e-6,
                             sampled=sampled)
    assert out["sampled_check"]["n_real_in_pool"] > 0 and out["sampled_check"]["can_tell"]
