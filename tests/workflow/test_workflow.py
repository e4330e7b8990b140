"""End to end: the toy DAG runs in a temporary directory; lint and the real-model DAG build."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from saeflow.toy.workspace import REPO, run_snakemake, sync_workflow

pytestmark = pytest.mark.slow


def test_toy_dag_produces_every_stage(toy_run):
    results = toy_run / "results" / "toy"
    metrics = json.loads((results / "model" / "metrics.json").read_text())
    assert metrics["heldout_seen"]["n"] == 200
    assert metrics["provenance"]["config"]["model"]["train"]["steps"] == 150
    saes = json.loads((results / "sae" / "metrics.json").read_text())["saes"]
    assert set(saes) == {"blocks.0.hook_resid_post", "blocks.1.hook_resid_post"}
    for m in saes.values():
        assert m["l0"] > 0 and m["explained_variance"] > 0
        assert m["answer_loss_spliced"] >= 0 and "lm_loss_model" in m
    for prompt_set in ("heldout_seen", "heldout_unseen", "pairs"):
        with h5py.File(results / "codes" / f"{prompt_set}.h5") as f:
            assert json.loads(f.attrs["provenance"])["git_commit"]
            assert f["codes/blocks.1.hook_resid_post/indptr"][-1] > 0
        assert (results / "logs" / "extract" / "extract" / f"{prompt_set}.log").stat().st_size > 0
    assert (results / "sae" / "blocks.0.hook_resid_post" / "cfg.json").exists()


def test_every_rule_logs_what_it_did(toy_run):
    logs = sorted((toy_run / "results" / "toy" / "logs").rglob("*.log"))
    assert len(logs) > 30
    for path in logs:  # logs/<stage>/<rule>/<wildcards>.log
        assert len(path.relative_to(toy_run / "results" / "toy" / "logs").parts) >= 3, path
        text = path.read_text()
        assert "INFO saeflow: rule " in text and "INFO saeflow: done in " in text, path
        assert "wrote " in text, path


def test_nothing_to_do_after_a_complete_run(toy_run):
    proc = run_snakemake(toy_run, "-n", "--configfile", "config/test.yaml")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_lint_is_clean(tmp_path):
    workdir = sync_workflow(tmp_path)
    proc = run_snakemake(workdir, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


def test_snakefmt_check_is_clean():
    """Every Snakefile and .smk is as snakefmt writes it (the catalog's formatting check)."""
    snakefmt = Path(sys.executable).with_name("snakefmt")
    files = ["Snakefile", "workflow"]
    proc = subprocess.run([str(snakefmt), "--check", *files], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_config_readme_describes_every_key():
    """config/README.md has a row for every key of the schema (nested keys dotted), a section
    for every top-level object."""
    import yaml

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    readme = (REPO / "config" / "README.md").read_text()

    def keys(node, prefix=""):
        for name, sub in node.get("properties", {}).items():
            yield prefix + name
            yield from keys(sub, f"{prefix}{name}.")
            if isinstance(sub.get("additionalProperties"), dict):
                yield from keys(sub["additionalProperties"], f"{prefix}{name}.<name>.")
            if isinstance(sub.get("items"), dict):
                yield from keys(sub["items"], f"{prefix}{name}[].")

    missing = [k for k in keys(schema) if f"| `{k}` |" not in readme and f"### `{k}`" not in readme]
    assert not missing, f"config/README.md lacks {missing}"


def test_real_model_dag_builds_without_the_hub(tmp_path):
    workdir = sync_workflow(tmp_path)
    proc = run_snakemake(workdir, "-n", "--configfile", "config/gemma-2-2b.yaml")
    out = proc.stdout + proc.stderr
    for rule in ("extract", "encode", "evaluate_saes"):
        assert rule in out
    assert "train_model" not in out


@pytest.mark.parametrize("override, named", [
    ("sae:\n  source: train\n  hooks: [blocks.0.hook_resid_post]\n  d_sea: 3\n", "d_sea"),
    ("extraction:\n  prompt_sets: [heldout_seen]\n  hooks: [blocks.0.hook_resid_post]\n  dtype: int8\n", "int8"),
])
def test_bad_config_fails_naming_the_key(tmp_path, override, named):
    workdir = sync_workflow(tmp_path)
    (workdir / "bad.yaml").write_text(override)
    proc = run_snakemake(workdir, "-n", "--configfile", "bad.yaml", check=False)
    assert proc.returncode != 0
    assert named in proc.stdout + proc.stderr
