"""Planted label noise: the corrections against classifiers whose errors are known.

Two worlds. An additive one, where a set's loss increase is exactly the sum of its features'
LPFs (the measurement stubbed), so every method's failure is its model of the bucket, not the
model's non-additivity: naive must be biased under contamination, two-bucket under
contamination from `other`, general neither, and general must cover at its nominal rate.
And the tiny random toy model, measured for real, for the plumbing and the measured truth.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saeflow.core.config import schema_defaults
from saeflow.core.errors import InputError
from saeflow.labels import planting as P
from saeflow.labels import validation as V
from saeflow.labels.ablation import AblationSettings, ablation_losses, next_token_eval

CFG = {"contamination": [0.0, 0.3], "sources": ["category", "other"], "false_negative_rate": 0.2,
       "replicates": 30, "other_draws": 4, "sets_per_pass": 8, "n_boot": 200, "seed": 0}
METHODS = ["naive", "two-bucket", "general"]
TRUTH = {"a": list(range(0, 30)), "b": list(range(30, 60))}
RECORDS = [{"feature_id": f"toy-{i}", "feature_index": i, "description": "d"} for i in range(300)]


def settings(cfg, methods, sample_n):
    """What the stage builds once from the rule's params (labels.ablation at its defaults)."""
    return V.ValidationSettings(V.ValidationConfig.from_dict(cfg),
                                AblationSettings.from_dict(schema_defaults("labels.ablation")),
                                tuple(methods), sample_n)


def additive_world(monkeypatch, spread, scale_sd=0.002):
    """Feature LPFs: a ~ 0.05, b ~ 0.02, other ~ 0.002, each varying by ``spread`` of its
    mean; a set's increase is their sum, times one measurement factor ``1 + e`` shared by every
    set (all are measured on the same prompts, truth included), ``e ~ N(0, scale_sd^2)``."""
    rng = np.random.default_rng(1)
    lpf = np.concatenate([0.05 * (1 + spread * rng.standard_normal(30)),
                          0.02 * (1 + spread * rng.standard_normal(30)),
                          0.002 * (1 + spread * rng.standard_normal(240))])

    def fake(model, sae, eval_set, feature_sets, hook_name=None, batch_size=32, sets_per_pass=1):
        names = list(feature_sets)
        sums = np.array([lpf[list(f)].sum() for f in feature_sets.values()])
        measured = sums * (1 + np.random.default_rng(2).normal(0, scale_sd))
        sets = {n: {"n_features": len(set(f)), "delta": float(d), "loss": 1.0 + float(d),
                    "delta_se": float(scale_sd * t)}
                for (n, f), d, t in zip(feature_sets.items(), measured, sums)}
        return {"model_loss": 1.0, "baseline_loss": 1.0, "n_targets": 100, "n_prompts": 100,
                "hook_name": "h", "sets": sets,
                "delta_covariance": {"names": names, "matrix": (scale_sd**2 * np.outer(sums, sums)).tolist()}}

    monkeypatch.setattr(V, "ablation_losses", fake)
    return lpf


def by_key(result):
    return {c["key"]: c for c in result["conditions"]}


def test_planted_classifier_has_the_planted_error_rates():
    rng = np.random.default_rng(0)
    features = [r["feature_index"] for r in RECORDS]
    kept = P.kept_members(TRUTH, 0.2, rng)
    for source in P.SOURCES:
        buckets = P.plant_classifier(TRUTH, features, P.Condition(0.3, source), kept, rng)
        for name, bucket in buckets.items():
            own = set(TRUTH[name])
            assert set(bucket) & own == set(kept[name]) and len(kept[name]) == 24  # 20% left out
            fp = set(bucket) - own
            assert len(fp) == round(0.3 * 24 / 0.7)
            other_members = set().union(*(set(m) for c, m in TRUTH.items() if c != name))
            assert fp <= (other_members if source == "category" else set(range(60, 300)))
    assert [c.key for c in P.conditions([0.3, 0.0], ["category", "other"])] == \
        ["none@0", "category@0.3", "other@0.3"]
    with pytest.raises(InputError, match="unknown sources"):
        P.conditions([0.1], ["elsewhere"])


