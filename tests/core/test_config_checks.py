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
    ["config/gemma-2-2b-it.yaml"], ["config/gemma-2-9b.yaml"]])
def test_every_shipped_config_passes(tmp_path, monkeypatch, capsys, files):
    assert _check(tmp_path, monkeypatch, capsys, dict.fromkeys(files)) is None
