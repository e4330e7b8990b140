"""Cross-validated probes: folds, train-only normalisation, metrics, baseline, bad input."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from scipy import stats

from saeflow.core.config import schema_defaults
from saeflow.core.errors import InputError
from saeflow.probe.crossval import CORRECTED_T, NAIVE_T, make_folds, permute_prompts, t_interval
from saeflow.probe.dataset import ProbeDataset, write_probe_dataset
from saeflow.probe.fit_files import probe_fit_stage, write_probe_fit
from saeflow.probe.strategies import build_probe_dataset
from saeflow.probe.summary import probe_summary
from saeflow.probe.crossval import ProbeConfig
from saeflow.probe.fit import baseline_record, fit_probe
from saeflow.probe.fold import fit_fold



def probe_config(**overrides) -> ProbeConfig:
    """probe.cv as validation leaves it: the schema's defaults, then ``overrides``."""
    return ProbeConfig.from_dict({**schema_defaults("probe.cv"), **overrides})


FAST = probe_config(n_folds=4, inner_folds=2, Cs=(0.01, 1.0), alphas=(0.1, 10.0),
                    n_permutations=3, seed=1)


def _dataset(X, y, kind="label", sample_index=None, name="syn", classes=None):
    n, d = X.shape
    meta = {"target_kind": kind, "positions": ["final"], "layers": [0], "strategy": "test",
            "input_kind": "hidden", "class_names": classes or
            ([str(c) for c in range(int(y.max()) + 1)] if kind == "label" else [])}
    cols = {"hook": np.zeros(d, np.int32), "layer": np.zeros(d, np.int32),
            "position": np.zeros(d, np.int32), "unit": np.arange(d, dtype=np.int32)}
    idx = np.arange(n) if sample_index is None else sample_index
    return ProbeDataset(name, X, y, idx, np.zeros(n, np.int32), cols, meta)


def _separable(n=80, d=6, seed=0, shift=3.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, d))
    X[:, 0] += shift * y
    return X, y


def test_folds_depend_on_prompts_and_seed_only():
    idx = np.arange(100, 160)
    y = np.arange(60) % 3
    folds = make_folds(idx, y, 5, seed=3)
    # stratified and balanced: each fold has 4 of each class
    for k in range(5):
        assert np.bincount(y[folds == k], minlength=3).tolist() == [4, 4, 4]
    perm = np.random.default_rng(0).permutation(60)  # row order and X are irrelevant
    np.testing.assert_array_equal(make_folds(idx[perm], y[perm], 5, seed=3), folds[perm])
    assert not np.array_equal(make_folds(idx, y, 5, seed=4), folds)


def test_continuous_folds_keep_a_prompts_rows_together():
    idx = np.repeat(np.arange(30), 3)
    folds = make_folds(idx, None, 5, seed=0)
    assert all(np.unique(folds[idx == i]).size == 1 for i in range(30))
    assert np.bincount(folds).tolist() == [18] * 5


@pytest.mark.parametrize("normalise", ["standardize", "minmax"])
def test_normalisation_statistics_come_from_training_rows_only(normalise):
    X, y = _separable(60)
    train = np.arange(40)
    X = X.copy()
    X[40:] += 1000.0  # wild test rows would move any statistic that saw them
    cfg = probe_config(normalise=normalise, inner_folds=2, Cs=(1.0,))
    fit = fit_fold(X, y, train, "label", cfg)
    if normalise == "standardize":
        np.testing.assert_allclose(fit.normaliser["shift"], X[train].mean(0))
        np.testing.assert_allclose(fit.normaliser["factor"], 1 / X[train].std(0))
    else:
        np.testing.assert_allclose(fit.normaliser["shift"], X[train].min(0))
        np.testing.assert_allclose(fit.normaliser["factor"],
                                   1 / (X[train].max(0) - X[train].min(0)))
    assert fit.normaliser["shift"].max() < 100