def test_methods_against_planted_noise_in_an_additive_world(monkeypatch):
    """Every feature of a kind has the same LPF: the methods' shared assumption holds, so
    what separates them is only their model of a bucket's contamination."""
    lpf = additive_world(monkeypatch, spread=0.0)
    result = V.validate(None, None, None, TRUTH, RECORDS, settings(CFG, METHODS, 200))
    conds = by_key(result)
    true = {c: result["true_lpf"][c]["lpf"] for c in TRUTH}
    assert true["a"] == pytest.approx(lpf[:30].mean(), rel=0.01)  # measured: delta / n
    for method in METHODS:  # nothing planted: every method is unbiased
        for c in TRUTH:
            row = conds["none@0"]["methods"][method]["categories"][c]
            assert abs(row["rel_bias"]) < 0.03, (method, c, row)
    a_other = {m: conds["other@0.3"]["methods"][m]["categories"]["a"] for m in METHODS}
    assert a_other["naive"]["rel_bias"] < -0.2  # diluted by near-dead contaminants
    assert abs(a_other["general"]["bias"]) < 0.2 * abs(a_other["naive"]["bias"])
    assert a_other["general"]["rmse"] < 0.5 * a_other["naive"]["rmse"]
    assert a_other["naive"]["coverage"] < 0.2
    # general's intervals cover at their nominal rate where its assumption holds
    for key in conds:
        general = conds[key]["methods"]["general"]
        assert not general["assumption_violated"]
        for c in TRUTH:
            row = general["categories"][c]
            lo, hi = row["coverage_ci95"]
            assert lo - 1e-9 <= row["coverage"] <= hi + 1e-9 and row["coverage"] >= 0.8, (key, c, row)
    # two-bucket: right when contaminants are the other category's, flagged when from other
    assert not conds["category@0.3"]["methods"]["two-bucket"]["assumption_violated"]
    assert abs(conds["category@0.3"]["methods"]["two-bucket"]["categories"]["a"]["rel_bias"]) < 0.05
    flagged = conds["other@0.3"]["methods"]["two-bucket"]
    assert flagged["assumption_violated"] and "other" in flagged["violation"]
    assert conds["other@0.3"]["methods"]["naive"]["assumption_violated"]
    assert conds["other@0.3"]["realised_contamination"]["a"] == pytest.approx(0.3, abs=0.02)
    assert len(result["replicates"]) == 3 * CFG["replicates"]
    verdict = result["verdict"]
    assert verdict["general"]["covers_nominally_where_assumption_holds"]
    assert verdict["two-bucket"]["assumption_violated_in"] == ["other@0.3"]
    assert verdict["naive"]["assumption_holds_in"] == ["none@0"]
    # the docs' table is this result, row for row
    from saeflow.labels.validation_table import markdown_table, truth_line

    rows = markdown_table(result).splitlines()
    assert rows[0] == "| condition | method | " + " | ".join(TRUTH) + " |"
    assert len(rows) == 2 + len(conds) * len(METHODS)
    naive_a = conds["other@0.3"]["methods"]["naive"]["categories"]["a"]
    row = next(r for r in rows if r.startswith("| other@0.3 | naive (violated) |"))
    assert row.split(" | ")[2].startswith(f"{naive_a['bias']:+.1e} / {naive_a['rmse']:.1e} / "
                                          f"{naive_a['coverage']:.2f} [")
    assert truth_line(result).startswith("True LPF: a ")


def test_unequal_members_are_what_the_intervals_leave_out(monkeypatch):
    """Members whose LPFs differ: a bucket holding a random 80% of them misses the category's
    mean by luck the intervals do not hold, which the in-bucket coverage tells apart."""
    additive_world(monkeypatch, spread=0.3)
    cfg = {**CFG, "contamination": [0.0], "replicates": 30}
    row = V.validate(None, None, None, TRUTH, RECORDS, settings(cfg, ["general"], 200))[
        "conditions"][0]["methods"]["general"]["categories"]["a"]
    # nothing planted: the sample shows no contaminant, so the interval only reaches up from
    # the estimate (contaminants of lower LPF), and a truth below it, by luck, is missed
    assert row["coverage"] <= 0.6 and row["in_bucket"]["coverage"] >= 0.9
    assert row["in_bucket"]["spread_around_true"] > 0


def test_a_biased_method_undercovers_when_the_truth_shares_the_prompt_noise(monkeypatch):
    """Prompt noise 150 times the default's, shared by every set (truth included): the
    pipeline's interval holds it, so it covers naive's bias at other@0.3 (the old score,
    ``coverage_full``); the scored interval holds only the noise the truth does not share,
    so naive's coverage falls below nominal, while general's stays."""
    additive_world(monkeypatch, spread=0.0, scale_sd=0.3)
    cfg = {**CFG, "contamination": [0.3], "sources": ["other"], "replicates": 20}
    result = V.validate(None, None, None, TRUTH, RECORDS, settings(cfg, ["naive", "general"], 200))
    naive, general = (result["conditions"][0]["methods"][m]["categories"]["a"]
                      for m in ("naive", "general"))
    assert naive["rel_bias"] < -0.2
    assert naive["coverage_full"] >= 0.9  # the bias hides in the shared noise
    assert naive["coverage"] == 0 and naive["coverage_ci95"][1] < 0.95
    assert general["coverage"] >= 0.85 and abs(general["rel_bias"]) < 0.05
    assert "does not share" in result["intervals"]


@pytest.fixture(scope="module")
def random_model_and_sae():
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(
        n_layers=2, d_model=32, d_head=8, n_heads=4, d_vocab=50, n_ctx=16, act_fn="gelu",
        seed=0)).eval()
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=64, metadata=SAEMetadata(
        hook_name="blocks.0.hook_resid_post"))).eval()
    return model, sae


def test_real_measurements_on_a_tiny_model(random_model_and_sae):
    torch.set_num_threads(1)
    model, sae = random_model_and_sae
    tokens = torch.randint(0, 50, (8, 12), generator=torch.Generator().manual_seed(1))
    eval_set = next_token_eval(tokens, torch.full((8,), 12))
    truth = {"a": list(range(0, 10)), "b": list(range(10, 20))}
    records = RECORDS[:64]
    cfg = {**CFG, "replicates": 3, "n_boot": 50}
    result = V.validate(model, sae, eval_set, truth, records, settings(cfg, METHODS, 40))
    own = ablation_losses(model, sae, eval_set, {"a": truth["a"]})["sets"]["a"]
    assert result["true_lpf"]["a"]["lpf"] == pytest.approx(own["delta"] / 10, rel=1e-5)
    assert "measured" in result["true_lpf"]["a"]["how"] and result["true_lpf_other"]["n_draws"] == 8
    for cond in result["conditions"]:
        for method in METHODS:
            row = cond["methods"][method]
            assert row["n_solved"] + row["n_failed"] == 3
            for c in truth:
                assert {"bias", "rmse", "coverage", "coverage_ci95", "true_lpf"} <= set(row["categories"][c])
    # measured once: each replicate's kept members are its level-0 buckets in every condition
    assert result["measurement"]["n_ablations"] == 2 + V.TRUE_OTHER_DRAWS + 3 * (2 + 4) + 2 * 3 * (2 + 4)
