"""Incremental recompute on a completed toy run: what a change reruns, figures by name, resume.

Dry runs (`snakemake -n`) with config/test.yaml plus a small override config list the jobs a
change would rerun; the job list is read from Snakemake's "Job stats" table.
"""

import functools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from saeflow.testing.compare import assert_same_results
from saeflow.testing.workspace import TEST_CONFIGS, as_from_a_terminal, e2e_config, run_snakemake, sync_workflow

pytestmark = pytest.mark.slow

PATCH_RULES = {"patch_resid", "patch_estimate", "patch_exact", "patch_verify", "patch_circuit",
               "patch_summary", "plot_resid_patching", "plot_top_latents",
               "plot_faithfulness", "plot_latent_activations", "plot_circuit"}
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


def planned(workdir: Path, *args: str, override: dict | None = None) -> set[str]:
    """Rules of the jobs a dry run (of targets/flags ``args``) would run, `all` left out."""
    configs = [*TEST_CONFIGS]
    if override is not None:
        (workdir / "override.yaml").write_text(yaml.safe_dump(override))
        configs.append("override.yaml")
    proc = run_snakemake(workdir, *args, "-n", "--quiet", "rules", "--configfile", *configs)
    return set(job_stats(proc.stdout)) - {"all"}


def stages() -> list[str]:
    """The stages beyond encoding that config/test.yaml (over config/config.yaml) runs."""
    return e2e_config().get("stages", [])


def needs_stage(stage: str):
    return pytest.mark.skipif(stage not in stages(), reason=f"{TEST_CONFIGS[-1]} does not run the {stage} stage")


def test_changing_nothing_reruns_nothing(toy_run):
    assert planned(toy_run) == set()


@needs_stage("patch")
def test_patch_parameter_reruns_only_patching(toy_run):
    jobs = planned(toy_run, override={"patch": {"n_bootstrap": 500}})
    assert jobs <= PATCH_RULES, jobs - PATCH_RULES
    assert {"patch_summary", "plot_top_latents"} <= jobs


@needs_stage("labels")
def test_correction_parameter_reruns_only_correction(toy_run):
    jobs = planned(toy_run, override={"labels": {"correction": {"n_boot": 500}}})
    assert jobs <= CORRECTION_RULES, jobs - CORRECTION_RULES
    assert {"correct", "plot_lpf"} <= jobs


@needs_stage("probe")
def test_probe_parameter_reruns_only_probing(toy_run):
    effects = dict(e2e_config()["probe"].get("effects", {}))
    effects["n_permutations"] = int(effects.get("n_permutations", 1000)) + 1
    jobs = planned(toy_run, override={"probe": {"effects": effects}})
    assert jobs, "changing probe.effects reran nothing"
    assert all(r.startswith(("probe_", "plot_probe_", "plot_cohens_d")) for r in jobs), jobs


def test_sae_setting_reruns_encoding_and_downstream_not_extraction(toy_run):
    jobs = planned(toy_run, override={"sae": {"l1_coefficient": 4.0}})
    assert {"train_sae", "evaluate_saes", "encode"} <= jobs
    following = {"labels": {"describe", "plot_lpf"}, "patch": {"patch_estimate", "plot_top_latents"}}
    for stage in set(following) & set(stages()):
        assert following[stage] <= jobs, (stage, jobs)
    assert not jobs & UPSTREAM_OF_ENCODING, jobs & UPSTREAM_OF_ENCODING
    assert "patch_resid" not in jobs  # residual patching uses no SAE


FIGURE_TARGETS = {  # stage -> named figure targets it must have
    "patch": {"fig_resid_patching", "fig_top_latents", "fig_faithfulness", "fig_latent_activations"},
    "labels": {"fig_confusion", "fig_lpf"},
    "probe": {"fig_probe_accuracy", "fig_probe_heatmap", "fig_cohens_d"},
}