def test_separable_labels_beat_the_measured_baseline():
    X, y = _separable()
    res = fit_probe(_dataset(X, y), FAST)
    acc = res.metrics["accuracy"]
    assert acc["test"]["mean"] > 0.85
    assert acc["test"]["ci_low"] <= acc["test"]["mean"] <= acc["test"]["ci_high"]
    assert acc["gap"] == pytest.approx(acc["train"]["mean"] - acc["test"]["mean"])
    assert len(res.baseline["accuracy"]["values"]) == 3
    assert res.baseline["accuracy"]["mean"] < 0.75  # shuffled labels carry no signal
    # 3 permutations: p >= 1/4 can never reach baseline_alpha 0.05, so none is reported
    assert res.baseline["accuracy"]["p_value"] is None
    assert res.baseline["accuracy"]["min_attainable_p"] == pytest.approx(1 / 4)
    assert "n_permutations >= 19" in res.baseline["accuracy"]["p_value_note"]
    assert res.metrics["roc_auc"]["test"]["mean"] > 0.9
    # the shuffles are drawn before any worker starts: parallel runs give the same null
    assert fit_probe(_dataset(X, y), FAST, n_jobs=2).baseline == res.baseline


def test_constant_columns_are_left_out_without_changing_the_fit():
    X, y = _separable(60, d=4)
    wide = np.concatenate([X[:, :2], np.zeros((60, 3)), X[:, 2:], np.full((60, 1), 7.0)], axis=1)
    a, b = fit_probe(_dataset(X, y), FAST), fit_probe(_dataset(wide, y), FAST, n_jobs=2)
    assert a.metrics["accuracy"]["test"] == b.metrics["accuracy"]["test"]
    assert a.baseline == b.baseline
    live = np.array([0, 1, 5, 6])  # the original columns' places in `wide`
    for fa, fb in zip(a.fits, b.fits, strict=True):
        np.testing.assert_allclose(fb.coef[:, live], fa.coef, rtol=1e-6, atol=1e-9)
        assert np.all(fb.coef[:, [2, 3, 4, 7]] == 0)  # full width, zeros where constant
        np.testing.assert_allclose(fb.normaliser["shift"][[2, 7]], [0.0, 7.0])
        np.testing.assert_allclose(fb.normaliser["factor"][[2, 7]], [1.0, 1.0])
    assert any("4 of 8 input columns are constant" in note for note in b.notes)


def test_multiclass_metrics_and_noise_near_chance():
    rng = np.random.default_rng(2)
    y = np.arange(90) % 3
    X = rng.normal(size=(90, 5))
    res = fit_probe(_dataset(X, y), FAST)
    assert abs(res.metrics["accuracy"]["test"]["mean"] - 1 / 3) < 0.2
    assert {"precision", "recall", "roc_auc", "balanced_accuracy"} <= set(res.metrics)
    assert res.oof.shape == (90, 3)


def test_ridge_for_continuous_targets():
    rng = np.random.default_rng(3)
    idx = np.repeat(np.arange(40), 2)
    X = rng.normal(size=(80, 4))
    y = X @ np.array([1.0, -2.0, 0.0, 0.5]) + 0.1 * rng.normal(size=80)
    res = fit_probe(_dataset(X, y, kind="continuous", sample_index=idx), FAST)
    assert res.primary_metric == "r2" and res.metrics["r2"]["test"]["mean"] > 0.9
    assert res.baseline["r2"]["mean"] < 0.2


def test_t_interval_matches_scipy():
    v = np.array([0.7, 0.8, 0.75, 0.9, 0.85])
    lo, hi = stats.t.interval(0.95, 4, loc=v.mean(), scale=stats.sem(v))
    out = t_interval(v)
    assert out["ci_low"] == pytest.approx(lo) and out["ci_high"] == pytest.approx(hi)
    assert out["interval_method"] == NAIVE_T


def test_fold_intervals_are_nadeau_bengio_corrected():
    v = np.array([0.7, 0.8, 0.75, 0.9, 0.85])
    out = t_interval(v, test_train_ratio=1 / 4)  # 5 folds: n_test / n_train = 1/4
    half = stats.t.ppf(0.975, 4) * v.std(ddof=1) * np.sqrt(1 / 5 + 1 / 4)
    assert out["ci_high"] - out["mean"] == pytest.approx(half)
    assert out["interval_method"] == CORRECTED_T
    # fit_probe's intervals: sqrt((1/k + 1/(k-1)) / (1/k)) = sqrt(7/3) wider than naive at k=4
    X, y = _separable()
    res = fit_probe(_dataset(X, y), FAST)
    test = res.metrics["accuracy"]["test"]
    naive = t_interval(np.array(res.metrics["accuracy"]["folds"]))
    assert test["interval_method"] == CORRECTED_T
    assert test["mean"] - test["ci_low"] == pytest.approx(  # the upper end is clipped at 1
        np.sqrt(7 / 3) * (naive["mean"] - naive["ci_low"]))


