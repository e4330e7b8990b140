"""Target `validation` on the toy DAG (config/test.yaml): the corrections against planted label
noise, measured on the trained toy model. The world is small and its LPFs are carried by a few
features, so only what holds whatever the luck is asserted: the planted buckets are the ones
measured, the flags follow the planted conditions, and naive's contamination error (against
the members its bucket held) is far above general's when contaminants come from `other`."""

import json

import pytest

from saeflow.testing.workspace import TEST_CONFIGS, e2e_config, run_snakemake

pytestmark = pytest.mark.slow


def check_validation(result, cfg):
    """The assertions, on a validation.json already read (also run by hand on a checkout's)."""
    methods = cfg["labels"]["correction"]["methods"]
    conds = {c["key"]: c for c in result["conditions"]}
    assert set(conds) == {"none@0"} | {f"{s}@{level:g}" for s in ("category", "other")
                                       for level in (0.1, 0.2, 0.3, 0.5)}
    for name, truth in result["true_lpf"].items():
        assert truth["lpf"] == pytest.approx(truth["delta"] / truth["n_members"])
        assert truth["how"].startswith("measured, not assumed")
    for key, cond in conds.items():
        assert cond["n_replicates"] == 20
        for method in methods:
            row = cond["methods"][method]
            assert row["n_solved"] + row["n_failed"] == 20
            assert row["assumption_violated"] == (
                (method == "naive" and key != "none@0")
                or (method == "two-bucket" and key.startswith("other@")))
            for cell in row["categories"].values():
                lo, hi = cell["coverage_ci95"]
                assert lo - 1e-9 <= cell["coverage"] <= hi + 1e-9
                # coverage is over the replicates whose interval exists (n_intervals says how
                # many): a singular system or a degenerate bootstrap leaves none
                assert 0 < cell["n_intervals"] <= row["n_solved"]
    for method in ("naive", "two-bucket"):  # nothing planted: the estimate is the bucket's LPF
        for cell in conds["none@0"]["methods"][method]["categories"].values():
            assert abs(cell["in_bucket"]["bias"]) < 1e-12 and cell["in_bucket"]["coverage"] == 1.0
    for level in ("0.2", "0.3"):
        cells = {m: conds[f"other@{level}"]["methods"][m]["categories"]["digits"] for m in methods}
        # a measured truth below 0 is outside general's range (NNLS) and must be flagged so;
        # within its range general must beat naive against the members its bucket held
        if cells["general"]["true_lpf"] < 0:
            assert cells["general"]["outside_valid_range"], cells["general"]
            assert "digits" in result["verdict"]["general"]["outside_valid_range_for"]
        else:
            assert abs(cells["general"]["in_bucket"]["bias"]) < \
                0.5 * abs(cells["naive"]["in_bucket"]["bias"])
        assert cells["naive"]["in_bucket"]["bias"] != 0  # contaminants move the naive estimate
    assert "other@0.3" in result["verdict"]["two-bucket"]["assumption_violated_in"]


def test_validation_target_writes_the_contract(toy_run, tmp_path):
    import shutil

    # on a copy: the shared run's results tree is compared file for file by other tests
    work = tmp_path / "work"
    shutil.copytree(toy_run, work, symlinks=True)
    run_snakemake(work, "validation", "--cores", "2", "--resources", "gpu=1",
                  "--configfile", *TEST_CONFIGS)
    path = work / "results" / "toy" / "correction" / "validation.json"
    check_validation(json.loads(path.read_text()), e2e_config())
