"""Bad config is one line at parse time, naming the file and the key path, exit 2: checked by
calling check_config as the Snakefile does (tests/workflow/test_workflow.py runs a few of the
same through snakemake)."""

import shutil

import pytest
import yaml
from snakemake.utils import update_config

from saeflow.core.config import SCHEMA_PATH, check_config
from saeflow.testing.workspace import REPO

STUDY = """\
experiment: s
model: {source: pretrained, name: gpt2}
sae: {source: pretrained, release: gpt2-small-res-jb, hooks: [blocks.6.hook_resid_pre],
      ids: {blocks.6.hook_resid_pre: blocks.6.hook_resid_pre}}
extraction: {prompt_sets: {p: p.jsonl}, hooks: [blocks.0.hook_resid_pre, blocks.6.hook_resid_pre]}
probe:
  prompt_sets: [p]
  hook_template: "blocks.{layer}.hook_resid_pre"
  datasets: [{name: h, strategy: hidden-to-concept, layers: "0,6"}]
"""
PROBE = "stages: [probe]\n"
TOY = "config/config.yaml + bad.yaml"


def _check(tmp_path, monkeypatch, capsys, files):
    """check_config of ``files`` (name -> YAML text, merged in order) in ``tmp_path``: the
    one line it prints, or None when the config passes."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(REPO / "config", tmp_path / "config", dirs_exist_ok=True)
    (tmp_path / "p.jsonl").write_text('{"text": "a b c", "answer": " d"}\n')
    config = {}
    for name, text in files.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        update_config(config, yaml.safe_load((tmp_path / name).read_text()))
    try:
        check_config(config, list(files), "config/config.yaml", SCHEMA_PATH)
    except SystemExit as stop:
        assert stop.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("saeflow: error: "), err
        return err.strip().removeprefix("saeflow: error: ")
    return None


@pytest.mark.parametrize("extra, line", [
    # values of the wrong type (JSON Schema counts 8.0 as an integer; a range step does not)
    ("extraction: {batch_size: 2.5}\n",
     "extraction.batch_size: 2.5 is not of type 'integer'"),
    ("extraction: {batch_size: 8.0}\n",
     "extraction.batch_size: 8.0 is not of type 'integer' (write 8)"),
    ("extraction: {shard_size: 8.0}\n",
     "extraction.shard_size: 8.0 is not of type 'integer', 'null' (write 8)"),
    # YAML reads an unquoted no as False: as a prompt-set name, as a key
    ("extraction: {prompt_sets: {no: p.jsonl}}\n",
     "extraction.prompt_sets: key False is not a name: YAML reads an unquoted no, yes, on, off, "
     "true, false (a boolean) or null or a number as such; quote it (e.g. 'no')"),
    # the experiment is one safe folder under results/
    ("experiment: ../x\n", "experiment: '../x' is not a folder name: letters, digits, _ . - "
     "only, not starting with . or - (outputs go to results/{experiment}/, never elsewhere)"),
    ("experiment: ..\n", "experiment: '..' is not a folder name: letters, digits, _ . - only, "
     "not starting with . or - (outputs go to results/{experiment}/, never elsewhere)"),
    (f"experiment: {'x' * 256}\n",
     "experiment: 256 bytes long, beyond the file system's limit of 255 for one name"),
    (f"extraction: {{prompt_sets: {{{'p' * 250}: p.jsonl}}}}\n",
     f"extraction.prompt_sets.{'p' * 40}...: a name of 250 bytes: outputs named after it "
     "({name}.shards) would pass the file system's limit of 255 for one name"),
    # toy-style prompt-set names (a list) with a pretrained model
    ("extraction: {prompt_sets: [heldout_seen]}\n",
     "extraction.prompt_sets: names without files are the toy world's sets: a pretrained model "
     "needs name -> JSONL path (e.g. {mine: data/prompts.jsonl})"),
    # an SAE hook that is not extracted: encoding would fail after extraction
    ("sae: {hooks: [blocks.3.hook_resid_pre], ids: {blocks.3.hook_resid_pre: x}}\n",
     "sae.hooks[0]: 'blocks.3.hook_resid_pre' is not among extraction.hooks "
     "['blocks.0.hook_resid_pre', 'blocks.6.hook_resid_pre']: encoding reads each SAE hook's "
     "stored activations; add it there"),
    # the probe stage: its prompt sets, dataset names and layers
    (PROBE + "probe: {prompt_sets: [p, q]}\n",
     "probe.prompt_sets: 'q' is not among extraction.prompt_sets ['p']"),
    (PROBE + "probe: {datasets: [{name: h, strategy: hidden-to-concept, layers: '0',"
     " prompt_sets: [z]}]}\n",
     "probe.datasets[0].prompt_sets: 'z' is not among extraction.prompt_sets ['p']"),
    ("probe: {datasets: [{name: h, strategy: hidden-to-concept, layers: '0'},"
     " {name: h, strategy: sae-to-concept, layers: '6'}]}\n",
     "probe.datasets[1].name: dataset 'h' is also probe.datasets[0]'s: names must differ "
     "(per_layer adds _L<layer>)"),
    ("probe: {datasets: [{name: h_L6, strategy: hidden-to-concept, layers: '6'},"
     " {name: h, strategy: hidden-to-concept, layers: '0,6', per_layer: true}]}\n",
     "probe.datasets[1].name: dataset 'h_L6' is also probe.datasets[0]'s: names must differ "
     "(per_layer adds _L<layer>)"),
    (PROBE + "probe: {datasets: []}\n",
     "probe.datasets: 'probe' is in stages but no dataset is defined"),
    (PROBE + "probe: {datasets: [{name: h, strategy: hidden-to-concept, layers: '5,13'}]}\n",
     "probe.datasets[0].layers: spec '5,13' names layer 13, beyond the model's 12 layers "
     "(0 to 11)"),
    (PROBE + "probe: {datasets: [{name: h, strategy: hidden-to-concept, layers: '5'}]}\n",
     "probe.datasets[0].layers: spec '5' names layer 5, whose hook 'blocks.5.hook_resid_pre' "
     "(probe.hook_template) is not among extraction.hooks"),
    (PROBE + "model: {name: my-own-model}\n"  # layers unknown at parse time: the stored hooks
     "probe: {datasets: [{name: h, strategy: hidden-to-concept, layers: '0-2'}]}\n",
     "probe.datasets[0].layers: spec '0-2' names layer 1, whose hook 'blocks.1.hook_resid_pre' "
     "(probe.hook_template) is not among extraction.hooks"),
    (PROBE + "probe: {datasets: [{name: s, strategy: sae-to-concept, layers: '0'}]}\n",
     "probe.datasets[0].layers: spec '0' names layer 0, whose hook 'blocks.0.hook_resid_pre' has "
     "no SAE (sae.hooks): sae-to-concept reads its codes"),
    (PROBE + "probe: {datasets: [{name: e, strategy: embedding-to-feature,"
     " target: {layer: 0, feature: 3}}]}\n",
     "probe.datasets[0].target.layer: spec 0 names layer 0, whose hook 'blocks.0.hook_resid_pre' "
     "has no SAE (sae.hooks): embedding-to-feature reads its codes"),
])
def test_a_bad_study_config_is_one_line(tmp_path, monkeypatch, capsys, extra, line):
    merged = yaml.safe_load(STUDY)
    update_config(merged, yaml.safe_load(extra))
    text = yaml.safe_dump(merged, sort_keys=False) if "no:" not in extra else STUDY.replace(
        "{p: p.jsonl}", "{no: p.jsonl}")
    assert _check(tmp_path, monkeypatch, capsys, {"s.yaml": text}) == f"s.yaml: {line}"


def test_a_results_path_beyond_path_max_is_refused(tmp_path, monkeypatch, capsys):
    from saeflow.core import config_checks

    monkeypatch.setattr(config_checks, "_limits", lambda root: (255, 200))
    line = _check(tmp_path, monkeypatch, capsys, {"s.yaml": STUDY.replace("experiment: s",
                                                                          "experiment: " + "x" * 80)})
    assert line.startswith(f"s.yaml: experiment: results path {tmp_path}/results/xxx") and \
        line.endswith("bytes: with the files under it, beyond the file system's limit of 200 "
                      "for a path")


@pytest.mark.parametrize("extra, line", [
    ("extraction:\n  prompt_sets: [heldout_seen, no]\n",
     "extraction.prompt_sets[1]: False is not of type 'string' (YAML reads an unquoted no, yes, "
     "on, off, true, false (a boolean) or null as such: quote it, e.g. 'no')"),
    ("extraction:\n  prompt_sets: [heldout_seen, heldout]\n",
     "extraction.prompt_sets: 'heldout' is not a toy prompt set (they are train, heldout_seen, "
     "heldout_unseen, pairs)"),
    ("probe:\n  prompt_sets: [heldout_seen, train]\n",
     "probe.prompt_sets: 'train' is not among extraction.prompt_sets ['heldout_seen', "
     "'heldout_unseen', 'pairs']"),
])
def test_a_bad_toy_config_is_one_line(tmp_path, monkeypatch, capsys, extra, line):
    files = {"config/config.yaml": None, "bad.yaml": extra}
    assert _check(tmp_path, monkeypatch, capsys, files) == f"{TOY}: {line}"


@pytest.mark.parametrize("files", [
    ["config/config.yaml"], ["config/config.yaml", "config/test.yaml"],
    ["config/toy-circuit.yaml"], ["config/gpt2-small.yaml"], ["config/gemma-2-2b.yaml"],
    ["config/gemma-2-2b-it.yaml"], ["config/gemma-2-9b.yaml"],
    ["config/llama-3.2-1b-failures.yaml"], ["config/llama-3.2-1b-failures-test.yaml"]])
def test_every_shipped_config_passes(tmp_path, monkeypatch, capsys, files):
    assert _check(tmp_path, monkeypatch, capsys, dict.fromkeys(files)) is None


OWN = """\
experiment: s
model: {source: local, name: gpt2, path: ck}
sae: {source: train, hooks: [blocks.1.hook_resid_pre], corpus: corpus.jsonl}
extraction: {prompt_sets: {p: p.jsonl}, hooks: [blocks.0.hook_resid_pre, blocks.1.hook_resid_pre]}
"""


def _checkpoint(folder, layers=2, drop=()):
    """A checkpoint folder's files as a parse sees them (the weights are never read)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"config.json": f'{{"model_type": "gpt2", "n_layer": {layers}, "n_embd": 64}}',
             "model.safetensors": "weights", "tokenizer.json": "{}",
             "tokenizer_config.json": "{}"}
    for name, text in files.items():
        if name not in drop:
            (folder / name).write_text(text)
    return folder


