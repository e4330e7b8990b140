"""Rule describe's autointerp backend on files the pipeline writes (activations and CSR codes
of an SAE, a model folder with its tokenizer), against the canned loopback server; then
classification filtered by score and the agreement that feeds the LPF correction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from saeflow.core.errors import InputError
from saeflow.core.io import read_json
from saeflow.formats.codes import read_feature_stat
from saeflow.formats.descriptions import read_description_scores, read_descriptions
from saeflow.formats.hdf5 import open_h5
from saeflow.labels import explainer, scorers
from saeflow.labels.agreement import agreement
from saeflow.labels.autointerp import AutoInterpSettings, split_examples
from saeflow.labels.classify import classify_stage
from saeflow.labels.describe import describe_stage
from saeflow.latents.contexts import latent_contexts

from tests.labels.test_autointerp import MARK, CannedLLM

HOOK = "blocks.1.hook_resid_post"
OPTIONS = {"n_top": 3, "n_quantiles": 2, "per_quantile": 2, "n_non_activating": 3,
           "examples_per_prompt": 5, "window_left": 4, "window_right": 1, "seed": 0}


@pytest.fixture(scope="module")
def study(small_world, tiny_model, random_sae, tmp_path_factory):
    """The described prompt set's activations and codes, the model folder, and
    descriptions.json written by describe_stage (autointerp) with the server's log."""
    from saeflow.encode import encode_to_hdf5
    from saeflow.extract import Storage, extract_to_hdf5
    from saeflow.toy.train import save_toy_model

    root = tmp_path_factory.mktemp("autointerp")
    acts, codes, model = root / "acts.h5", root / "codes.h5", root / "model"
    extract_to_hdf5(tiny_model, small_world.prompt_sets["heldout_seen"], [HOOK], acts,
                    Storage(batch_size=16))
    encode_to_hdf5(acts, codes, {HOOK: lambda: random_sae})
    save_toy_model(tiny_model, model)
    server = CannedLLM()
    cfg = {"backend": "autointerp", **OPTIONS,
           "llm": {"base_url": server.url, "model": "canned-1",
                   "cache_dir": str(root / "cache"), "backoff_s": 0.0}}
    out = root / "labels" / "descriptions.json"
    try:
        describe_stage(cfg, out, HOOK, {"codes": codes, "activations": acts, "model": model},
                       f"sae.paths.{HOOK}", {"source": "toy"})
    finally:
        server.close()
    return {"root": root, "acts": acts, "codes": codes, "out": out, "log": server.log,
            "tokenizer": tiny_model.tokenizer}


def test_every_firing_latent_is_explained_scored_and_traced(study):
    data = read_json(study["out"])
    with open_h5(study["codes"]) as h5:
        firing = np.flatnonzero(read_feature_stat(h5, HOOK, "firing_frequency", study["codes"]))
    assert [r["feature_index"] for r in data["records"]] == firing.tolist()
    assert data["d_sae"] == 96 and data["hook"] == HOOK and data["source"] == HOOK
    assert data["n_features"] == len(firing) and data["score_definitions"] == scorers.DEFINITIONS
    assert data["provenance"]["config"]["backend"] == "autointerp"
    assert data["explainer"]["model"] == "canned-1"
    for record in data["records"]:
        assert record["description"].startswith("mentions of")
        assert set(record["scores"]) == {"detection", "fuzzing"}
    scored = read_description_scores(study["out"])
    assert sorted(scored) == firing.tolist()
    assert any(s["detection"]["balanced_accuracy"] is not None for s in scored.values())
    # the descriptions read as every other description file
    assert len(read_descriptions(study["out"])) == len(firing)


def test_the_prompts_carry_the_contexts_read_from_the_codes(study):
    latent = read_json(study["out"])["records"][0]["feature_index"]
    settings = AutoInterpSettings.from_dict(OPTIONS)
    record = latent_contexts(study["codes"], study["acts"], study["tokenizer"], HOOK, [latent],
                             settings.context_settings())[latent]
    split = split_examples(record, settings.n_top)
    asked = [m[-1]["content"] for m, _ in study["log"] if m[0]["content"] == explainer.SYSTEM]
    lines = [explainer.highlight(c) for c in split.explain]
    prompt = next(u for u in asked if all(line in u for line in lines))
    assert prompt.count("\nActivations: ") == len(split.explain)
    scored = "\n".join(m[-1]["content"] for m, _ in study["log"]
                       if m[0]["content"] == scorers.SYSTEM["detection"])
    for context in [*split.test, *split.non_activating]:
        assert f": {''.join(context['tokens'])}\n" in scored


