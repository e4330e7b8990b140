"""Incremental recompute on a completed toy run: what a change reruns, figures by name, resume.

Dry runs (`snakemake -n`) with config/test.yaml plus a small override config list the jobs a
change would rerun; the job list is read from Snakemake's "Job stats" table.
"""

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from _results import assert_same_results
from conftest import REPO, copy_workflow, snakemake

pytestmark = pytest.mark.slow

CONFIG = "config/test.yaml"
PATCH_RULES = {"patch_resid", "patch_atp", "patch_verify", "patch_summary", "plot_resid_patching",
               "plot_top_latents", "plot_faithfulness", "plot_latent_activations"}
CORRECTION_RULES = {"correct", "correction_summary", "plot_lpf"}
UPSTREAM_OF_ENCODING = {"toy_world", "train_model", "extract"}


def job_stats(output: str) -> Counter:
    """rule -> job count from the first "Job stats" table (empty when nothing is to be done)."""
    lines = output.splitlines()
    if "Job stats:" not in lines:
        assert "Nothing to be done" in output, output[-3000:]
        return Counter()
    rows = lines[lines.index("Job stats:") + 3:]  # skip the header and the dashes
    jobs = Counter()
    for row in rows:
        name, count = row.split()
        if name == "total":
            return jobs
        jobs[name] = int(count)
    raise AssertionError(f"unterminated Job stats table:\n{output[-3000:]}")


def planned(workdir: Path, *targets: str, override: dict | None = None) -> set[str]:
    """Rules of the jobs a dry run would run (the aggregate rule `all` left out)."""
    configs = [CONFIG]
    if override is not None:
        (workdir / "override.yaml").write_text(yaml.safe_dump(override))
        configs.append("override.yaml")
    proc = snakemake(workdir, *targets, "-n", "--quiet", "rules", "--configfile", *configs)
    return set(job_stats(proc.stdout)) - {"all"}


def stages() -> list[str]:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(yaml.safe_load((REPO / CONFIG).read_text()))
    return config.get("stages", [])


def test_changing_nothing_reruns_nothing(toy_run):
    assert planned(toy_run) == set()


def test_patch_parameter_reruns_only_patching(toy_run):
    jobs = planned(toy_run, override={"patch": {"n_bootstrap": 500}})
    assert jobs <= PATCH_RULES, jobs - PATCH_RULES
    assert {"patch_summary", "plot_top_latents"} <= jobs


def test_correction_parameter_reruns_only_correction(toy_run):
    jobs = planned(toy_run, override={"labels": {"correction": {"n_boot": 500}}})
    assert jobs <= CORRECTION_RULES, jobs - CORRECTION_RULES
    assert {"correct", "plot_lpf"} <= jobs


def test_probe_parameter_reruns_only_probing(toy_run):
    if "probe" not in stages():
        pytest.skip("config/test.yaml does not run the probe stage")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    effects = dict(config["probe"].get("effects", {}))
    effects["n_permutations"] = int(effects.get("n_permutations", 1000)) + 1
    jobs = planned(toy_run, override={"probe": {"effects": effects}})
    assert jobs, "changing probe.effects reran nothing"
    assert all(r.startswith(("probe_", "plot_probe_", "plot_cohens_d")) for r in jobs), jobs


def test_sae_setting_reruns_encoding_and_downstream_not_extraction(toy_run):
    jobs = planned(toy_run, override={"sae": {"l1_coefficient": 4.0}})
    assert {"train_sae", "evaluate_saes", "encode"} <= jobs
    assert {"describe", "patch_atp", "plot_top_latents", "plot_lpf"} <= jobs  # what follows
    assert not jobs & UPSTREAM_OF_ENCODING, jobs & UPSTREAM_OF_ENCODING
    assert "patch_resid" not in jobs  # residual patching uses no SAE


def figure_targets(workdir: Path) -> list[str]:
    rules = snakemake(workdir, "--list-rules", "--configfile", CONFIG).stdout.split()
    return sorted(r for r in rules if r.startswith("fig_"))


def figures_of(workdir: Path, target: str) -> dict[Path, str]:
    """Figure file -> the rule that draws it, for one named figure target."""
    out = snakemake(workdir, target, "--summary", "--configfile", CONFIG).stdout
    figures = {}
    for line in out.splitlines():
        cols = line.split("\t")
        if len(cols) > 2 and cols[0].endswith(".png"):
            figures[workdir / cols[0]] = cols[2]
    return figures


def test_every_figure_has_a_named_target(toy_run):
    targets = figure_targets(toy_run)
    assert {"fig_resid_patching", "fig_top_latents", "fig_faithfulness",
            "fig_latent_activations", "fig_confusion", "fig_lpf"} <= set(targets)
    drawn = {p for t in targets for p in figures_of(toy_run, t)}
    made = set((toy_run / "results").rglob("*.png"))
    assert made and made == drawn, f"figures without a fig_ target: {sorted(made - drawn)}"


def test_deleted_figure_reruns_only_its_plot(toy_run):
    """Delete one figure of each named target, then regenerate it by name."""
    for target in figure_targets(toy_run):
        figures = figures_of(toy_run, target)
        assert figures, f"{target} names no figure"
        figure, plot_rule = sorted(figures.items())[0]
        assert plot_rule.startswith("plot_")
        figure.unlink()
        rel = str(figure.relative_to(toy_run))
        assert planned(toy_run, rel) == {plot_rule}, rel  # by path
        assert planned(toy_run, target) == {plot_rule, target}  # by name
        proc = snakemake(toy_run, target, "--cores", "1", "--configfile", CONFIG)
        assert set(job_stats(proc.stdout + proc.stderr)) == {plot_rule, target}
        assert figure.stat().st_size > 0
    assert planned(toy_run) == set()


def test_killed_run_resumes_to_the_same_results(toy_run, tmp_path):
    """SIGINT once some job finished and another runs; --rerun-incomplete completes it."""
    workdir = copy_workflow(tmp_path)
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", "--resources",
                             "gpu=1", "--configfile", CONFIG], cwd=workdir, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    model = workdir / "results" / "toy" / "model" / "metrics.json"
    deadline = time.monotonic() + 1200
    try:
        # train_model finished and a later job (SAE training, extraction) is running.
        while not (model.exists() and (workdir / "results" / "toy" / "logs" / "train_sae").exists()):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no job finished in 20 minutes"
            time.sleep(0.5)
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode != 0, "snakemake finished before it was interrupted"
    left = planned(workdir)
    assert "train_sae" in left and "train_model" not in left and "toy_world" not in left
    snakemake(workdir, "--cores", "2", "--resources", "gpu=1", "--rerun-incomplete",
              "--configfile", CONFIG)
    assert_same_results(toy_run / "results", workdir / "results")