def _own(tmp_path, monkeypatch, capsys, extra, **checkpoint):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no dataset is cached there
    _checkpoint(tmp_path / "ck", **checkpoint)
    (tmp_path / "corpus.jsonl").write_text('{"text": "a b c"}\n')
    (tmp_path / "corpus.txt").write_text("a b c\n")
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "folder").mkdir()
    merged = yaml.safe_load(OWN)
    update_config(merged, yaml.safe_load(extra))
    return _check(tmp_path, monkeypatch, capsys, {"s.yaml": yaml.safe_dump(merged)})


@pytest.mark.parametrize("extra, line", [
    # model.source: local, its folder and architecture
    ("model: {path: p.jsonl}\n", "model.path: 'p.jsonl' is not a folder (a Hugging Face "
     "checkpoint folder: config.json, weights, tokenizer)"),
    ("model: {path: folder}\n", "model.path: folder has no config.json: not a Hugging Face "
     "checkpoint folder (save it with save_pretrained)"),
    ("model: {name: gpt-5-nano}\n", "model.name: 'gpt-5-nano' is not an architecture "
     "TransformerLens knows"),
    ("sae: {hooks: [blocks.2.hook_resid_pre]}\nextraction: {hooks: [blocks.2.hook_resid_pre]}\n",
     "extraction.hooks: hook 'blocks.2.hook_resid_pre' is beyond the model's 2 layers "
     "(blocks.0 to blocks.1)"),
    # sae.source: train for any model: its corpus and options
    ("sae: {corpus: org/nope}\n", "sae.corpus: 'org/nope' is no file or folder, and no "
     "dataset of that name is in the local Hugging Face cache (HF_HOME)"),
    ("sae: {corpus: empty.jsonl}\n", "sae.corpus: 'empty.jsonl' is empty: no record to train on"),
    ("sae: {corpus: folder}\n", "sae.corpus: 'folder' is a folder but not a dataset saved with "
     "datasets' save_to_disk (no state.json or dataset_dict.json)"),
    ("sae: {corpus: corpus.txt, positions: [final, reasoning]}\n", "sae.positions: named "
     "position 'reasoning' needs pos_reasoning fields: a text-file corpus has none (give a "
     "JSONL file or a dataset)"),
    ("sae: {pack: true, positions: final}\n", "sae.pack: packs whole records; it trains on every "
     "token (sae.positions: all), not on chosen positions"),
    ("sae: {architecture: topk, k: 200, d_sae: 100}\n", "sae.k: 200 active latents of sae.d_sae "
     "100: k must not exceed d_sae"),
    ("sae: {architecture: jumprelu, transcoders: {blocks.1.hook_resid_pre: blocks.1.hook_mlp_out}}"
     "\n", "sae.transcoders: transcoders are trained by saeflow's own loop (sae-lens has none): "
     "standard architecture, every token of each record (sae.architecture: standard, "
     "sae.positions: all, no sae.pack)"),
])
def test_a_bad_own_model_or_training_config_is_one_line(tmp_path, monkeypatch, capsys, extra,
                                                        line):
    got = _own(tmp_path, monkeypatch, capsys, extra)
    assert got is not None and got.startswith(f"s.yaml: {line}"), got


