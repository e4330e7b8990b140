"""End to end: the toy DAG runs in a temporary directory; lint and the real-model DAG build."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from saeflow.testing.workspace import TEST_CONFIGS, REPO, run_snakemake, sync_workflow

pytestmark = pytest.mark.slow


def test_toy_dag_produces_every_stage(toy_run):
    results = toy_run / "results" / "toy"
    metrics = json.loads((results / "model" / "metrics.json").read_text())
    assert metrics["heldout_seen"]["n"] == 200
    assert metrics["provenance"]["config"]["model"]["train"]["steps"] == 150
    # trained on the prompt's next tokens too: it predicts text better than a uniform guess
    seen = metrics["heldout_seen"]
    assert seen["next_token_loss"] < 0.5 * seen["uniform_next_token_loss"], seen
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
    patch = json.loads((results / "patch" / "summary.json").read_text())
    for mode in ("with_error", "without_error"):  # AtP judged against every node's exact effect
        vs = patch["atp_vs_exhaustive"][mode]
        assert vs["n_latents"] == 2 * 512 and vs["n_run"] > 0 and vs["at_k"]
        assert patch["faithfulness"][mode][0]["faithfulness_ci95"] is not None
    assert patch["toy_check"]["embedding_identity"]["holds"], patch["toy_check"]
    assert patch["circuit"]["n_nodes"] > 0
    probe = json.loads((results / "probe" / "summary.json").read_text())["datasets"]
    assert probe["heldout_seen/hid_concept_L1"]["readout_check"]["holds"] is not None


def test_every_rule_logs_what_it_did(toy_run):
    logs = sorted((toy_run / "results" / "toy" / "logs").rglob("*.log"))
    assert len(logs) > 30
    for path in logs:  # logs/<stage>/<rule>/<wildcards>.log
        assert len(path.relative_to(toy_run / "results" / "toy" / "logs").parts) >= 3, path
        text = path.read_text()
        assert "INFO saeflow: rule " in text and "INFO saeflow: done in " in text, path
        assert "wrote " in text, path


def test_nothing_to_do_after_a_complete_run(toy_run):
    proc = run_snakemake(toy_run, "-n", "--configfile", *TEST_CONFIGS)
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


STAGE_RULES = {
    "labels": {"fetch_neuronpedia", "describe", "classify", "import_human_labels", "agree",
               "ablate_categories", "correction_study", "correct", "plot_lpf", "plot_confusion"},
    "probe": {"probe_data", "probe_fit", "probe_effects", "probe_summary", "plot_probe_accuracy"},
    "patch": {"patch_resid", "patch_estimate", "patch_verify", "patch_summary",
              "plot_resid_patching"},
}
def _model_source(path):
    import yaml

    return (yaml.safe_load(path.read_text()).get("model") or {}).get("source")


# every shipped config of a real model (config.yaml, test.yaml and toy-circuit.yaml are the toy's),
# pretrained or local: a local model's checkpoint folder, corpus and prompts are the user's own
# and absent on a fresh clone (planned without; tests/workflow/test_own_model.py runs one).
REAL_CONFIGS = sorted(p.name for p in (REPO / "config").glob("*.yaml")
                      if p.name != "test.yaml" and _model_source(p) != "toy")


@pytest.mark.parametrize("name", REAL_CONFIGS)
def test_every_shipped_real_config_plans_every_stage_it_names_offline(tmp_path, name):
    import yaml

    workdir = sync_workflow(tmp_path)
    config = yaml.safe_load((workdir / "config" / name).read_text())
    stages = config["stages"]
    proc = run_snakemake(workdir, "-n", "--quiet", "rules", "--configfile", f"config/{name}",
                         env={"HF_HUB_OFFLINE": "1"})
    planned = set(proc.stdout.split())
    assert {"extract", "encode", "evaluate_saes"} <= planned
    assert not planned & {"toy_world", "train_model"}
    assert ("train_sae" in planned) == (config["sae"]["source"] == "train")
    if config["model"]["source"] == "local":  # the user's own files: named, planned without
        assert f"saeflow: warning: config/{name}: model.path: " in proc.stderr
    for stage in stages:
        assert STAGE_RULES[stage] <= planned, (stage, STAGE_RULES[stage] - planned)
    assert stages, f"{name} runs no stage beyond encoding"


def test_shipped_prompt_files_are_the_generators_and_valid(tmp_path):
    from saeflow.core.prompts import load_prompt_set
    from saeflow.toy import study_prompts

    study_prompts.write(tmp_path)
    for path in sorted(tmp_path.iterdir()):
        assert (REPO / "config" / "prompts" / path.name).read_text() == path.read_text(), path.name
        records = load_prompt_set(path)
        assert all(r["answer"].startswith(" ") for r in records)
    pairs = load_prompt_set(tmp_path / "error_pairs.jsonl")
    assert len(pairs) >= 200 and len({r["family"] for r in pairs}) >= 4
    assert [r["role"] for r in pairs[:2]] == ["clean", "corrupted"]
    labelled = load_prompt_set(tmp_path / "error_types.jsonl")
    assert {r["label"] for r in labelled} == set(study_prompts.ERROR_TYPES)


@pytest.mark.parametrize("override, line", [
    ("sae:\n  source: train\n  hooks: [blocks.0.hook_resid_post]\n  d_sea: 3\n",
     "config/config.yaml + bad.yaml: sae.d_sea: unknown key; did you mean 'd_sae'?"),
    ("extraction:\n  dtype: int8\n",
     "config/config.yaml + bad.yaml: extraction.dtype: 'int8' is not one of ['float16', 'float32']"),
    ("extraction:\n  prompt_sets: {}\n",
     "bad.yaml: extraction.prompt_sets: an empty mapping does not clear what an earlier config "
     "file sets (files merge key by key); give the value you want"),
    ("extraction:\n  prompt_sets: [heldout_seen, heldout_seen]\n",
     "config/config.yaml + bad.yaml: extraction.prompt_sets: 'heldout_seen' listed twice"),
    ("sae:\n  hooks: [blocks.2.hook_resid_post]\n",
     "config/config.yaml + bad.yaml: sae.hooks: hook 'blocks.2.hook_resid_post' is beyond the "
     "model's 2 layers (blocks.0 to blocks.1)"),
    ("sae:\n  transcoders: {blocks.0.ln2.hook_normalized: blocks.0.hook_mlp_out}\n",
     "config/config.yaml + bad.yaml: sae.transcoders.blocks.0.ln2.hook_normalized: "
     "'blocks.0.ln2.hook_normalized' is not a site of sae.hooks"),
    ("sae:\n  hooks: [blocks.0.ln2.hook_normalized, blocks.1.hook_mlp_out]\n"
     "  transcoders: {blocks.0.ln2.hook_normalized: blocks.1.hook_mlp_out}\n",
     "config/config.yaml + bad.yaml: sae.transcoders.blocks.0.ln2.hook_normalized: output hook "
     "'blocks.1.hook_mlp_out' is not a later hook of the input's block (e.g. "
     "blocks.0.ln2.hook_normalized -> blocks.0.hook_mlp_out)"),
    ("sae:\n  hooks: [blocks.0.hook_resid_post, blocks.0.ln2.hook_normalized]\n"
     "  transcoders: {blocks.0.hook_resid_post: blocks.0.ln2.hook_normalized}\n",
     "config/config.yaml + bad.yaml: sae.transcoders.blocks.0.hook_resid_post: output hook "
     "'blocks.0.ln2.hook_normalized' is not a later hook of the input's block (e.g. "
     "blocks.0.ln2.hook_normalized -> blocks.0.hook_mlp_out)"),
    ("sae:\n  hooks: [blocks.0.ln2.hook_normalized, blocks.0.mlp.hook_post]\n"
     "  transcoders: {blocks.0.ln2.hook_normalized: blocks.0.hook_mlp_out}\n",
     "config/config.yaml + bad.yaml: sae.transcoders.blocks.0.ln2.hook_normalized: site "
     "'blocks.0.mlp.hook_post' lies between the transcoder's input and output hooks"),
    ("probe:\n  datasets:\n    - {name: h, strategy: hidden-to-concept, layers: \"0-5\"}\n",
     "config/config.yaml + bad.yaml: probe.datasets[0].layers: spec '0-5' names layer 5, "
     "beyond the model's 2 layers (0 to 1)"),
    # once Snakemake-formatted ValueErrors from the .smk files, now one line like the rest
    ("probe:\n  prompt_sets: [heldout_seen, train]\n",
     "config/config.yaml + bad.yaml: probe.prompt_sets: 'train' is not among "
     "extraction.prompt_sets ['heldout_seen', 'heldout_unseen', 'pairs']"),
    ("probe:\n  datasets:\n    - {name: h, strategy: hidden-to-concept, layers: \"0\"}\n"
     "    - {name: h, strategy: sae-to-concept, layers: \"1\"}\n",
     "config/config.yaml + bad.yaml: probe.datasets[1].name: dataset 'h' is also "
     "probe.datasets[0]'s: names must differ (per_layer adds _L<layer>)"),
    ("seed: 1\nseed: 2\n", "bad.yaml: line 2: key 'seed' given twice in one mapping"),
    ("extraction:\n  shard_size: 64\n",
     "config/config.yaml + bad.yaml: extraction.shard_size: the toy world's prompt sets are made "
     "by the DAG and are not sharded; name prompt-set files to shard"),
    ("extraction:\n  prompt_sets: {p: config/prompts/ioi.jsonl}\n  batch_size: 16\n"
     "  shard_size: 40\n",
     "config/config.yaml + bad.yaml: extraction.shard_size: 40 is not a multiple of "
     "extraction.batch_size (16)"),
])
def test_bad_config_is_one_line_naming_the_file_and_key(tmp_path, override, line):
    workdir = sync_workflow(tmp_path)
    (workdir / "bad.yaml").write_text(override)
    proc = run_snakemake(workdir, "-n", "--configfile", "config/config.yaml", "bad.yaml",
                         check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"saeflow: error: {line}", proc.stderr[-2000:]


def test_a_study_config_stands_alone(tmp_path):
    """A --configfile gets the schema's defaults plus what it says, never the toy's sections."""
    workdir = sync_workflow(tmp_path)
    (workdir / "p.jsonl").write_text('{"text": "a b c", "answer": " d"}\n')
    (workdir / "study.yaml").write_text(
        "experiment: mine\nmodel: {source: pretrained, name: gpt2}\n"
        "sae: {source: pretrained, release: gpt2-small-res-jb, hooks: [blocks.0.hook_resid_pre],"
        " ids: {blocks.0.hook_resid_pre: blocks.0.hook_resid_pre}}\n"
        "extraction: {prompt_sets: {mine: p.jsonl}, hooks: [blocks.0.hook_resid_pre]}\n")
    proc = run_snakemake(workdir, "-n", "--configfile", "study.yaml", "--quiet", "rules")
    assert set(proc.stdout.split()) >= {"extract", "encode", "evaluate_saes"}
    assert "toy_world" not in proc.stdout and "classify" not in proc.stdout
    (workdir / "study.yaml").write_text((workdir / "study.yaml").read_text() + "stages: [labels]\n")
    proc = run_snakemake(workdir, "-n", "--configfile", "study.yaml", check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "saeflow: error: study.yaml: stages: 'labels' is listed but the config has no 'labels' "
        "section (config/README.md)")
    base = (workdir / "study.yaml").read_text().replace("stages: [labels]\n", "")
    for extra, line in (("world: {n_train: 100}\n", "world: toy-world only"),
                        ("probe: {toy_check: {informative_positions: [final]}}\n",
                         "probe.toy_check: toy-world only")):
        (workdir / "study.yaml").write_text(base + extra)
        proc = run_snakemake(workdir, "-n", "--configfile", "study.yaml", check=False)
        assert proc.returncode == 2 and proc.stderr.strip() == f"saeflow: error: study.yaml: {line}"\
            ": a pretrained model does not use it"
    (workdir / "study.yaml").write_text(base)
    # A prompt file not in place yet: a dry run plans without it and says so; a run stops
    # with that line before any job starts, writing nothing.
    (workdir / "p.jsonl").unlink()
    line = "study.yaml: extraction.prompt_sets.mine: prompt file 'p.jsonl' does not exist"
    proc = run_snakemake(workdir, "-n", "--configfile", "study.yaml", check=False)
    assert proc.returncode == 0 and f"saeflow: warning: {line}" in proc.stderr
    assert "rule extract:" in proc.stdout
    proc = run_snakemake(workdir, "--cores", "1", "--configfile", "study.yaml", check=False)
    assert proc.returncode == 2 and f"saeflow: error: {line}\n" in proc.stderr
    assert not (workdir / "results" / "mine").exists()
