"""Target `replicates`, small: the shared toy run (config/test.yaml) as replicate 0 and one more
replicate with every seed shifted by 1, the patch stage only (what CI can afford; the docs'
table is the default config's 5 replicates)."""

import json
import shutil

import pytest

from saeflow.core.io import read_yaml
from saeflow.testing.workspace import TEST_CONFIGS, e2e_config, run_snakemake
from saeflow.toy.replicates import headline

pytestmark = pytest.mark.slow


def test_replicates_rerun_the_dag_over_seeds_and_report_the_spread(toy_run, tmp_path):
    # on a copy: the shared run's results tree is compared file for file by other tests
    work = tmp_path / "work"
    shutil.copytree(toy_run, work, symlinks=True)
    (work / "small.yaml").write_text("replicates: {n: 2}\nstages: [patch]\n")
    run_snakemake(work, "replicates", "--cores", "2", "--configfile", *TEST_CONFIGS,
                  "small.yaml")
    out = work / "results" / "toy" / "replicates"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_replicates"] == 2
    main = headline(work / "results" / "toy")
    rep0 = json.loads((out / "rep0" / "headline.json").read_text())["headline"]
    assert rep0 == main  # replicate 0 is the main run, read as it stands
    rep1 = json.loads((out / "rep1" / "headline.json").read_text())["headline"]
    shifted = read_yaml(out / "rep1" / "config.yaml")
    base = e2e_config()
    assert shifted["seed"] == base.get("seed", 0) + 1
    assert shifted["patch"]["seed"] == summary_seed(base, "patch") + 1
    assert (out / "rep1" / "results" / "toy" / "patch" / "summary.json").is_file()
    common = [k for k, v in rep1.items() if isinstance(v, float) and isinstance(main.get(k), float)]
    assert any(k.startswith("atp vs exact") for k in common)
    assert any(rep1[k] != main[k] for k in common)  # other seeds, other numbers
    for name, s in summary["numbers"].items():
        assert s["min"] <= s["mean"] <= s["max"], name
        assert s["values"][0] == main.get(name)
    for c in summary["claims"].values():
        assert sum(c["counts"].values()) == c["n"] <= 2
    assert (out / "table.md").read_text().startswith("| headline (2 replicates) | this run |")


def summary_seed(config, section):
    from saeflow.core.config import schema_defaults

    return (config.get(section) or {}).get("seed", schema_defaults(section)["seed"])