@pytest.mark.parametrize("extra, line", [
    ("model: {path: nope}\n", "model.path: 'nope' does not exist: the Hugging Face checkpoint "
     "folder (config.json, weights, tokenizer)"),
    ("sae: {corpus: nope.jsonl}\n", "sae.corpus: 'nope.jsonl' does not exist"),
    ("sae: {corpus: ./nope}\n", "sae.corpus: './nope' does not exist"),
    ("extraction: {prompt_sets: {p: nope.jsonl}}\nsae: {corpus: corpus.jsonl}\n",
     "extraction.prompt_sets.p: prompt file 'nope.jsonl' does not exist"),
])
def test_an_input_not_in_place_yet_is_planned_and_named(tmp_path, monkeypatch, capsys, extra,
                                                        line):
    """A file the user has yet to bring (a shipped study config on a fresh clone): the parse
    passes, so a dry run plans the DAG, and absent_inputs names it, the line a run stops
    with (tests/workflow/test_workflow.py runs both through snakemake)."""
    from saeflow.core.user_files import absent_inputs

    assert _own(tmp_path, monkeypatch, capsys, extra) is None
    config = yaml.safe_load(OWN)
    update_config(config, yaml.safe_load(extra))
    assert [str(e) for e in absent_inputs(config, "s.yaml")] == [f"s.yaml: {line}"]


