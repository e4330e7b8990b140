"""The dashboards' config checks (one line naming the key, before any job) and the target's
plan: a latents job, a pages job per SAE, the front page (a dry run, nothing executed)."""

from __future__ import annotations

import pytest

from saeflow.core.config_checks import check_dashboards
from saeflow.core.errors import InputError
from saeflow.testing.workspace import TEST_CONFIGS, run_snakemake, sync_workflow

CONFIG = {"extraction": {"prompt_sets": ["heldout_seen", "pairs"]},
          "sae": {"hooks": ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]}}


@pytest.mark.parametrize("section, field, problem", [
    ({"prompt_set": "train"}, "dashboards.prompt_set",
     "'train' is not among extraction.prompt_sets ['heldout_seen', 'pairs']"),
    ({"latents": {"blocks.1.hook_mlp_out": [3]}}, "dashboards.latents.blocks.1.hook_mlp_out",
     "not an SAE hook ['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post']"),
])
def test_bad_dashboards_config_names_the_key(section, field, problem):
    with pytest.raises(InputError) as err:
        check_dashboards(section, CONFIG, "my.yaml")
    assert str(err.value) == f"my.yaml: {field}: {problem}"
    check_dashboards({"prompt_set": "pairs", "latents": {"blocks.0.hook_resid_post": [1]}},
                     CONFIG, "my.yaml")


def test_the_dashboards_target_plans_one_pages_job_per_sae(tmp_path):
    workdir = sync_workflow(tmp_path)
    proc = run_snakemake(workdir, "-n", "dashboards", "--configfile", *TEST_CONFIGS)
    out = proc.stdout
    for job, count in (("dashboard_latents", 1), ("dashboard_pages", 2), ("dashboard_index", 1)):
        planned = [line.split() for line in out.splitlines()]
        assert [job, str(count)] in planned, (job, out[-3000:])
    assert "results/toy/dashboards/blocks.1.hook_resid_post" in out
    assert "results/toy/patch/circuit.json" in out and "results/toy/labels/classified" in out


def test_a_study_storing_some_positions_is_told_before_any_job(tmp_path):
    """gemma-2-2b-it stores 3 positions per prompt: `snakemake dashboards` stops at planning
    with one line naming extraction.positions."""
    workdir = sync_workflow(tmp_path)
    args = ("--configfile", "config/gemma-2-2b-it.yaml")
    env = {"HF_HUB_OFFLINE": "1"}
    proc = run_snakemake(workdir, "-n", "dashboards", *args, check=False, env=env)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[0] == (
        "saeflow: error: config/gemma-2-2b-it.yaml: extraction.positions: ['final', -2, -3]: "
        "the dashboards' contexts read the SAE codes of every token; set it to all (the "
        "dashboards need no forward pass)")
