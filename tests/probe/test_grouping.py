"""Folds grouped by a prompt-file column (``probe.cv.group_by``): whole groups per fold, the
checks that name the key, the metadata-only baseline, and the readout check it sharpens."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from saeflow.core.config import schema_defaults
from saeflow.core.errors import InputError
from saeflow.probe.crossval import ProbeConfig, check_groups, make_folds
from saeflow.probe.dataset import write_probe_dataset
from saeflow.probe.fit import Grouping, fit_probe
from saeflow.probe.fit_files import probe_fit_stage
from saeflow.probe.strategies import build_probe_dataset
from saeflow.probe.summary import probe_summary, readout_check
from test_probe_data import write_toy_files
from test_probing import _dataset, _record

CFG = ProbeConfig.from_dict({**schema_defaults("probe.cv"), "n_folds": 4, "inner_folds": 2,
                             "Cs": [0.1, 10.0], "alphas": [1.0, 10.0], "n_permutations": 3,
                             "seed": 2, "group_by": "template"})


def test_group_folds_keep_groups_whole_and_spread_each_class():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.array([f"t{i:02d}" for i in range(10)]), rng.integers(3, 9, 10))
    # classes follow the group (as error types follow templates), with some mixing
    y = np.array([int(g[1:]) % 3 for g in groups])
    y[rng.random(y.size) < 0.2] = 2
    idx = np.arange(y.size)
    folds = make_folds(idx, y, 4, seed=1, groups=groups)
    assert all(np.unique(folds[groups == g]).size == 1 for g in np.unique(groups))
    assert np.bincount(folds, minlength=4).min() > 0
    for c in range(3):  # a class of >= 2 groups is in training whenever it is tested
        for k in range(4):
            assert (y[folds != k] == c).any()
    perm = rng.permutation(y.size)  # row order is irrelevant; the seed is not
    np.testing.assert_array_equal(make_folds(idx[perm], y[perm], 4, 1, groups[perm]), folds[perm])
    assert any(not np.array_equal(make_folds(idx, y, 4, s, groups), folds) for s in (2, 3, 4))
    cont = make_folds(idx, None, 4, seed=1, groups=groups)  # continuous: plain group k-fold
    assert all(np.unique(cont[groups == g]).size == 1 for g in np.unique(groups))
    assert np.bincount(cont, minlength=4).min() > 0


@pytest.mark.parametrize("groups, y, match", [
    (np.repeat(["a", "b", "c"], 4), None, r"^acts.h5: probe.cv.group_by: dataset 'd': 3 "
     r"group\(s\) a, b, c, fewer than the 4 folds \(probe.cv.n_folds\)"),
    (np.repeat(["a", "b", "c", "d", "e"], 4), np.repeat([0, 0, 1, 0, 1], 4), None),
    (np.repeat(["a", "b", "c", "d", "e"], 4), np.repeat([0, 0, 1, 0, 0], 4),
     r"^acts.h5: probe.cv.group_by: dataset 'd': class 'yes' lives in one group \(c\)"),
])
def test_group_checks_name_the_key_and_the_file(groups, y, match):
    if match is None:
        check_groups(groups, y, 4, ("acts.h5", "d"), ["no", "yes"])
        return
    with pytest.raises(InputError, match=match):
        check_groups(groups, y, 4, ("acts.h5", "d"), ["no", "yes"])


def test_grouped_fit_tests_unseen_groups_and_reports_the_metadata_baseline():
    """The label is the group's, and X carries the group only: prompt folds score it high,
    grouped folds near chance, and the metadata-only baseline (the group's one-hot, same
    folds) scores what the probe does."""
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(12), 8)
    y = groups % 2
    X = np.eye(12)[groups] @ rng.normal(size=(12, 6)) + 0.1 * rng.normal(size=(96, 6))
    ds = _dataset(X, y)
    ungrouped = fit_probe(ds, CFG)
    grouped = fit_probe(ds, CFG, grouping=Grouping(groups, "template", "acts.h5"))
    for k in range(4):  # no group on both sides of a fold
        test = grouped.folds == k
        assert not set(groups[test]) & set(groups[~test])
    acc = grouped.metrics["accuracy"]["test"]["mean"]
    assert ungrouped.metrics["accuracy"]["test"]["mean"] > 0.9 and acc < 0.75
    meta = grouped.metadata
    assert meta["column"] == "template" and meta["n_groups"] == 12 and meta["metric"] == "accuracy"
    assert abs(meta["mean"] - acc) < 0.15 and meta["test"]["interval_method"]
    assert ungrouped.metadata is None


def _readout_world(seed: int = 0, n_templates: int = 12, per: int = 25):
    """Templates fix the concept for 95% of prompts; the model answers from a vector x that
    carries its answer linearly (and the template), right for 90% of prompts; a vector of
    the template alone (its embedding, plus noise) is what a probe that learns only
    templates sees."""
    rng = np.random.default_rng(seed)
    template = np.repeat(np.arange(n_templates), per)
    label = np.where(rng.random(template.size) < 0.95, template % 3, rng.integers(0, 3,
                                                                                template.size))
    correct = rng.random(template.size) < 0.9
    answer = np.where(correct, label, (label + 1 + rng.integers(0, 2, label.size)) % 3)
    noise = 0.3 * rng.normal(size=(template.size, 16))
    x_template = np.eye(n_templates)[template] @ rng.normal(size=(n_templates, 16)) + noise
    x = 3.0 * np.eye(3)[answer] @ rng.normal(size=(3, 16)) + x_template
    return template, label, correct, x, x_template


def test_readout_check_fails_a_probe_that_only_learns_templates(tmp_path):
    template, label, correct, x, x_template = _readout_world()
    grouping = Grouping(template, "template", "acts.h5")
    entries = {}
    for name, X, g in (("readout", x, grouping), ("templates", x_template, grouping),
                       ("templates_ungrouped", x_template, None)):
        rec = _record(fit_probe(_dataset(X, label), CFG, grouping=g), tmp_path, name)
        entries[name] = probe_summary([rec])["datasets"][f"None/{name}"]
    ok = readout_check(entries["readout"], correct)
    assert ok["holds"] and ok["reaches_model"] and ok["beats_metadata"]
    bad = readout_check(entries["templates"], correct)  # unseen templates: near chance
    assert not bad["holds"] and not bad["reaches_model"] and not bad["beats_metadata"]
    assert bad["metadata_baseline"] == entries["templates"]["metadata_baseline"]["mean"]
    # on prompt folds the same template-only probe would pass: why the toy groups by template
    assert readout_check(entries["templates_ungrouped"], correct)["holds"]


def _with_templates(act, templates):
    with h5py.File(act, "r+") as h5:
        del h5["meta/template"]
        h5.create_dataset("meta/template", data=np.asarray(templates, dtype=object),
                          dtype=h5py.string_dtype("utf-8"))


def test_probe_fit_stage_groups_by_the_activation_files_column(tmp_path):
    act, codes = write_toy_files(tmp_path, n=60)
    _with_templates(act, [f"t{(i // 3) % 6}" for i in range(60)])  # labels are i % 3
    cv = {**CFG.__dict__, "Cs": [1.0], "alphas": [1.0]}
    sae = build_probe_dataset({"name": "s", "strategy": "sae-to-concept", "layers": "1",
                               "positions": ["mid"]}, act, codes)  # CSR inputs
    write_probe_dataset(sae, tmp_path / "s.h5")
    probe_fit_stage(tmp_path / "s.h5", tmp_path / "s.json", tmp_path / "s_fit.h5", cv,
                    activations=act)
    assert json.loads((tmp_path / "s.json").read_text())["metadata_baseline"]["n_groups"] == 6
    for name in ("s.h5", "s.json", "s_fit.h5"):
        (tmp_path / name).unlink()
    ds = build_probe_dataset({"name": "h", "strategy": "hidden-to-concept", "layers": "1",
                              "positions": ["mid"]}, act)
    write_probe_dataset(ds, tmp_path / "d.h5")
    probe_fit_stage(tmp_path / "d.h5", tmp_path / "f.json", tmp_path / "f.h5", cv,
                    activations=act)
    rec = json.loads((tmp_path / "f.json").read_text())
    assert rec["cv"]["group_by"] == "template" and rec["metadata_baseline"]["n_groups"] == 6
    # every label occurs in every template here, so the template says nothing
    assert rec["metadata_baseline"]["mean"] < 0.6 < rec["test"]["mean"]
    with h5py.File(tmp_path / "f.h5") as h5:
        folds = h5["folds"][()]
    t = (ds.sample_index // 3) % 6
    assert all(np.unique(folds[t == g]).size == 1 for g in range(6))
    (tmp_path / "f.json").unlink()
    (tmp_path / "f.h5").unlink()
    for column, match in (("family", r"meta/family: missing: probe.cv.group_by names"),
                          ("label", r"probe.cv.group_by: dataset 'h': 3 group\(s\)")):
        with pytest.raises(InputError, match=match):
            probe_fit_stage(tmp_path / "d.h5", tmp_path / "f.json", tmp_path / "f.h5",
                            {**cv, "group_by": column}, activations=act)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["d.h5", "heldout_seen.h5", "codes_heldout_seen.h5"])


def test_group_by_must_name_a_column():
    with pytest.raises(InputError, match="probe.cv.group_by: empty"):
        ProbeConfig.from_dict({**schema_defaults("probe.cv"), "group_by": " "})


def test_readout_check_compares_the_model_on_the_probes_own_prompts(tmp_path):
    from saeflow.probe.fit_files import write_probe_fit
    from saeflow.probe.summary import probe_summary_stage

    act, _ = write_toy_files(tmp_path, n=60)  # prompt 0 lacks position 'first'
    with h5py.File(act) as h5:
        correct = h5["meta/model_correct"][()].astype(bool)
    ds = build_probe_dataset({"name": "h", "strategy": "hidden-to-concept", "layers": "1",
                              "positions": ["first", "mid"]}, act)
    write_probe_dataset(ds, tmp_path / "d.h5")
    cheap = ProbeConfig.from_dict({**CFG.__dict__, "group_by": None, "Cs": [1.0]})
    write_probe_fit(fit_probe(ds, cheap), tmp_path / "f.json", tmp_path / "f.h5")
    summary = probe_summary_stage([tmp_path / "f.json"], [], tmp_path / "s.json",
                                  readout={"heldout_seen": ["h"]},
                                  activations={"heldout_seen": str(act)},
                                  readout_data=[str(tmp_path / "d.h5")])
    check = summary["datasets"]["heldout_seen/h"]["readout_check"]
    assert check["n_prompts"] == 59 and check["model_accuracy"] == pytest.approx(correct[1:].mean())
    assert check["beats_metadata"] is None and "not grouped" in check["note"]