@pytest.mark.parametrize("drop, line", [
    ("model.safetensors", "model.path: ck has no weights (model.safetensors, model-*.safetensors "
     "or pytorch_model*.bin)"),
    ("tokenizer.json", "model.path: ck has no tokenizer (tokenizer.json, tokenizer.model, or "
     "vocab.json + merges.txt): save the tokenizer with the model (tokenizer.save_pretrained)")])
def test_a_checkpoint_folder_without_weights_or_tokenizer_is_one_line(tmp_path, monkeypatch,
                                                                      capsys, drop, line):
    assert _own(tmp_path, monkeypatch, capsys, "{}\n", drop=(drop,)) == f"s.yaml: {line}"


@pytest.mark.parametrize("config, line", [
    ("model: {source: local, name: gpt2, path: ck}\n", None),
    ("model: {source: pretrained, name: gpt2, path: ck}\nsae: {corpus: null}\n", "model.path: only for model.source: "
     "local (a checkpoint folder of your own)"),
    ("model: {source: local, name: gpt2}\n", "model.path: required for model.source: local: the "
     "Hugging Face checkpoint folder (config.json, weights, tokenizer)"),
    ("model: {source: local, path: ck}\n", "model.name: required for model.source: local: the "
     "TransformerLens architecture the checkpoint instantiates (e.g. meta-llama/Llama-3.2-1B)"),
    ("model: {source: pretrained, name: gpt2}\nsae: {corpus: null}\n", "sae.corpus: required to "
     "train SAEs on this model: a JSONL or text file, a datasets save_to_disk folder, or a "
     "dataset name in the local Hugging Face cache"),
    ("sae: {source: local, paths: {blocks.1.hook_resid_pre: x}}\n", "sae.corpus: only with "
     "sae.source: train (the corpus SAEs are trained on)"),
])
def test_model_source_and_corpus_go_together(tmp_path, monkeypatch, capsys, config, line):
    merged, given = yaml.safe_load(OWN), yaml.safe_load(config)
    merged["model"] = given.pop("model", merged["model"])  # the model section as given
    update_config(merged, given)
    if merged["sae"].get("corpus", "") is None:
        merged["sae"].pop("corpus")
    _checkpoint(tmp_path / "ck")
    (tmp_path / "corpus.jsonl").write_text('{"text": "a b c"}\n')
    got = _check(tmp_path, monkeypatch, capsys, {"s.yaml": yaml.safe_dump(merged)})
    assert got == (None if line is None else f"s.yaml: {line}")


