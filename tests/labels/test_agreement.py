"""Classifier-vs-human agreement: join rules, metrics, intervals, bad input, the CLI, the figure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, matthews_corrcoef

from saeflow.labels.agreement import (
    agreement, agreement_metrics, cohen_kappa, joint_validation, phi_coefficient, wilson_interval,
)
from saeflow.cli import main
from saeflow.core.errors import InputError
from saeflow.labels.plots import plot_confusion


def test_wilson_interval_matches_the_closed_form():
    lo, hi = wilson_interval(8, 10)
    # Wilson (1927) for 8/10 at z = 1.96: centre 0.7167, half-width 0.2265.
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 0) is None


def test_phi_and_kappa_agree_with_sklearn():
    rng = np.random.default_rng(0)
    human = rng.integers(0, 2, 200)
    model = np.where(rng.random(200) < 0.8, human, 1 - human)
    tp = int(((model == 1) & (human == 1)).sum())
    tn = int(((model == 0) & (human == 0)).sum())
    fp = int(((model == 1) & (human == 0)).sum())
    fn = int(((model == 0) & (human == 1)).sum())
    assert phi_coefficient(tp, tn, fp, fn) == pytest.approx(matthews_corrcoef(human, model))
    assert cohen_kappa(tp, tn, fp, fn) == pytest.approx(cohen_kappa_score(human, model))
    metrics = agreement_metrics(human, model, n_boot=300, seed=1)
    assert metrics["phi_ci95"][0] < metrics["phi"] < metrics["phi_ci95"][1]
    assert metrics == agreement_metrics(human, model, n_boot=300, seed=1)  # seeded
    assert phi_coefficient(5, 0, 0, 0) is None and cohen_kappa(5, 0, 0, 0) is None
    assert metrics["phi_ci95_n_dropped"] == metrics["kappa_ci95_n_dropped"] == 0
    assert metrics["accuracy_ci95_method"] == "Wilson score interval"
    assert metrics["phi_ci95_method"].startswith("percentile bootstrap")


def test_undefined_bootstrap_draws_are_counted_next_to_their_interval():
    # one related feature in 10: a resample misses it with probability 0.9^10 = 0.35, and
    # then the human margin is empty, so phi is undefined (kappa too: both raters agree on 0)
    human = np.array([1] + [0] * 9)
    model = np.array([1, 1] + [0] * 8)
    metrics = agreement_metrics(human, model, n_boot=1000, seed=2)
    rng, dropped = np.random.default_rng(2), 0
    for _ in range(1000):
        pick = rng.integers(0, 10, 10)
        dropped += int(human[pick].sum() == 0)
    assert metrics["phi_ci95_n_dropped"] == dropped and 280 < dropped < 420
    assert 0 < metrics["kappa_ci95_n_dropped"] <= dropped


def write(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def files(tmp_path):
    human = write(tmp_path / "human.json", {"records": [
        {"_row_id": i, "feature_index": f, "feature_id": f"s-{f}", "description": "d", "label": lab}
        for i, (f, lab) in enumerate([(1, "related"), (2, "related"), (3, "not-related"),
                                      (4, "not-related"), (5, "related"), (99, "related")])]})
    model = write(tmp_path / "model.json", {"category": "c", "records": [
        {"feature_id": f"s-{f}", "feature_index": f, "description": "d", "label": lab}
        for f, lab in [(1, "related"), (2, "not-related"), (3, "related"), (4, "not-related"),
                       (5, "unknown"), (6, "related"), (7, "related")]]})
    return human, model


def test_agreement_joins_counts_and_reports_unmapped_labels(files):
    metrics, merged = agreement(*files, n_boot=50)
    assert (metrics["tp"], metrics["fn"], metrics["fp"], metrics["tn"]) == (1, 1, 1, 1)
    assert metrics["n"] == 4 and metrics["accuracy"] == 0.5
    assert metrics["precision"] == 0.5 and metrics["recall"] == 0.5
    assert metrics["unmapped_labels"] == {"human": {}, "model": {"unknown": 1}}
    assert metrics["n_unmatched"] == 1 and metrics["n_dropped"] == 1
    assert metrics["accuracy_ci95"] == pytest.approx(wilson_interval(2, 4))
    assert list(merged.columns) == ["feature_index", "feature_id", "description", "human_label",
                                    "model_label", "human", "model"]
    assert len(merged) == 5


@pytest.mark.parametrize("records, field, problem", [
    ([{"feature_index": 1, "label": "related"}, {"feature_index": 2, "label": "skip"}],
     "records[1].label", "'skip' is not a human answer"),
    ([{"feature_index": 1, "label": "related"}, {"feature_index": 1, "label": "not-related"}],
     "records[1]", "labelled again (conflicting labels"),
    ([{"feature_index": 1, "label": "related"}, {"feature_index": 1, "label": "related"}],
     "records[1]", "labelled again (the same label twice"),
])
def test_human_labels_outside_the_two_answers_or_twice_are_refused(tmp_path, files, capsys,
                                                                    records, field, problem):
    human = write(tmp_path / "h.json", records)
    before = human.read_bytes()
    out = tmp_path / "a.json"
    code = main(["agreement", "--human", str(human), "--model", str(files[1]), "--json", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists() and human.read_bytes() == before
    assert err.startswith(f"saeflow: error: {human}: {field}: ") and problem in err
    assert "\n" not in err


def test_a_non_positive_bootstrap_count_is_a_usage_error(files, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["agreement", "--human", str(files[0]), "--model", str(files[1]),
              "--json", str(tmp_path / "a.json"), "--n-boot", "-5"])
    assert stop.value.code == 2 and "--n-boot: must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()


def test_join_falls_back_to_feature_id(tmp_path):
    human = write(tmp_path / "h.json", [{"feature_id": "alpha", "label": "related"},
                                        {"feature_id": "beta", "label": "not-related"}])
    model = write(tmp_path / "m.json", {"alpha": {"label": "related"}, "beta": {"label": "related"}})
    metrics, _ = agreement(human, model, n_boot=10)
    assert (metrics["tp"], metrics["fp"], metrics["n"]) == (1, 1, 2)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, files, capsys):
    human, model = files
    dup = write(tmp_path / "dup.json", [{"feature_index": 1, "label": "related"},
                                        {"feature_index": 1, "label": "not-related"},
                                        {"feature_index": 2, "label": "related"}])
    out, csv = tmp_path / "a.json", tmp_path / "a.csv"
    code = main(["agreement", "--human", str(human), "--model", str(dup), "--json", str(out),
                 "--merged", str(csv)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists() and not csv.exists()
    assert err.strip() == f"saeflow: error: {dup}: feature_index: duplicate model rows for [1]"
    bad = tmp_path / "bad.json"
    bad.write_text('{"records": [')
    with pytest.raises(InputError, match="bad.json: line 1: malformed JSON"):
        agreement(human, bad)
    write(bad, [{"feature_index": 1}])
    with pytest.raises(InputError, match=r"bad.json: records\[0\].label: missing"):
        agreement(human, bad)
    write(bad, {"records": []})
    with pytest.raises(InputError, match="bad.json: records: no labelled rows"):
        agreement(human, bad)
    write(bad, [{"feature_index": 50, "label": "related"}])
    with pytest.raises(InputError, match="feature_index: no labelled feature matches"):
        agreement(human, bad)


def test_cli_writes_metrics_with_provenance_and_merged_csv(tmp_path, files):
    out, csv = tmp_path / "a.json", tmp_path / "a.csv"
    assert main(["agreement", "--human", str(files[0]), "--model", str(files[1]),
                 "--json", str(out), "--merged", str(csv), "--n-boot", "20"]) == 0
    data = json.loads(out.read_text())
    assert data["tp"] == 1 and "provenance" in data and "kappa_ci95" in data
    table = pd.read_csv(csv)
    assert table.set_index("feature_index").loc[3, "model_label"] == "related"


def test_joint_validation_rows():
    humans = {"a": [{"feature_index": i, "label": lab} for i, lab in
                    enumerate(["related", "related", "not-related", "not-related", "unknown"])],
              "b": [{"feature_index": i, "label": lab} for i, lab in
                    enumerate(["not-related", "related", "related", "not-related", "related"])]}
    models = {"a": [{"feature_index": i, "label": lab} for i, lab in
                    enumerate(["related", "related", "related", "not-related", "related"])],
              "b": [{"feature_index": i, "label": lab} for i, lab in
                    enumerate(["not-related", "not-related", "related", "not-related", "related"])]}
    rows = joint_validation(models, humans)
    assert rows == [{"predicted": [], "human": [], "count": 1},
                    {"predicted": ["a"], "human": ["a"], "count": 1},
                    {"predicted": ["a"], "human": ["a", "b"], "count": 1},
                    {"predicted": ["a", "b"], "human": ["b"], "count": 1}]


def test_confusion_figure_is_a_png(tmp_path, files):
    metrics, _ = agreement(*files, n_boot=10)
    plot_confusion({"digits": metrics, "quotes": metrics}, tmp_path / "fig" / "confusion.png")
    assert (tmp_path / "fig" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