@functools.cache
def figure_targets(workdir: Path) -> dict[str, dict[Path, str]]:
    """fig_* target -> {figure file: the plot rule drawing it}, for every named figure target."""
    rules = run_snakemake(workdir, "--list-rules", "--configfile", *TEST_CONFIGS).stdout.split()
    targets = {}
    for target in sorted(r for r in rules if r.startswith("fig_")):
        out = run_snakemake(workdir, target, "--summary", "--configfile", *TEST_CONFIGS).stdout
        rows = [line.split("\t") for line in out.splitlines()]
        targets[target] = {workdir / r[0]: r[2] for r in rows if len(r) > 2 and r[0].endswith(".png")}
    return targets


def test_every_figure_has_a_named_target(toy_run):
    targets = figure_targets(toy_run)
    for stage in stages():
        for target in FIGURE_TARGETS.get(stage, ()):
            assert target in targets, f"no rule {target}"
            assert targets[target] and all(p.exists() for p in targets[target]), target
    drawn = {p for figures in targets.values() for p in figures}
    made = set((toy_run / "results").rglob("*.png"))
    assert made, "the toy run made no figures"
    assert made <= drawn, f"figures without a fig_ target: {sorted(made - drawn)}"


def test_deleted_figure_reruns_only_its_plot(toy_run):
    """For every named target this config draws: delete one of its figures, regenerate by name."""
    ran = []
    for target, figures in figure_targets(toy_run).items():
        if not figures or not all(p.exists() for p in figures):
            continue  # a stage this config does not run
        figure, plot_rule = sorted(figures.items())[0]
        assert plot_rule.startswith("plot_"), (target, plot_rule)
        figure.unlink()
        rel = str(figure.relative_to(toy_run))
        assert planned(toy_run, rel) == {plot_rule}, rel  # by path
        assert planned(toy_run, target) == {plot_rule, target}, target  # by name
        proc = run_snakemake(toy_run, target, "--cores", "1", "--configfile", *TEST_CONFIGS)
        assert set(job_stats(proc.stdout + proc.stderr)) == {plot_rule, target}
        assert figure.stat().st_size > 0
        ran.append(target)
    assert ran, "no figure target ran"
    assert planned(toy_run) == set()


def foundation_targets() -> list[str]:
    """Model, SAEs and every prompt set's codes: the stretch of the DAG the resume test runs."""
    sets = e2e_config()["extraction"]["prompt_sets"]
    return ["results/toy/sae/metrics.json", *(f"results/toy/codes/{s}.h5" for s in sets)]


def test_killed_run_resumes_to_the_same_results(toy_run, tmp_path):
    """Ctrl-C once some job finished and another runs; running it again completes the DAG.

    It runs the foundation targets (model, SAEs, extraction, encoding), where the jobs are
    longest, not the whole DAG: the later stages add run time, not new ways to be interrupted.
    """
    workdir = sync_workflow(tmp_path)
    targets = foundation_targets()
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", *targets, "--cores", "2",
                             "--resources", "gpu=1", "--configfile", *TEST_CONFIGS], cwd=workdir,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=as_from_a_terminal)
    model = workdir / "results" / "toy" / "model" / "metrics.json"
    sae_logs = workdir / "results" / "toy" / "logs" / "toy" / "train_sae"
    deadline = time.monotonic() + 1200
    try:
        # train_model finished and an SAE is training (its script has started logging).
        while not (model.exists() and any(p.stat().st_size for p in sae_logs.glob("*.log"))):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no SAE training started in 20 minutes"
            time.sleep(0.5)
        time.sleep(1)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole process group, jobs included
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode != 0, "snakemake finished before it was interrupted"
    left = planned(workdir, *targets, "--rerun-incomplete")
    assert "train_sae" in left and "train_model" not in left and "toy_world" not in left
    run_snakemake(workdir, *targets, "--cores", "2", "--resources", "gpu=1", "--rerun-incomplete",
              "--configfile", *TEST_CONFIGS)
    assert planned(workdir, *targets) == set()
    compared = assert_same_results(toy_run / "results", workdir / "results", subset=True)
    assert {"model.pt", "metrics.json", "heldout_seen.h5"} <= {p.name for p in compared}
