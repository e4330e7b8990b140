"""LPF correction: the published two-bucket numbers by hand, general/NNLS, the intervals' coverage
(Jeffreys posterior; ratios unbounded where the reference reaches 0), bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from saeflow.cli import main
from saeflow.labels import correction as C
from saeflow.labels.correction import compare_with_truth, correct, true_lpf
from saeflow.core.errors import InputError
from saeflow.labels.plots import plot_lpf
from saeflow.labels.study import load_study, parse_study, study_from_results, correction_study_stage

STUDY = """\
baseline_loss: 3.10
categories:
  catA: {n_predicted: 900,  ablated_loss: 3.30, confusion: {tp: 40, fp: 10, tn: 230, fn: 20}}
  catB: {n_predicted: 1200, ablated_loss: 3.90, confusion: {tp: 55, fp: 8,  tn: 210, fn: 27}}
"""


@pytest.fixture
def study_file(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY)
    return path


def test_two_bucket_reproduces_the_hand_computed_solution(study_file):
    result = correct(load_study(study_file), "two-bucket", n_boot=200, seed=0)
    r_a, r_b = 10 / 50, 8 / 63
    a11, a12 = 900 * (1 - r_a), 900 * r_a      # bucket A: pure A, contaminating B
    a21, a22 = 1200 * r_b, 1200 * (1 - r_b)    # bucket B: contaminating A, pure B
    d_a, d_b = 3.30 - 3.10, 3.90 - 3.10
    det = a11 * a22 - a12 * a21                # Cramer's rule
    lpf_a, lpf_b = (d_a * a22 - a12 * d_b) / det, (a11 * d_b - a21 * d_a) / det
    cats = result["categories"]
    assert cats["catA"]["lpf_corrected"] == pytest.approx(lpf_a, rel=1e-12)
    assert cats["catB"]["lpf_corrected"] == pytest.approx(lpf_b, rel=1e-12)
    assert cats["catA"]["lpf_naive"] == pytest.approx(d_a / 900)
    assert cats["catB"]["lpf_naive"] == pytest.approx(d_b / 1200)
    assert cats["catA"]["contamination"] == pytest.approx(r_a)
    assert cats["catB"]["contamination"] == pytest.approx(r_b)
    ratio = result["ratios"]["catB/catA"]
    assert ratio["corrected"] == pytest.approx(lpf_b / lpf_a) and ratio["naive"] == pytest.approx(3.0)
    # 2x2 condition number from the singular values: eigenvalues of M^T M.
    t = a11**2 + a12**2 + a21**2 + a22**2
    s_max, s_min = (math.sqrt((t + s * math.sqrt(t * t - 4 * det * det)) / 2) for s in (1, -1))
    assert result["condition_number"] == pytest.approx(s_max / s_min)
    for name in ("catA", "catB"):
        lo, hi = cats[name]["ci95"]
        assert lo < cats[name]["lpf_corrected"] < hi
    assert cats["catA"]["flags"] == (["ci_spans_zero"] if cats["catA"]["ci95"][0] <= 0 else [])


def test_few_labels_still_give_every_draw_a_system_and_degenerate_ones_are_dropped():
    # catB's validation holds 2 predicted-related features: a bootstrap of the counts drew
    # tp + fp = 0 in 13% of resamples; the posterior draws a contamination every time
    few = STUDY.replace("{tp: 55, fp: 8,  tn: 210, fn: 27}", "{tp: 1, fp: 1, tn: 230, fn: 20}")
    result = correct(parse_study(yaml.safe_load(few), "s.yaml"), "two-bucket", 500, seed=0)
    assert result["draws"]["n_failed"] == 0
    for cat in result["categories"].values():
        assert cat["ci95_n_dropped"] == 0 and "Beta(fp + 1/2, tp + 1/2)" in cat["ci95_method"]
    naive = correct(parse_study(yaml.safe_load(few), "s.yaml"), "naive", 50)
    assert naive["categories"]["catA"]["ci95_n_dropped"] is None  # no interval at all
    # a singular draw (here the second system) is left out as NaN, not solved
    systems = np.array([[[2.0, 1.0], [1.0, 2.0]], [[1.0, 1.0], [1.0, 1.0]]])
    solved = C.solve(systems, np.ones((2, 2)), "two-bucket")
    assert solved[0] == pytest.approx([1 / 3, 1 / 3]) and np.isnan(solved[1]).all()


def test_no_false_positive_in_the_sample_still_gives_an_interval():
    """A bucket whose sample shows no contaminant: contamination 0, but not known to be 0 (a
    bootstrap of the counts gave this a zero-width interval; coverage:
    tests/labels/test_correction_intervals.py)."""
    with_fp0 = STUDY.replace("{tp: 40, fp: 10, tn: 230, fn: 20}", "{tp: 69, fp: 0, tn: 206, fn: 25}")
    cat = correct(parse_study(yaml.safe_load(with_fp0), "s"), "two-bucket", 500)["categories"]["catA"]
    assert cat["contamination"] == 0 and cat["ci95"][1] - cat["ci95"][0] > 0.05 * cat["lpf_corrected"]


def test_draws_are_seeded_and_naive_has_no_label_uncertainty(study_file):
    study = load_study(study_file)
    assert correct(study, "two-bucket", 100, seed=3) == correct(study, "two-bucket", 100, seed=3)
    assert correct(study, "two-bucket", 100, seed=3) != correct(study, "two-bucket", 100, seed=4)
    naive = correct(study, "naive", 50)
    cat = naive["categories"]["catB"]
    assert cat["lpf_corrected"] == cat["lpf_naive"] == pytest.approx(0.8 / 1200)
    assert cat["ci95"] is None  # no human labels enter it, so resampling them gives no interval
    assert naive["draws"]["sources"] == []


MEASURED = STUDY.replace("confusion: {tp: 40", "delta_se: 0.02, confusion: {tp: 40").replace(
    "confusion: {tp: 55", "delta_se: 0.03, confusion: {tp: 55")


def test_measured_loss_noise_widens_every_interval_and_gives_naive_one(tmp_path):
    exact = parse_study(yaml.safe_load(STUDY), "exact.yaml")
    noisy = parse_study(yaml.safe_load(MEASURED), "noisy.yaml")
    assert noisy.delta_covariance[0] == ("catA", "catB")
    assert noisy.delta_covariance[1] == pytest.approx(np.diag([0.02**2, 0.03**2]))
    naive = correct(noisy, "naive", 2000, seed=0)
    lo, hi = naive["categories"]["catA"]["ci95"]
    # naive LPF = delta / n with delta ~ N(0.2, 0.02): the interval is delta's, scaled.
    assert (lo * 900, hi * 900) == pytest.approx((0.2 - 1.96 * 0.02, 0.2 + 1.96 * 0.02), abs=3e-3)
    assert naive["draws"]["sources"] == ["loss measurement"]
    a, b = (correct(s, "two-bucket", 1000, seed=0)["categories"]["catA"]["ci95"] for s in (exact, noisy))
    assert b[1] - b[0] > a[1] - a[0]
    assert correct(noisy, "two-bucket", 10)["draws"]["sources"] == ["validation labels",
                                                                        "loss measurement"]


def test_measured_intervals_cover_the_truth_at_their_level():
    """Simulated studies: known LPFs, losses measured with noise, validation labels drawn from
    the known contamination; the two-bucket 95% interval covers the truth ~95% of the time."""
    rng = np.random.default_rng(1)
    lpf, n, r, se = np.array([2e-4, 6e-4]), np.array([900, 1200]), np.array([0.2, 0.12]), 0.02
    true_delta = np.array([n[0] * ((1 - r[0]) * lpf[0] + r[0] * lpf[1]),
                           n[1] * (r[1] * lpf[0] + (1 - r[1]) * lpf[1])])
    covered = []
    for trial in range(150):
        cats = {}
        for j, name in enumerate(("catA", "catB")):
            fp = int(rng.binomial(60, r[j]))
            cats[name] = {"n_predicted": int(n[j]), "delta_se": se,
                          "ablated_loss": float(3.0 + true_delta[j] + rng.normal(0, se)),
                          "confusion": {"tp": 60 - fp, "fp": fp, "tn": 200, "fn": 20}}
        study = parse_study({"baseline_loss": 3.0, "categories": cats}, "sim")
        lo, hi = correct(study, "two-bucket", 300, seed=trial)["categories"]["catB"]["ci95"]
        covered.append(lo <= lpf[1] <= hi)
    assert 0.88 <= np.mean(covered) <= 0.995


@pytest.mark.parametrize("extra, field", [
    ("delta_covariance: {names: [catA], matrix: [[1]]}\n", "delta_covariance.names"),
    ("delta_covariance: {names: [catA, catB], matrix: [[1, 2], [2, 1]]}\n", "delta_covariance.matrix"),
    ("delta_covariance: {names: [catA, catB], matrix: [[1, 0]]}\n", "delta_covariance.matrix"),
])
def test_bad_measurement_covariance_names_the_field(extra, field):
    with pytest.raises(InputError, match=field):
        parse_study(yaml.safe_load(STUDY + extra), "s.yaml")
    partial = STUDY.replace("confusion: {tp: 40", "delta_se: 0.02, confusion: {tp: 40")
    with pytest.raises(InputError, match="categories.catB.delta_se"):
        parse_study(yaml.safe_load(partial), "s.yaml")


# --- ratios whose reference LPF may be 0 ---------------------------------------------------------

def test_ratio_over_a_reference_whose_interval_reaches_zero_is_unbounded():
    """catA's interval reaches 0, so catB/catA may be any size: no interval (Fieller). The
    old rule (drop the draws whose catA is not positive, take the percentiles of the rest) gives
    a finite one from the very same draws."""
    study = parse_study(yaml.safe_load(STUDY), "s.yaml")
    result = correct(study, "two-bucket", 2000, seed=0)
    assert result["categories"]["catA"]["ci95"][0] < 0 < result["categories"]["catA"]["lpf_corrected"]
    ratio = result["ratios"]["catB/catA"]
    assert ratio["ci95"] is None and ratio["ci95_unbounded"] is True and ratio["corrected"] > 0
    assert "reaches 0" in ratio["note"] and "unbounded (Fieller)" in ratio["note"]
    draws = C.posterior_draws(study, "two-bucket", 2000, 0)
    positive = draws[:, 0] > 0
    old = np.percentile(draws[positive, 1] / draws[positive, 0], [2.5, 97.5])
    assert np.isfinite(old).all() and 0 < (~positive).sum() < 2000  # finite, after dropping


def test_ratio_is_withheld_when_the_reference_lpf_is_not_positive():
    study = parse_study(yaml.safe_load(STUDY.replace("3.30", "3.12")), "s.yaml")
    result = correct(study, "two-bucket", n_boot=50)
    assert result["categories"]["catA"]["lpf_corrected"] < 0
    assert "negative" in result["categories"]["catA"]["flags"]
    ratio = result["ratios"]["catB/catA"]
    assert ratio["corrected"] is None and ratio["ci95"] is None and "not positive" in ratio["note"]


def general_study(true_lpf, sizes, rows, baseline=2.0):
    """A study whose ablated losses follow exactly from ``true_lpf`` and the row composition."""
    names = [*true_lpf]
    comp = np.zeros((len(names), len(names)))
    for predicted, human, count in rows:
        for b in predicted or ["other"]:
            for t in human or ["other"]:
                comp[names.index(b), names.index(t)] += count / len(human or ["other"])
    comp /= comp.sum(1, keepdims=True)
    losses = baseline + np.array(sizes) * (comp @ np.array(list(true_lpf.values())))
    cats = {n: {"n_predicted": s, "ablated_loss": float(loss)}
            for n, s, loss in zip(names[:-1], sizes, losses)}
    return {"baseline_loss": baseline, "categories": cats,
            "other": {"n_predicted": sizes[-1], "ablated_loss": float(losses[-1])},
            "validation": [{"predicted": p, "human": h, "count": c} for p, h, c in rows]}


def test_general_recovers_the_truth_it_was_built_from():
    truth = {"a": 3e-4, "b": 1e-4, "c": 5e-4, "other": 2e-5}
    rows = [(["a"], ["a"], 30), (["a"], ["b"], 5), (["a"], [], 5), (["b"], ["b"], 20),
            (["b"], ["a", "c"], 4), (["c"], ["c"], 25), (["c"], [], 3), (["a", "c"], ["c"], 2),
            ([], [], 150), ([], ["b"], 10), ([], ["a"], 6), ([], ["c"], 1)]
    raw = general_study(truth, [800, 600, 400, 700], rows)
    result = correct(parse_study(raw, "g.yaml"), "general", n_boot=100)
    for name, value in truth.items():
        assert result["categories"][name]["lpf_corrected"] == pytest.approx(value, rel=1e-8)
    assert result["categories"]["a"]["contamination"] == pytest.approx(12 / 42)
    assert set(result["ratios"]) == {"b/a", "c/a", "other/a"}


def test_general_equals_two_bucket_when_buckets_only_swap_with_each_other(study_file):
    raw = yaml.safe_load(STUDY)
    raw["other"] = {"n_predicted": 1000, "ablated_loss": 3.15}
    raw["validation"] = [{"predicted": ["catA"], "human": ["catA"], "count": 40},
                         {"predicted": ["catA"], "human": ["catB"], "count": 10},
                         {"predicted": ["catB"], "human": ["catB"], "count": 55},
                         {"predicted": ["catB"], "human": ["catA"], "count": 8},
                         {"predicted": [], "human": [], "count": 187}]
    general = correct(parse_study(raw, "s"), "general", n_boot=20)["categories"]
    two = correct(load_study(study_file), "two-bucket", n_boot=20)["categories"]
    for name in ("catA", "catB"):
        assert general[name]["lpf_corrected"] == pytest.approx(two[name]["lpf_corrected"], rel=1e-9)
    assert general["other"]["lpf_corrected"] == pytest.approx(0.05 / 1000)


@pytest.mark.parametrize(("edit", "field"), [
    (lambda s: s.replace("n_predicted: 900", "n_predicted: 0"), "categories.catA.n_predicted"),
    (lambda s: s.replace("n_predicted: 900", "n_predicted: -3"), "categories.catA.n_predicted"),
    (lambda s: s.replace("tp: 40", "tp: -1"), "categories.catA.confusion.tp"),
    (lambda s: s.replace("ablated_loss: 3.30, ", ""), "categories.catA.ablated_loss"),
    (lambda s: s.replace("baseline_loss: 3.10", "baseline_loss: high"), "baseline_loss"),
    (lambda s: s.replace("tp: 40, fp: 10", "tp: 0, fp: 0"), "categories.catA.confusion"),
    (lambda s: s.replace("fp: 10", "fp: 40").replace("tp: 55, fp: 8", "tp: 8, fp: 8")
     .replace("n_predicted: 1200", "n_predicted: 900"), "categories"),  # r_A + r_B = 1
    (lambda s: s + "  catC: {n_predicted: 5, ablated_loss: 3.2}\n", "categories"),
    (lambda s: s.replace("categories:", "categories: [oops,"), "line 4"),  # where YAML notices
])
def test_bad_study_is_one_line_exit_2_and_no_output(tmp_path, capsys, edit, field):
    path = tmp_path / "study.yaml"
    path.write_text(edit(STUDY))
    out = tmp_path / "out.json"
    assert main(["correct", str(path), "--method", "two-bucket", "--json", str(out),
                 "--n-boot", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"saeflow: error: {path}: {field}: ") and "\n" not in err
    assert not out.exists()


def test_singular_message_and_general_requirements(study_file):
    singular = STUDY.replace("fp: 10", "fp: 40").replace("tp: 55, fp: 8", "tp: 8, fp: 8")
    with pytest.raises(InputError, match="categories: singular two-bucket system"):
        correct(parse_study(yaml.safe_load(singular), "s"), "two-bucket", 10)
    with pytest.raises(InputError, match="other: general needs 'other'"):
        correct(load_study(study_file), "general", 10)
    raw = general_study({"a": 1e-4, "other": 1e-5}, [10, 10], [(["a"], ["a"], 3), ([], [], 3)])
    raw["validation"] = [{"predicted": ["a"], "human": ["a"], "count": 3}]
    with pytest.raises(InputError, match=r"validation: no validation feature predicted in \['other'\]"):
        correct(parse_study(raw, "s"), "general", 10)
    raw["validation"] = [{"predicted": ["zzz"], "human": [], "count": 3}]
    with pytest.raises(InputError, match=r"validation\[0\].predicted: expected a list of category names"):
        parse_study(raw, "s")


def test_cli_writes_the_contract(study_file, tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["correct", str(study_file), "--method", "two-bucket", "--json", str(out),
                 "--n-boot", "50"]) == 0
    data = json.loads(out.read_text())
    for key in ("lpf_naive", "lpf_corrected", "contamination", "ci95", "ci95_method", "flags"):
        assert key in data["categories"]["catA"]
    assert data["ratios"]["catB/catA"]["ci95_unbounded"] is True and data["condition_number"] > 1
    assert "catB/catA: corrected=" in capsys.readouterr().out
    assert data["provenance"]["config"]["method"] == "two-bucket"


def test_study_from_results_and_truth_comparison(tmp_path):
    ablation = {"baseline_loss": 1.0, "sets": {
        "a": {"n_features": 10, "loss": 1.5, "delta": 0.5},
        "b": {"n_features": 20, "loss": 1.2, "delta": 0.2},
        "other": {"n_features": 15, "loss": 1.03, "delta": 0.03},
        "truth:a": {"n_features": 8, "loss": 1.48, "delta": 0.48},
        "truth:b": {"n_features": 20, "loss": 1.1, "delta": 0.1}}}
    agreements = {"a": {"tp": 9, "fp": 1, "tn": 80, "fn": 2}, "b": {"tp": 10, "fp": 5, "tn": 70, "fn": 1}}
    raw = study_from_results(ablation, agreements)
    assert raw["categories"]["a"] == {"n_predicted": 10, "ablated_loss": 1.5,
                                      "confusion": {"tp": 9, "fp": 1, "tn": 80, "fn": 2}}
    result = correct(parse_study(yaml.safe_load(yaml.safe_dump(raw)), "s"), "two-bucket", 100)
    truth = true_lpf(ablation)
    assert truth == pytest.approx({"a": 0.06, "b": 0.005})
    summary = compare_with_truth({"two-bucket": result}, truth)
    row = summary["methods"]["two-bucket"]["categories"]["a"]
    assert row["naive"]["abs_error"] == pytest.approx(abs(0.05 - 0.06))
    assert row["naive"]["rel_error"] == pytest.approx(abs(0.05 - 0.06) / 0.06)
    ci = result["categories"]["a"]["ci95"]
    assert row["corrected"]["covers_truth"] == (ci[0] <= 0.06 <= ci[1])
    assert summary["methods"]["two-bucket"]["ratios"]["b/a"]["true"] == pytest.approx(0.005 / 0.06)
    plot_lpf(result, tmp_path / "lpf.png", truth)
    assert (tmp_path / "lpf.png").read_bytes()[:4] == b"\x89PNG"


def test_study_stage_builds_a_study_the_cli_accepts(tmp_path):
    def dump(name, data):
        (tmp_path / name).write_text(json.dumps(data))
        return tmp_path / name

    ablation = dump("ablation.json", {"baseline_loss": 2.0, "sets": {
        "a": {"n_features": 4, "loss": 2.4, "delta": 0.4},
        "b": {"n_features": 3, "loss": 2.1, "delta": 0.1},
        "other": {"n_features": 3, "loss": 2.03, "delta": 0.03}}})
    predicted = {"a": {1, 2, 3, 4}, "b": {5, 6, 7}}
    human = {"a": {1, 2, 3, 6}, "b": {5, 6, 4}}
    classified, humans, agreements = {}, {}, {}
    for c in ("a", "b"):
        classified[c] = dump(f"m_{c}.json", {"records": [
            {"feature_index": f, "label": "related" if f in predicted[c] else "not-related"}
            for f in range(1, 13)]})
        humans[c] = dump(f"h_{c}.json", {"records": [
            {"_row_id": i, "feature_index": f, "label": "related" if f in human[c] else "not-related"}
            for i, f in enumerate(range(1, 13))]})
        agreements[c] = dump(f"g_{c}.json", {"tp": 3, "fp": 1, "tn": 7, "fn": 1})
    correction_study_stage(ablation, agreements, classified, humans, tmp_path / "study.yaml")
    raw = yaml.safe_load((tmp_path / "study.yaml").read_text())
    assert raw["categories"]["b"]["n_predicted"] == 3 and raw["other"]["n_predicted"] == 3
    assert {"predicted": ["a"], "human": ["b"], "count": 1} in raw["validation"]  # feature 4
    assert sum(r["count"] for r in raw["validation"]) == 12
    for method in ("naive", "two-bucket", "general"):
        assert main(["correct", str(tmp_path / "study.yaml"), "--method", method,
                     "--json", str(tmp_path / f"{method}.json"), "--n-boot", "20"]) == 0


def test_truth_comparison_judges_coverage_given_the_prompts():
    """The toy truth shares the eval prompts: prompt noise cancels in the error, so the interval
    the summary judges coverage by resamples the labels only, and is narrower than the full one
    whenever the loss increases were measured with noise."""
    truth = {"a": 3e-4, "b": 1e-4, "other": 2e-5}
    rows = [(["a"], ["a"], 30), (["a"], ["b"], 6), (["a"], [], 4), (["b"], ["b"], 25),
            (["b"], ["a"], 5), ([], [], 150), ([], ["a"], 5), ([], ["b"], 3)]
    raw = general_study(truth, [500, 400, 600], rows)
    raw["delta_covariance"] = {"names": ["a", "b", "other"],
                               "matrix": (np.eye(3) * 0.02 ** 2).tolist()}
    study = parse_study(raw, "g.yaml")
    results = {m: correct(study, m, n_boot=300) for m in ("naive", "general")}
    summary = compare_with_truth(results, truth, study, n_boot=300)
    for name in ("a", "b"):
        general = summary["methods"]["general"]["categories"][name]["corrected"]
        full, given = general["ci95"], general["ci95_given_prompts"]
        assert given[1] - given[0] < 0.5 * (full[1] - full[0])
        assert general["covers_truth_given_prompts"] == (given[0] <= truth[name] <= given[1])
        # naive uses no labels: no interval given the prompts to judge it by
        assert summary["methods"]["naive"]["categories"][name]["corrected"]["ci95_given_prompts"] is None
    assert "validation" in summary["planted_noise"] and "labels only" in summary["intervals"]["ci95_given_prompts"]
    assert summary["methods"]["general"]["categories"]["a"]["contamination"] == pytest.approx(10 / 40)
