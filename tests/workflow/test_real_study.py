"""A real study end to end, offline: a pretrained model and SAE from a local Hugging Face
cache, a study config of its own (no toy sections), descriptions from a Neuronpedia export
folder, a keyword and an ``llm`` category (the LLM a loopback OpenAI-compatible server),
human labels written by ``saeflow label`` from the command the DAG prints, string-labelled
prompt sets and clean/corrupted pairs, through all six stages."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from saeflow.testing import local_hub, local_study
from saeflow.testing.workspace import run_snakemake, sync_workflow

pytestmark = pytest.mark.slow
RESULTS = Path("results") / local_study.EXPERIMENT
COMMAND = re.compile(r"label the sample with `(saeflow label [^`]+)`")


def _label(work: Path, command: str) -> subprocess.CompletedProcess[str]:
    """Run the printed ``saeflow label`` command, answering as a careful human would (related
    iff the description names the category's subject) but for every 7th item."""
    from saeflow.formats.descriptions import read_descriptions
    from saeflow.labels.labelling import sample_features

    argv = shlex.split(command)[2:]
    args = dict(zip(argv[0::2], argv[1::2], strict=True))
    word = {"animals": local_study.ANIMAL, "numbers": local_study.NUMBER}[args["--category"]]
    sample = sample_features(read_descriptions(work / args["--descriptions"]),
                             int(args["--n"]), int(args["--seed"]))
    keys = "".join("r" if (word in r["description"]) != (i % 7 == 3) else "n"
                   for i, r in enumerate(sample))
    return subprocess.run([sys.executable, "-m", "saeflow.cli", "label", *argv], cwd=work,
                          input=keys, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_study")
    hf_home = root / "hf"
    (root / "ref").mkdir()
    local_hub.build_hub_cache(hf_home, root / "ref")
    work = sync_workflow(root / "work")
    local_study.write_exports(root / "store" / local_study.MODEL_ID / local_study.SOURCE /
                              "explanations")
    store = local_study.ExportStore(root / "store")
    llm = local_study.KeywordLLM(local_study.NUMBER)
    local_study.write_study(work, hf_home, llm.url, exports_url=store.url)
    env = local_hub.offline_env(hf_home)
    args = ["--cores", "2", "--resources", "gpu=1", "--configfile", "study.yaml"]
    try:
        dry = run_snakemake(work, "-n", "--quiet", "rules", *args[4:], env=env)
        first = run_snakemake(work, *args, "--keep-going", check=False, env=env)
        commands = sorted(set(COMMAND.findall(first.stderr)))
        labelled = [_label(work, c) for c in commands]
        labels_before = {p.name: p.read_bytes() for p in (work / "labels").glob("*.json")}
        second = run_snakemake(work, *args, env=env, timeout=1500)
        again = run_snakemake(work, "-n", *args[4:], env=env)
    finally:
        llm.close()
        store.close()
    return {"work": work, "env": env, "dry": dry, "first": first, "commands": commands,
            "labelled": labelled, "labels_before": labels_before, "second": second,
            "again": again, "llm_calls": llm.calls, "store_requests": store.requests}


def test_a_dry_run_plans_every_stage(study):
    planned = set(study["dry"].stdout.split())
    assert {"fetch_neuronpedia", "extract", "encode", "describe", "classify", "import_human_labels", "agree",
            "ablate_categories", "correct", "probe_data", "probe_fit", "probe_effects",
            "patch_resid", "patch_estimate", "patch_verify"} <= planned
    assert not planned & {"toy_world", "train_model", "train_sae", "label_oracle"}


def test_missing_human_labels_stop_with_the_command_to_run(study):
    first = study["first"]
    assert first.returncode != 0
    assert len(study["commands"]) == 2, first.stderr[-3000:]
    assert all("--descriptions results/local-gpt2/labels/descriptions.json" in c and
               "--n 48 --seed 42" in c for c in study["commands"])
    assert "MissingInputException" not in first.stderr
    for proc in study["labelled"]:
        assert proc.returncode == 0 and "Done: all 48 items labelled" in proc.stdout, proc.stderr


def test_every_stage_runs_and_a_rerun_has_nothing_to_do(study):
    assert "Nothing to be done" in study["again"].stdout + study["again"].stderr
    work = study["work"]
    for name in ("confusion", "lpf_naive", "lpf_two-bucket", "lpf_general", "resid_patching",
                 "top_latents", "faithfulness", "latent_activations", "probe_accuracy",
                 "probe_heatmap", "cohens_d"):
        png = work / RESULTS / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert study["llm_calls"] >= local_hub.D_SAE  # every description went to the endpoint


def test_descriptions_are_downloaded_once_batch_by_batch(study):
    batches = sorted(r for r in study["store_requests"] if r.endswith(".jsonl.gz"))
    n = -(-local_hub.D_SAE // 40)
    assert len(batches) == n + 1  # each batch once, then the one that says there is no more
    cache = study["work"] / "inputs" / "neuronpedia-cache" / local_study.MODEL_ID
    assert len(list(cache.rglob("batch-*.jsonl.gz"))) == n


def test_the_users_labels_are_never_written(study):
    work = study["work"]
    assert {p.name: p.read_bytes() for p in (work / "labels").glob("*.json")} == \
        study["labels_before"]


def test_outputs_keep_their_contracts(study):
    """Each output read back through its format's one reader, with provenance."""
    from saeflow.formats.activations import open_activations
    from saeflow.formats.codes import read_codes
    from saeflow.formats.descriptions import read_descriptions
    from saeflow.formats.labels import read_labelled
    from saeflow.labels.study import load_study
    from saeflow.patch.attribution import read_atp
    from saeflow.patch.resid import read_resid
    from saeflow.probe.dataset import read_probe_dataset

    out = study["work"] / RESULTS
    for name in ("study_a", "study_b"):
        with open_activations(out / "activations" / f"{name}.h5") as h5:
            assert {"answer_token_id", "model_correct", "label"} <= set(h5["meta"])
            assert json.loads(h5.attrs["provenance"])["git_commit"]
        codes = read_codes(out / "codes" / f"{name}.h5", local_hub.HOOK)
        assert codes.shape[1] == local_hub.D_SAE and codes.nnz > 0
    descriptions = read_descriptions(out / "labels" / "descriptions.json")
    assert len(descriptions) == local_hub.D_SAE
    assert descriptions[0]["feature_id"] == f"{local_study.SOURCE}-0"
    for category in ("animals", "numbers"):
        assert len(read_labelled(out / "labels" / "classified" / f"{category}.json")) == \
            local_hub.D_SAE
        human = read_labelled(out / "labels" / "human" / f"{category}.json")
        assert len(human) == 48
        agreement = json.loads((out / "labels" / "agreement" / f"{category}.json").read_text())
        assert agreement["n"] == 48 and 0.5 < agreement["accuracy"] < 1.0  # 7 flips
    study_file = load_study(out / "correction" / "study.yaml")
    assert set(study_file.categories) == {"animals", "numbers"} and study_file.other is not None
    for method in ("naive", "two-bucket", "general"):
        result = json.loads((out / "correction" / f"{method}.json").read_text())
        assert set(result["categories"]) >= {"animals", "numbers"}
        assert all(len(c["ci95"]) == 2 for c in result["categories"].values())
    # string classes in sorted order, the mapping recorded in the dataset file
    ds = read_probe_dataset(out / "probe" / "data" / "study_a" / "hid_concept_L0.h5")
    assert ds.class_names == list(local_study.CLASSES) and ds.meta["target"] == {"column": "label"}
    failure = read_probe_dataset(out / "probe" / "data" / "study_b" / "sae_failure.h5")
    assert set(failure.y.tolist()) == {0, 1}  # answers make both outcomes occur
    summary = json.loads((out / "probe" / "summary.json").read_text())
    assert {f"{ps}/{name}" for ps in ("study_a", "study_b") for name in
            ("hid_concept_L0", "hid_concept_L1", "sae_concept", "sae_failure")} == set(
        summary["datasets"])
    resid = read_resid(out / "patch" / "resid.h5")
    assert resid is not None
    atp, _ = read_atp(out / "patch" / "atp.h5")
    assert len(atp) == 2  # with and without the SAE error term
    patch = json.loads((out / "patch" / "summary.json").read_text())
    assert patch["n_pairs"] == 12


def test_a_bad_prompt_is_one_line_in_the_log_and_on_the_console_and_leaves_nothing(study):
    """Bad input met inside a rule: Snakemake's non-zero exit, the one line on the console and
    in the rule's log, no output file, the user's file unchanged."""
    import yaml

    work = study["work"]
    prompts = work / "inputs" / "bad.jsonl"
    first = (work / "inputs" / "study_a.jsonl").read_text().splitlines()[0]
    prompts.write_text(first + "\n\n" + json.dumps({"text": "a b", "answer": " dog cat"}) + "\n")
    before = prompts.read_bytes()
    config = yaml.safe_load((work / "study.yaml").read_text())
    config.update(experiment="bad", stages=[])
    config["extraction"]["prompt_sets"] = {"bad": "inputs/bad.jsonl"}
    for section in ("labels", "probe", "patch"):
        config.pop(section)
    (work / "bad.yaml").write_text(yaml.safe_dump(config))
    target = "results/bad/activations/bad.h5"
    proc = run_snakemake(work, target, "--cores", "1", "--configfile", "bad.yaml", check=False,
                         env=study["env"])
    # the blank line 2 counts: errors name file lines, from 1
    line = re.compile(r"^saeflow: error: inputs/bad\.jsonl: line 3\.answer: ' dog cat' is \d+ "
                      r"tokens, not one$", re.M)
    assert proc.returncode != 0 and line.search(proc.stderr), proc.stderr[-3000:]
    log = work / "results" / "bad" / "logs" / "extract" / "extract" / "bad.log"
    assert "inputs/bad.jsonl: line 3.answer: ' dog cat' is" in log.read_text()
    assert not (work / target).exists() and prompts.read_bytes() == before


def test_a_sharded_study_reads_as_the_unsharded_one(study):
    """extraction.shard_size 16 over 48-prompt sets: three extract and encode jobs per set,
    gathered into virtual datasets that later stages read as the unsharded files."""
    import h5py
    import numpy as np
    import yaml

    from saeflow.formats.codes import read_codes
    from saeflow.probe.dataset import read_probe_dataset

    work = study["work"]
    config = yaml.safe_load((work / "study.yaml").read_text())
    config.update(experiment="sharded", stages=[])
    config["extraction"]["shard_size"] = 16
    (work / "sharded.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    targets = ["results/sharded/codes/study_a.h5", "results/sharded/codes/study_b.h5",
               "results/sharded/activations/study_b.h5",
               "results/sharded/probe/data/study_a/sae_concept.h5"]
    args = ["--cores", "2", "--resources", "gpu=1", "--configfile", "sharded.yaml"]
    dry = run_snakemake(work, "-n", *targets, *args, env=study["env"])
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", dry.stdout, re.M))
    assert jobs.get("extract_shard") == "6" and jobs.get("encode_shard") == "6", dry.stdout
    assert jobs.get("gather_activations") == jobs.get("gather_codes") == "2"
    assert "extract" not in jobs and "encode" not in jobs
    run_snakemake(work, *targets, *args, env=study["env"])

    ours, theirs = work / "results" / "sharded", work / RESULTS
    for name in ("study_a", "study_b"):
        with h5py.File(ours / "activations" / f"{name}.h5") as a, \
                h5py.File(theirs / "activations" / f"{name}.h5") as b:
            for hook in json.loads(b.attrs["hooks"]):
                assert a[f"acts/{hook}"].is_virtual
                np.testing.assert_array_equal(a[f"acts/{hook}"][()], b[f"acts/{hook}"][()])
            np.testing.assert_array_equal(a["meta/answer_logprob"][()],
                                          b["meta/answer_logprob"][()])
        assert (read_codes(ours / "codes" / f"{name}.h5", local_hub.HOOK) !=
                read_codes(theirs / "codes" / f"{name}.h5", local_hub.HOOK)).nnz == 0
    sharded = read_probe_dataset(ours / "probe" / "data" / "study_a" / "sae_concept.h5")
    whole = read_probe_dataset(theirs / "probe" / "data" / "study_a" / "sae_concept.h5")
    np.testing.assert_array_equal(sharded.y, whole.y)
    dense = [np.asarray(x.todense() if hasattr(x, "todense") else x)  # CSR for SAE inputs
             for x in (sharded.X, whole.X)]
    np.testing.assert_array_equal(*dense)