def test_baseline_p_is_reported_only_where_it_can_reach_alpha():
    few = baseline_record(np.array([0.5, 0.55, 0.45]), 0.9, alpha=0.05)
    assert few["p_value"] is None and few["min_attainable_p"] == 0.25
    assert "3 permutations give p >= 0.25 > baseline_alpha 0.05" in few["p_value_note"]
    enough = baseline_record(np.linspace(0.4, 0.6, 19), 0.9, alpha=0.05)
    assert enough["p_value"] == pytest.approx(1 / 20) and enough["p_value_note"] is None


def test_prompt_level_permutation_moves_whole_prompts():
    # prompts 0-5 hold positions 0, 1, 2; prompts 6-8 only 0 and 2; rows in scrambled order
    rows = [(i, j) for i in range(6) for j in range(3)] + [(i, j) for i in range(6, 9)
                                                         for j in (0, 2)]
    rng = np.random.default_rng(0)
    rows = [rows[k] for k in rng.permutation(len(rows))]
    idx, pos = (np.array(v) for v in zip(*rows, strict=True))
    y = 10.0 * idx + pos  # a prompt's targets, recognisable by the tens digit
    out = permute_prompts(y, idx, pos, np.random.default_rng(1))
    donor = {}
    for i in np.unique(idx):
        mine = np.argsort(pos[idx == i])
        got = out[idx == i][mine]
        donor[i] = int(got[0] // 10)
        np.testing.assert_array_equal(got, 10.0 * donor[i] + pos[idx == i][mine])
        assert (donor[i] < 6) == (i < 6)  # only prompts holding the same positions swap
    assert sorted(donor.values()) == list(range(9)) and np.sort(out).tolist() == np.sort(y).tolist()
    assert any(donor[i] != i for i in donor)


def test_continuous_baseline_shuffles_prompts_not_rows():
    # the target depends on the position only, which the inputs encode: moving whole prompts
    # leaves it unchanged, so the null scores what the observed run scores; a row shuffle
    # would destroy it (R^2 near 0)
    rng = np.random.default_rng(4)
    idx, pos = np.repeat(np.arange(40), 3), np.tile(np.arange(3), 40)
    X = np.eye(3)[pos] + 0.01 * rng.normal(size=(120, 3))
    y = np.array([0.0, 1.0, -2.0])[pos]
    ds = _dataset(X, y, kind="continuous", sample_index=idx)
    ds.row_position[:] = pos
    res = fit_probe(ds, FAST)
    assert res.metrics["r2"]["test"]["mean"] > 0.99
    np.testing.assert_allclose(res.baseline["r2"]["values"], res.metrics["r2"]["test"]["mean"])


def test_same_folds_for_every_input_kind(tmp_path):
    from test_probe_data import write_toy_files

    act, codes = write_toy_files(tmp_path, n=45)
    kw = {"layers": "1", "positions": ["mid"]}
    hidden = build_probe_dataset({"name": "h", "strategy": "hidden-to-concept", **kw}, act)
    sae = build_probe_dataset({"name": "s", "strategy": "sae-to-concept", **kw}, act, codes)
    no_perm = ProbeConfig.from_dict({**FAST.__dict__, "n_permutations": 0})
    a, b = fit_probe(hidden, no_perm), fit_probe(sae, no_perm)
    np.testing.assert_array_equal(a.folds, b.folds)
    assert a.metrics["accuracy"]["test"]["mean"] > 0.8  # the label shifts layer 1 at 'mid'


def test_write_probe_fit_and_summary(tmp_path):
    X, y = _separable(40)
    res = fit_probe(_dataset(X, y), FAST)
    write_probe_fit(res, tmp_path / "f.json", tmp_path / "f.h5", {"probe": {"x": 1}})
    rec = json.loads((tmp_path / "f.json").read_text())
    assert rec["provenance"]["config"] == {"probe": {"x": 1}}
    assert rec["n_samples"] == 40 and rec["primary_metric"] == "accuracy"
    with h5py.File(tmp_path / "f.h5", "r") as h5:
        np.testing.assert_array_equal(h5["folds"][()], res.folds)
        for k in range(FAST.n_folds):  # saved statistics are the training rows' own
            train = res.folds != k
            np.testing.assert_allclose(h5[f"fold_{k}/normaliser/shift"][()], X[train].mean(0))
            np.testing.assert_allclose(h5[f"fold_{k}/normaliser/factor"][()], 1 / X[train].std(0))
        assert h5["fold_0/coef"].shape == (1, 6)
    summary = probe_summary([rec])["datasets"]["None/syn"]
    assert summary["test_mean"] == rec["test"]["mean"]
    assert summary["baseline_mean"] == rec["baseline"]["accuracy"]["mean"]


@pytest.mark.parametrize("case, match", [
    ("nan", r"^syn: X: 1 NaN"),
    ("few", r"class '1' has 3 sample\(s\), fewer than the 4 CV folds"),
    ("empty", r"empty class\(es\) \['2'\]"),
    ("one", "only one class"),
])
def test_bad_input_is_named(case, match, tmp_path):
    X, y = _separable(40)
    classes = None
    if case == "nan":
        X[5, 2] = np.nan
    elif case == "few":
        y = np.array([0] * 37 + [1] * 3)
    elif case == "empty":
        classes = ["0", "1", "2"]
    else:
        y, classes = np.zeros(40, int), ["0"]
    with pytest.raises(InputError, match=match):
        fit_probe(_dataset(X, y, classes=classes), FAST)


def test_failed_fit_writes_nothing(tmp_path):
    X, y = _separable(24)
    ds = _dataset(X, y)
    write_probe_dataset(ds, tmp_path / "d.h5")
    with pytest.raises(InputError, match=r"^syn: y: class '0' has 12 sample\(s\), fewer than "
                                         r"the 20 CV folds"):
        probe_fit_stage(tmp_path / "d.h5", tmp_path / "f.json", tmp_path / "f.h5",
                      {**schema_defaults("probe.cv"), "n_folds": 20})
    with pytest.raises(InputError, match="unknown key"):
        probe_fit_stage(tmp_path / "d.h5", tmp_path / "f.json", tmp_path / "f.h5", {"folds": 3})
    with pytest.raises(InputError, match=r"probe.cv.inner_folds: missing"):
        probe_fit_stage(tmp_path / "d.h5", tmp_path / "f.json", tmp_path / "f.h5", {"n_folds": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5"]


def test_readout_check_passes_a_probe_of_the_readout_and_fails_a_misaligned_one(tmp_path):
    """The 'model' answers by a linear readout of x (argmax W x, 90% of prompts right): a probe
    of x reaches its accuracy; the same probe fitted on rows misaligned with their labels
    (a broken dataset builder) does not."""
    from saeflow.probe.summary import readout_check

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8))
    answer = (X @ rng.normal(size=(8, 3))).argmax(1)
    correct = rng.random(300) < 0.9  # the model's own accuracy on the answer
    rec_ok = probe_summary([_record(fit_probe(_dataset(X, answer), FAST), tmp_path, "ok")])
    rec_bad = probe_summary([_record(fit_probe(_dataset(X[rng.permutation(300)], answer), FAST),
                                     tmp_path, "bad")])
    ok = readout_check(rec_ok["datasets"]["None/ok"], correct)
    bad = readout_check(rec_bad["datasets"]["None/bad"], correct)
    assert ok["holds"] and ok["probe_accuracy"] > 0.85
    assert not bad["holds"] and bad["probe_accuracy"] < 0.6
    assert ok["model_accuracy_ci95"][0] < ok["model_accuracy"] < ok["model_accuracy_ci95"][1]


def _record(res, tmp_path, name):
    res.dataset.name = name
    write_probe_fit(res, tmp_path / f"{name}.json", tmp_path / f"{name}.h5", {})
    return json.loads((tmp_path / f"{name}.json").read_text())