def test_classification_leaves_latents_below_min_score_unlabelled(study, tmp_path):
    scored = read_description_scores(study["out"])
    values = sorted(s["detection"]["balanced_accuracy"] for s in scored.values()
                    if s["detection"]["balanced_accuracy"] is not None)
    least = values[len(values) // 2]
    below = {i for i, s in scored.items() if s["detection"]["balanced_accuracy"] is None
             or s["detection"]["balanced_accuracy"] < least}
    assert 0 < len(below) < len(scored)
    out = tmp_path / "classified" / "mentions.json"
    categories = {"mentions": {"backend": "keyword", "patterns": ["mentions"], "question": "?"}}
    classify_stage(study["out"], "mentions", categories, out, {"detection": least})
    payload = read_json(out)
    labels = {r["feature_index"]: r["label"] for r in payload["records"]}
    assert {i for i, label in labels.items() if label == "unknown"} == below
    assert {i for i, label in labels.items() if label == "related"} == set(scored) - below
    assert payload["n_filtered"] == len(below) == payload["counts"]["unknown"]
    assert all("filtered" in r for r in payload["records"] if r["feature_index"] in below)
    assert payload["provenance"]["config"]["min_score"] == {"detection": least}
    # a filtered latent's human label is left out of the agreement (and so of the LPF)
    one_below, kept = min(below), sorted(set(scored) - below)[:3]
    human = tmp_path / "human.json"
    human.write_text(json.dumps({"records": [
        {"feature_index": i, "feature_id": f"{HOOK}-{i}", "label": "related"}
        for i in [one_below, *kept]]}))
    metrics, _ = agreement(human, out, n_boot=10)
    assert metrics["n_dropped"] == 1 and metrics["unmapped_labels"]["model"] == {"unknown": 1}
    assert metrics["tp"] == len(kept)


def test_min_score_needs_scored_descriptions(descriptions, tmp_path):
    categories = {"c": {"backend": "keyword", "patterns": ["x"], "question": "?"}}
    with pytest.raises(InputError, match=r"descriptions.json: scores: no description is scored"):
        classify_stage(descriptions, "c", categories, tmp_path / "c.json", {"detection": 0.6})
    assert not (tmp_path / "c.json").exists()


def test_a_malformed_score_names_its_row(tmp_path):
    path = tmp_path / "descriptions.json"
    path.write_text(json.dumps({"records": [
        {"feature_id": "s-0", "feature_index": 0, "description": "d",
         "scores": {"detection": {"balanced_accuracy": 1.5}}}]}))
    with pytest.raises(InputError, match=r"records\[0\].scores.detection.balanced_accuracy"):
        read_description_scores(path)


def test_a_held_out_context_is_marked_as_fuzzing_defines(study):
    """Each activating context a fuzzing prompt shows has exactly its tokens >= 0.3 x its
    maximum marked."""
    latent = read_json(study["out"])["records"][0]["feature_index"]
    settings = AutoInterpSettings.from_dict(OPTIONS)
    record = latent_contexts(study["codes"], study["acts"], study["tokenizer"], HOOK, [latent],
                             settings.context_settings())[latent]
    fuzzing = "\n".join(m[-1]["content"] for m, _ in study["log"]
                        if m[0]["content"] == scorers.SYSTEM["fuzzing"])
    for context in split_examples(record, settings.n_top).test:
        cut = 0.3 * max(context["activations"])
        marked = "".join(f"<<{t}>>" if a >= cut else t
                         for t, a in zip(context["tokens"], context["activations"]))
        assert f": {marked.replace('>><<', '')}\n" in fuzzing
        assert MARK.search(marked)


def test_rule_describe_wires_the_autointerp_inputs(tmp_path):
    """A toy study with the autointerp backend plans describe on the codes, activations and
    model, and classify with its min_score (a dry run: nothing executes)."""
    from saeflow.testing.workspace import TEST_CONFIGS, run_snakemake, sync_workflow

    workdir = sync_workflow(tmp_path)
    (workdir / "ai.yaml").write_text(json.dumps({"labels": {"describe": {
        "backend": "autointerp", "llm": {"base_url": "http://127.0.0.1:9/v1", "model": "m"},
        "min_score": {"detection": 0.6}}}}))
    proc = run_snakemake(workdir, "-n", "-p", "results/toy/labels/classified/digits.json",
                         "--configfile", *TEST_CONFIGS, "ai.yaml")
    describe = proc.stdout[proc.stdout.index("rule describe:"):].split("\n")[1]
    assert describe.split(": ", 1)[1].split(", ") == [
        "results/toy/codes/heldout_seen.h5", "results/toy/activations/heldout_seen.h5",
        "results/toy/model"]
    assert "rule classify:" in proc.stdout
