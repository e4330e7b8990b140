"""Effect sizes: Cohen's d, vectorised permutation p, BH, top-k, localisation, toy check."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from saeflow.probe.effects import (binary_target, bh_adjust, cohens_d, compute_effects,
                                   localisation, permutation_test, toy_check)
from saeflow.probe.effects_files import probe_effects_stage, write_effects
from saeflow.core.errors import InputError
from saeflow.formats.descriptions import descriptions_by_hook
from saeflow.probe.dataset import write_probe_dataset
from saeflow.probe.strategies import build_probe_dataset


def _reference_d(X, y):
    a, b = X[y], X[~y]
    pooled = np.sqrt(((a.shape[0] - 1) * a.var(0, ddof=1) + (b.shape[0] - 1) * b.var(0, ddof=1))
                     / (X.shape[0] - 2))
    return (a.mean(0) - b.mean(0)) / pooled


def test_cohens_d_matches_the_textbook_formula():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 7)) * rng.uniform(0.1, 100, size=7) + 1e3  # offsets test centring
    y = rng.random(50) < 0.3
    np.testing.assert_allclose(cohens_d(X, y), _reference_d(X, y), rtol=1e-9)
    X[:, 3] = 2.0  # constant column: no defined d
    assert np.isnan(cohens_d(X, y)[3])


def test_permutation_p_finds_planted_signal_and_is_batch_invariant():
    rng = np.random.default_rng(1)
    y = np.arange(60) % 2 == 0
    X = rng.normal(size=(60, 40))
    X[:, 0] += 1.5 * y
    # every column for all N draws (the sequential stop is tests/probe/test_permutation.py's)
    res = permutation_test(X, y, 499, seed=5, batch_size=64, stop_after=None)
    d, p = res.d, res.p
    np.testing.assert_array_equal(p, permutation_test(X, y, 499, seed=5, batch_size=500,
                                                      stop_after=None).p)
    assert p[0] == pytest.approx(1 / 500)  # the floor: (1 + 0) / (1 + N)
    assert np.median(p[1:]) > 0.2  # null columns are not small
    assert np.all((p >= 1 / 500) & (p <= 1))
    # agrees with a Welch-free pooled t-test on a null column to within Monte Carlo error
    t_p = stats.ttest_ind(X[y, 5], X[~y, 5]).pvalue
    assert abs(p[5] - t_p) < 0.08
    # the permutation null of d is centred at 0 with SD ~ sqrt(1/n1 + 1/n0)
    assert np.all(np.abs(res.null_mean) < 0.05)
    np.testing.assert_allclose(res.null_sd, np.sqrt(2 / 30 + 0 * d), rtol=0.15)
    # its normal tail resolves the planted column far below the 1/(N+1) floor
    assert res.p_normal()[0] < 1e-4 and abs(res.p_normal()[5] - t_p) < 0.08


def test_bh_matches_the_definition():
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.5, 0.002])
    q = bh_adjust(p)
    finite = p[np.isfinite(p)]
    order = np.argsort(finite)
    m = finite.size
    raw = finite[order] * m / np.arange(1, m + 1)
    expect = np.minimum.accumulate(raw[::-1])[::-1]
    np.testing.assert_allclose(q[np.isfinite(p)][order], expect)
    assert np.isnan(q[3])


def test_localisation_counts_and_chance_shares():
    cols = {"layer": np.array([0, 0, 1, 1, 1, 1]), "position": np.array([0, 1, 0, 1, 0, 1])}
    tested = np.array([True, True, True, True, False, True])
    loc = localisation(cols, np.array([1, 3, 5]), tested, [0, 1], ["mid", "final"])
    assert loc["grid_count"] == [[0, 1], [0, 2]]
    assert loc["by_position"] == {"mid": 0.0, "final": 1.0}
    assert loc["expected_by_position"] == pytest.approx({"mid": 0.4, "final": 0.6})
    assert loc["by_layer"]["1"] == pytest.approx(2 / 3)
    assert loc["hot_spots"][0] == {"layer": 1, "position": "final", "count": 2,
                                   "share": pytest.approx(2 / 3),
                                   "expected_share": pytest.approx(0.4),
                                   "enrichment": pytest.approx(5 / 3)}
    check = toy_check(loc, ["final"])
    assert check["top_k_share"] == 1.0 and check["expected_share"] == pytest.approx(0.6)
    # all 3 of 3 at 'final' when 3 of 5 tested columns sit there: p = 1/C(5,3) = 0.1
    assert check["p_value"] == pytest.approx(0.1) and check["verdict"] == "not_enriched"
    assert toy_check(loc, ["mid", "final"])["verdict"] == "undetermined"
    with pytest.raises(InputError, match="first"):
        toy_check(loc, ["first"])


def test_toy_world_effects_point_to_the_informative_position(tmp_path):
    from test_probe_data import INFORMATIVE, write_toy_files

    act, codes = write_toy_files(tmp_path, n=90)
    ds = build_probe_dataset({"name": "sc", "strategy": "sae-to-concept", "layers": "0-2",
                              "positions": ["first", "mid", "final"]}, act, codes)
    res = compute_effects(ds, positive_class="TypeError", n_permutations=200, seed=0, top_k=3,
                          descriptions={"blocks.1.hook_resid_post": {1: "type clash"}})
    # the planted TypeError feature (1) at 'mid' in every layer is the top three
    assert {(t["layer"], t["position"], t["unit"]) for t in res.top} == \
        {(0, "mid", 1), (1, "mid", 1), (2, "mid", 1)}
    assert all(t["significant"] and t["d"] > 0 for t in res.top)
    assert [t["description"] for t in res.top if t["layer"] == 1] == ["type clash"]
    check = toy_check(res.localisation, [INFORMATIVE])
    assert check["top_k_share"] == 1.0 and check["verdict"] == "points_to_informative"
    write_effects(res, tmp_path / "e.json", tmp_path / "e.h5", extra={"toy_check": check})
    rec = json.loads((tmp_path / "e.json").read_text())
    assert rec["n_significant"] >= 3 and rec["toy_check"]["verdict"] == "points_to_informative"
    assert rec["localisation"]["by_position"]["mid"] == 1.0


def test_failure_target_and_bad_contrasts(tmp_path):
    from test_probe_data import write_toy_files

    act, codes = write_toy_files(tmp_path)
    fail = build_probe_dataset({"name": "sf", "strategy": "sae-to-failure", "layers": "1",
                                "positions": ["mid"]}, act, codes)
    y, name = binary_target(fail)
    assert name == "wrong" and y.sum() == fail.y.sum()
    res = compute_effects(fail, n_permutations=100, top_k=1)
    assert res.top[0]["unit"] == 5  # the toy model fails when dim 5 (feature 5) is high
    # 8 tested columns: one p at the floor 1/101 fails BH (0.0099 > 0.05/8); two would pass
    assert res.settings["bh_min_rejections"] == 2 and res.top[0]["p_kind"] == "monte_carlo"
    assert res.top[0]["p"] == pytest.approx(1 / 101) and not res.top[0]["significant"]
    enough = compute_effects(fail, n_permutations=2000, top_k=1)
    assert enough.settings["bh_min_rejections"] == 1 and enough.top[0]["significant"]
    normal = compute_effects(fail, n_permutations=100, top_k=1, p_method="normal")
    assert normal.settings["bh_min_rejections"] == 1 and normal.top[0]["significant"]
    assert normal.top[0]["unit"] == 5 and normal.top[0]["p_kind"] == "normal"
    concept = build_probe_dataset({"name": "sc", "strategy": "sae-to-concept", "layers": "1"},
                                  act, codes)
    with pytest.raises(InputError, match=r"^sc: effects.positive_class: 3 classes"):
        binary_target(concept)
    write_probe_dataset(concept, tmp_path / "sc.h5")
    with pytest.raises(InputError, match="3 classes"):  # and nothing is written
        probe_effects_stage(tmp_path / "sc.h5", tmp_path / "e.json", tmp_path / "e.h5")
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "e.h5").exists()
    with pytest.raises(InputError, match="'ValueError' is not one of"):
        binary_target(concept, "ValueError")
    feat = build_probe_dataset({"name": "hf", "strategy": "hidden-to-feature", "layers": "1",
                                "target": {"feature": 2}}, act, codes)
    with pytest.raises(InputError, match="continuous"):
        compute_effects(feat)


def test_figures_are_written(tmp_path):
    from test_probe_data import write_toy_files

    from saeflow.probe.effects_files import effects_record, read_effect_arrays
    from saeflow.probe.plots import plot_cohens_d, plot_probe_accuracy, plot_probe_heatmap

    act, codes = write_toy_files(tmp_path, n=45)
    ds = build_probe_dataset({"name": "sf", "strategy": "sae-to-failure", "layers": "0-2",
                              "positions": ["mid", "final"]}, act, codes)
    res = compute_effects(ds, n_permutations=50, top_k=4)
    write_effects(res, tmp_path / "e.json", tmp_path / "e.h5")
    entry = {"name": "h_L1", "prompt_set": "s", "group": "h", "strategy": "hidden-to-concept",
             "input_kind": "hidden", "layers": [1], "metric": "accuracy", "test_mean": 0.8,
             "test_ci": [0.7, 0.9], "baseline_mean": 0.33}
    summary = {"datasets": {"s/h_L1": entry, "s/h_L2": {**entry, "name": "h_L2", "layers": [2],
                                                       "metadata_baseline": {"mean": 0.4}},
                            "s/r": {**entry, "name": "r", "metric": "r2", "layers": [0, 1]}}}
    outputs = [tmp_path / f"{name}.png" for name in ("acc", "heat", "d")]
    plot_probe_accuracy(summary, outputs[0])
    plot_probe_heatmap([effects_record(res)], outputs[1])
    plot_cohens_d([read_effect_arrays(tmp_path / "e.h5")], outputs[2])
    for path in outputs:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match="no probe results"):
        plot_probe_accuracy({"datasets": {}}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_descriptions_in_either_format(tmp_path):
    (tmp_path / "map.json").write_text(json.dumps({"blocks.1.hook_resid_post": {"3": "x"}}))
    assert descriptions_by_hook(tmp_path / "map.json") == {"blocks.1.hook_resid_post": {3: "x"}}
    records = {"source": "blocks.0.hook_resid_post", "n_features": 2, "records": [
        {"feature_id": "s-0", "feature_index": 0, "description": "digits"},
        {"feature_id": "s-4", "feature_index": 4, "description": "colons"}]}
    (tmp_path / "labels.json").write_text(json.dumps(records))
    assert descriptions_by_hook(tmp_path / "labels.json") == {
        "blocks.0.hook_resid_post": {0: "digits", 4: "colons"}}
    assert list(descriptions_by_hook(tmp_path / "labels.json", "blocks.1.hook_resid_post")) == [
        "blocks.1.hook_resid_post"]
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="expected"):
        descriptions_by_hook(tmp_path / "bad.json")