@pytest.mark.parametrize("name, files", [
    ("config/llama-3.2-1b-failures.yaml",
     {"models/llama-3.2-1b-failures": 16, "data/failures/train.jsonl": None,
      "data/failures/prompts.jsonl": None}),
    ("config/llama-3.2-1b-failures-test.yaml",
     {"inputs/finetuned": 2, "inputs/failures_train.jsonl": None,
      "inputs/failures.jsonl": None})])
def test_the_failure_study_configs_pass_with_their_inputs(tmp_path, monkeypatch, capsys, name,
                                                          files):
    for path, layers in files.items():
        if layers is None:
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_text('{"text": "a b", "correct": true, "pos_r1": 1}\n')
        else:
            _checkpoint(tmp_path / path, layers=layers)
    assert _check(tmp_path, monkeypatch, capsys, {name: None}) is None
    (tmp_path / next(iter(files)) / "model.safetensors").unlink()
    assert _check(tmp_path, monkeypatch, capsys, {name: None}).startswith(f"{name}: model.path: ")


def test_autointerp_needs_every_token_extracted(tmp_path, monkeypatch, capsys):
    """The toy stores every token: autointerp passes; a study storing chosen positions is
    refused at parse time, not when describe runs after extraction."""
    llm = "{base_url: 'http://127.0.0.1:1/v1', model: m}"
    toy = {"config/config.yaml": None,
           "bad.yaml": f"labels: {{describe: {{backend: autointerp, llm: {llm}}}}}\n"}
    assert _check(tmp_path, monkeypatch, capsys, toy) is None
    toy["bad.yaml"] += "extraction: {positions: [final]}\n"
    assert _check(tmp_path, monkeypatch, capsys, toy) == (
        f"{TOY}: extraction.positions: ['final']: labels.describe.backend autointerp reads "
        "every token's code (contexts around each latent's activations): set positions: all")
