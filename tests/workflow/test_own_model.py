"""A study of its own model, end to end offline: config/llama-3.2-1b-failures.yaml at test size
(config/llama-3.2-1b-failures-test.yaml). The local hub's gpt2, fine-tuned and saved as a
checkpoint folder (model.source: local), gets SAEs trained by the DAG (sae.source: train, sae-lens's
runner, checkpointed) at both layers on six named reasoning positions of a training corpus;
then extraction, encoding, the concatenation probe over 2 layers x 6 positions on the prompts'
correctness labels, Cohen's d and layer x position localisation. A changed checkpoint reruns
what depends on it."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest

from saeflow.testing import local_hub, local_study
from saeflow.testing.workspace import run_snakemake, sync_workflow

pytestmark = pytest.mark.slow
EXP = "llama-3.2-1b-failures-test"
ARGS = ["--cores", "2", "--resources", "gpu=1", "--configfile", local_study.FAILURE_CONFIG]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_model")
    hf_home = root / "hf"
    local_hub.build_hub_cache(hf_home, root / "ref")
    work = sync_workflow(root / "work")
    local_study.write_failure_study(work, hf_home)
    env = local_hub.offline_env(hf_home)
    dry = run_snakemake(work, "-n", "--quiet", "rules", *ARGS[4:], env=env)
    start = time.perf_counter()
    run_snakemake(work, *ARGS, env=env, timeout=900)
    elapsed = time.perf_counter() - start
    print(f"test-sized failure study: {elapsed:.0f} s end to end")  # reported, never asserted
    again = run_snakemake(work, "-n", *ARGS[4:], env=env)
    return {"root": root, "work": work, "env": env, "hf_home": hf_home, "dry": dry,
            "again": again, "out": work / "results" / EXP}


def test_it_plans_training_and_no_toy_rule(study):
    planned = study["dry"].stdout.split()
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", study["dry"].stdout, re.M))
    assert jobs.get("train_sae") == "2", study["dry"].stdout
    assert {"extract", "encode", "probe_data", "probe_fit", "probe_effects"} <= set(planned)
    assert not set(planned) & {"toy_world", "train_model"}
    assert "Nothing to be done" in study["again"].stdout + study["again"].stderr


def test_the_trained_saes_record_their_model_corpus_and_progress(study):
    from saeflow.core.local_files import sha256
    from saeflow.core.saes import load_sae_dir

    out, work = study["out"], study["work"]
    weights = sha256(work / "inputs" / "finetuned" / "model.safetensors")
    for hook in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post"):
        sae = load_sae_dir(out / "sae" / hook)
        assert type(sae).__name__ == "JumpReLUSAE"  # batchtopk's inference form
        meta = sae.cfg.metadata
        assert (meta.hook_name, meta.model_name, meta.dataset_path) == (
            hook, "gpt2", "inputs/failures_train.jsonl")
        record = json.loads((out / "sae" / hook / "provenance.json").read_text())
        assert record["provenance"]["config"]["model"]["sha256"]["model.safetensors"] == weights
        assert record["training"]["tokens"] >= 10000 and record["training"]["l0"] <= 8.5
        log = (out / "logs" / "sae" / "train_sae" / f"{hook}.log").read_text()
        assert "activations at sae.positions ['r1', 'r2', 'r3', 'r4', 'r5', 'r6']" in log
        assert re.search(r"tokens/s: loss \S+, L0 \S+, explained variance \S+", log)
        assert "checkpoint " in log  # every 4000 tokens of 10000
    assert not list((out / "checkpoints").rglob("*.json"))  # finished: no checkpoint left
    assert not list((out / "sae").glob(".*"))  # nor a scratch folder


def test_extraction_records_the_checkpoints_hashes(study):
    from saeflow.formats.activations import open_activations

    with open_activations(study["out"] / "activations" / "failures.h5") as h5:
        model = json.loads(h5.attrs["provenance"])["config"]["model"]
        assert json.loads(h5.attrs["position_names"]) == list(local_study.FAILURE_POSITIONS)
    assert model["source"] == "local" and set(model["sha256"]) >= {
        "config.json", "model.safetensors", "tokenizer.json"}


def test_the_concatenation_probe_localises_over_layers_and_positions(study):
    out = study["out"]
    summary = json.loads((out / "probe" / "summary.json").read_text())["datasets"]
    failure = summary["failures/failure"]
    assert failure["strategy"] == "sae-to-failure" and failure["layers"] == [0, 1]
    assert failure["positions"] == list(local_study.FAILURE_POSITIONS)
    assert failure["n_samples"] < 60  # prompts lacking r6 (pos_r6: null) are dropped
    effects = json.loads((out / "probe" / "effects" / "failures" / "failure.json").read_text())
    assert effects["n_columns"] == 2 * 6 * 128  # 2 layers x 6 positions x d_sae
    assert effects["top"] and all("d" in row for row in effects["top"])
    loc = effects["localisation"]
    assert set(loc["by_layer"]) == {"0", "1"}
    assert set(loc["by_position"]) == set(local_study.FAILURE_POSITIONS)
    for name in ("probe_accuracy", "probe_heatmap", "cohens_d"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_a_broken_checkpoint_stops_before_any_job(study):
    work = study["work"]
    broken = work / "inputs" / "broken"
    shutil.copytree(work / "inputs" / "finetuned", broken)
    (broken / "model.safetensors").unlink()
    config = (work / local_study.FAILURE_CONFIG).read_text().replace("inputs/finetuned",
                                                                     "inputs/broken")
    (work / "broken.yaml").write_text(config)
    proc = run_snakemake(work, "-n", "--configfile", "broken.yaml", check=False, env=study["env"])
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("saeflow: error: broken.yaml: model.path: inputs/broken has no "
                                   "weights (model.safetensors, model-*.safetensors or "
                                   "pytorch_model*.bin)")


def test_a_changed_checkpoint_reruns_what_depends_on_it(study):
    """Last: it changes the checkpoint (fine-tuned again, one step longer)."""
    work = study["work"]
    local_hub.fine_tune(study["hf_home"], work / "inputs" / "finetuned", steps=21)
    proc = run_snakemake(work, "-n", *ARGS[4:], env=study["env"])
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, re.M))
    assert jobs.get("train_sae") == "2" and jobs.get("extract") == "1", proc.stdout
    assert {"encode", "evaluate_saes", "probe_data"} <= set(jobs)
