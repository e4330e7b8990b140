"""The toy DAG through workflow/profiles/slurm on a real single-node SLURM cluster.

A session fixture installs Debian's slurmctld, slurmd, slurm-client and munge if needed,
starts the daemons on localhost (tests/slurm/start_cluster.sh, with a fake GPU gres) and always
stops them by their pids (tests/slurm/stop_cluster.sh). Needs root; CI runs as root.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from saeflow.testing.compare import assert_same_results
from saeflow.testing.workspace import TEST_CONFIGS, REPO, run_snakemake, sync_workflow

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SLURM_DIR = REPO / "tests" / "slurm"
PROFILE = REPO / "workflow" / "profiles" / "slurm" / "config.yaml"
# What only this test cluster needs on top of the shipped profile: its one partition, jobs
# small enough for one CI node, squeue for status (no accounting daemon, so no sacct).
TEST_CLUSTER = {
    "jobs": 2,
    "latency-wait": 5,
    "slurm-status-command": "squeue",
    "slurm-init-seconds-before-status-checks": 2,
}
PARTITION, MAX_MEM_MB = "debug", 1000


def gpu_rules() -> set[str]:
    """Rules whose `resources:` ask `gpu=1` in workflow/rules/*.smk."""
    found, rule = set(), None
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for line in path.read_text().splitlines():
            match = re.match(r"\s*rule (\w+):", line)
            if match:
                rule = match.group(1)
            elif re.fullmatch(r"\s*gpu=1,?", line):
                found.add(rule)
    return found


GPU_RULES = gpu_rules()


def _cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "the SLURM test starts slurmctld/slurmd/munged and needs root"
    installed = all(shutil.which(c) for c in ("slurmctld", "slurmd", "sbatch", "munged"))
    if not installed and not (shutil.which("apt-get") and shutil.which("dpkg")):
        return "SLURM is not installed and apt-get/dpkg are unavailable to install it"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running single-node cluster; yields its state directory, stopped afterwards."""
    reason = _cannot_run()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    env_before = os.environ.get("SLURM_CONF")
    try:
        proc = subprocess.run(["bash", str(SLURM_DIR / "start_cluster.sh"), str(state)],
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"start_cluster.sh failed:\n{proc.stdout}\n{proc.stderr}"
        os.environ["SLURM_CONF"] = str(state / "slurm.conf")
        yield state
    finally:
        stop = subprocess.run(["bash", str(SLURM_DIR / "stop_cluster.sh"), str(state)],
                              capture_output=True, text=True, timeout=120)
        if env_before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = env_before
        for name in ("munged", "slurmctld", "slurmd"):
            assert not (state / f"{name}.pid").exists(), f"{name} left running:\n{stop.stderr}"


def cluster_profile(dest: Path) -> Path:
    """The shipped profile, with partition and memory fitted to the test cluster."""

    def fit(resources):
        return {**resources, "slurm_partition": PARTITION,
                "mem_mb": min(resources.get("mem_mb", MAX_MEM_MB), MAX_MEM_MB)}

    profile = yaml.safe_load(PROFILE.read_text())
    assert profile["executor"] == "slurm"
    profile["default-resources"] = fit(profile["default-resources"])
    profile["set-resources"] = {rule: fit(res) for rule, res in profile["set-resources"].items()}
    cores = os.cpu_count() or 1  # a job asking more CPUs than the node has would never start
    profile["set-threads"] = {rule: min(n, cores) for rule, n in profile["set-threads"].items()}
    profile.update(TEST_CLUSTER)
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile))
    return dest


def test_profile_requests_a_gpu_for_every_gpu_rule(tmp_path):
    """Rules with resources gpu=1 have cluster settings; light rules are local."""
    workdir = sync_workflow(tmp_path)
    profile = yaml.safe_load(PROFILE.read_text())
    rules = set(run_snakemake(workdir, "--list-rules", "--configfile", *TEST_CONFIGS).stdout.split())
    assert {"train_model", "train_sae", "evaluate_saes", "extract", "extract_shard", "encode",
            "encode_shard", "ablate_categories", "patch_resid", "patch_estimate",
            "patch_verify"} <= GPU_RULES <= rules
    assert GPU_RULES <= set(profile["set-resources"])
    local = local_rules()
    assert not GPU_RULES & local, GPU_RULES & local
    assert {"plot_resid_patching", "plot_confusion", "plot_lpf", "patch_summary"} <= local


def local_rules() -> set[str]:
    """Rules marked `localrule: True` in workflow/rules/*.smk (the one local-rule mechanism)."""
    local, rule = set(), None
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for line in path.read_text().splitlines():
            match = re.match(r"\s*rule (\w+):", line)
            if match:
                rule = match.group(1)
            elif line.strip().startswith("localrule: True"):
                local.add(rule)
    for path in (REPO / "Snakefile", REPO / "workflow" / "Snakefile"):
        assert "localrules:" not in path.read_text(), f"{path}: use localrule: True on the rule"
    return local


def slurm_jobs() -> list[tuple[str, str]]:
    """(rule, TRES per job) of every job the controller still lists, finished ones included."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-O", "Comment:200,tres-per-job:60"],
                         capture_output=True, text=True, check=True).stdout
    jobs = []
    for line in out.splitlines():
        comment, tres = line.split()
        name = comment.removeprefix("rule_").removeprefix("group_")
        jobs.append((name.split("_wildcards_")[0], tres))
    return jobs


def gpu_requests(log: str) -> dict[str, bool]:
    """rule -> whether Snakemake's job listing shows it requesting a GPU (gpu=N > 0)."""
    wants, rule = {}, None
    for line in log.splitlines():
        match = re.fullmatch(r"(?:local)?rule (\w+):", line.strip())
        if match:
            rule = match.group(1)
        elif rule and line.strip().startswith("resources:"):
            wants[rule] = bool(re.search(r"\bgpu=[1-9]", line))
    return wants


def test_toy_dag_on_slurm_equals_the_local_run(slurm_cluster, toy_run, tmp_path):
    (tmp_path / "work").mkdir()
    workdir = sync_workflow(tmp_path / "work")
    profile = cluster_profile(tmp_path / "profile")
    proc = run_snakemake(workdir, "--profile", str(profile), "--configfile", *TEST_CONFIGS,
                     timeout=3000)
    log = proc.stdout + proc.stderr
    submitted = set(re.findall(r"submitted with SLURM jobid \d+ \(log: \S*/slurm_logs/rule_(\w+)/", log))
    assert {"train_model", "train_sae", "extract", "encode", "patch_verify"} <= submitted, log[-3000:]
    # The profile groups each probing dataset's steps into one cluster job.
    groups = re.findall(r"submitted with SLURM jobid \d+ \(log: \S*/slurm_logs/group_([a-z]+)_", log)
    assert "probing" in groups and not {"probe_data", "probe_fit"} & submitted, log[-3000:]
    assert not {r for r in submitted if r.startswith("plot_")}, "plots must run on the submit host"
    assert "localrule plot_resid_patching:" in log
    # SLURM itself saw a GPU request (--gpus=1) on the rules with resources gpu=1, none on others.
    wants_gpu = gpu_requests(log)
    assert all(wants_gpu[rule] for rule in GPU_RULES & wants_gpu.keys()), wants_gpu
    jobs = slurm_jobs()
    assert any(rule in GPU_RULES for rule, _ in jobs), jobs
    for rule, tres in jobs:  # a group job (probing) is named by its group and asks no GPU
        assert ("gpu:1" in tres) == wants_gpu.get(rule, False), (rule, tres)

    compared = assert_same_results(toy_run / "results", workdir / "results")
    suffixes = {p.suffix for p in compared}
    assert {".json", ".h5", ".png", ".safetensors"} <= suffixes
    # Nothing left to do: the cluster run's metadata is as complete as a local run's.
    again = run_snakemake(workdir, "-n", "--configfile", *TEST_CONFIGS)
    assert "Nothing to be done" in again.stdout + again.stderr
