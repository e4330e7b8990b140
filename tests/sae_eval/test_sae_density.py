"""Dead and dense latents (SAEBench's thresholds), sae/density.json, the evaluate_saes stage's
two files, figure sae_density and its wiring (fig_sae_density -> plot_sae_density)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saeflow.core.errors import InputError
from saeflow.sae_density import (density_metrics, log10_frequencies, plot_sae_density_stage,
                                 read_density, write_density)

HOOK = "blocks.1.hook_resid_post"


def test_dead_and_dense_fractions_by_hand():
    # frequencies 0, 0, .01, .05, .1, .11, .5, 1: "over" is strictly over (SAEBench's `>`)
    counts = np.array([0, 0, 1, 5, 10, 11, 50, 100])
    m = density_metrics(counts, 100)
    assert m == {"frac_dead": 2 / 8, "freq_over_1_percent": 5 / 8, "freq_over_10_percent": 3 / 8}
    # `>=` would count the latents exactly at 1% and 10%: another number
    assert (counts / 100 >= 0.01).mean() != m["freq_over_1_percent"]
    assert (counts / 100 >= 0.1).mean() != m["freq_over_10_percent"]


def test_log10_frequencies_leave_out_dead_latents():
    np.testing.assert_allclose(log10_frequencies(np.array([0, 1, 10, 0, 100]), 100),
                               [-2.0, -1.0, 0.0])


def test_density_file_round_trip_and_checks(tmp_path):
    path = tmp_path / "density.json"
    write_density(path, "p.jsonl", {HOOK: (torch.tensor([0, 3, 7]), 7)}, {"sae": {"d_sae": 3}})
    back = read_density(path)
    assert back[HOOK]["n_tokens"] == 7
    np.testing.assert_array_equal(back[HOOK]["firing_count"], [0, 3, 7])
    raw = json.loads(path.read_text())
    assert raw["provenance"]["config"] == {"sae": {"d_sae": 3}} and raw["prompt_set"] == "p.jsonl"
    raw["saes"][HOOK]["firing_count"] = [0, 3, 8]  # fires on more tokens than were evaluated
    path.write_text(json.dumps(raw))
    with pytest.raises(InputError, match=rf"saes\.{HOOK}\.firing_count: expected 3 counts"):
        read_density(path)


@pytest.fixture(scope="module")
def stage_run(tiny_model, random_sae, small_world, tmp_path_factory):
    """evaluate_saes_stage on the tiny model (saved as the toy's) and random_sae (local)."""
    from saeflow.core.bundle import ModelSAEs
    from saeflow.core.io import write_jsonl
    from saeflow.evaluate import evaluate_saes_stage
    from saeflow.toy.train import save_toy_model

    work = tmp_path_factory.mktemp("evaluate")
    save_toy_model(tiny_model, work / "model")
    random_sae.save_model(str(work / "sae"))
    prompts = work / "prompts.jsonl"
    write_jsonl(prompts, [{"text": r["text"], "answer": r["answer"]}
                          for r in small_world.prompt_sets["heldout_seen"][:10]])
    bundle = ModelSAEs({"source": "toy"}, work / "model", {"source": "local", "paths": {
        HOOK: str(work / "sae")}}, (HOOK,))
    evaluate_saes_stage(bundle, prompts, "cpu", work / "metrics.json", work / "density.json")
    return work


OLD_KEYS = {"hook_name", "hook_name_out", "d_sae", "n_tokens", "l0", "explained_variance",
            "lm_loss_model", "lm_loss_spliced", "answer_loss_model", "answer_loss_spliced",
            "answer_accuracy_model", "answer_accuracy_spliced"}
NEW_KEYS = {"n_lm_tokens", "n_kl_positions", "lm_loss_zero_ablated", "lm_loss_recovered",
            "kl_div_with_sae", "kl_div_with_ablation", "kl_div_score", "frac_dead",
            "freq_over_1_percent", "freq_over_10_percent"}


def test_stage_writes_metrics_and_the_counts_they_come_from(stage_run):
    from saeflow.core.io import read_json

    metrics = read_json(stage_run / "metrics.json")
    m = metrics["saes"][HOOK]
    assert set(m) == OLD_KEYS | NEW_KEYS
    assert metrics["provenance"]["git_commit"]
    density = read_density(stage_run / "density.json")[HOOK]
    counts = density["firing_count"]
    assert density["n_tokens"] == m["n_tokens"] and len(counts) == m["d_sae"] == 96
    assert m["l0"] == pytest.approx(counts.sum() / m["n_tokens"], rel=1e-12)
    assert {k: m[k] for k in ("frac_dead", "freq_over_1_percent", "freq_over_10_percent")} == \
        density_metrics(counts, m["n_tokens"])


def test_the_figure_is_a_png_of_one_panel_per_sae(stage_run, tmp_path, monkeypatch):
    import saeflow.core.figures as figures

    drawn = {}
    save = figures.save_figure
    monkeypatch.setattr(figures, "save_figure",
                        lambda fig, path: (drawn.update(axes=fig.axes), save(fig, path)))
    out = tmp_path / "sae_density.png"
    plot_sae_density_stage(stage_run / "density.json", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (ax,) = drawn["axes"]
    assert HOOK in ax.get_title()
    heights = sum(p.get_height() for p in ax.patches)  # every latent that fires, once
    counts = read_density(stage_run / "density.json")[HOOK]["firing_count"]
    assert heights == (counts > 0).sum()


def test_fig_sae_density_is_drawn_by_plot_sae_density_in_every_study(tmp_path):
    from saeflow.testing.workspace import TEST_CONFIGS, run_snakemake, sync_workflow

    work = sync_workflow(tmp_path)
    toy = run_snakemake(work, "fig_sae_density", "-n", "--quiet", "rules", "--configfile",
                        *TEST_CONFIGS).stdout.split()
    assert {"train_sae", "evaluate_saes", "plot_sae_density", "fig_sae_density"} <= set(toy)
    assert "plot_sae_density" in run_snakemake(  # in `all`
        work, "-n", "--quiet", "rules", "--configfile", *TEST_CONFIGS).stdout.split()
    pretrained = run_snakemake(work, "fig_sae_density", "-n", "--quiet", "rules",
                               "--configfile", "config/gpt2-small.yaml",
                               env={"HF_HUB_OFFLINE": "1"}).stdout.split()
    assert {"evaluate_saes", "plot_sae_density"} <= set(pretrained)
    assert "train_sae" not in pretrained
