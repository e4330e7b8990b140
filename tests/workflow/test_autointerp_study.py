"""A study on SAEs the pipeline trained (the toy's, trained by sae-lens's runner) runs the
labels and correction stages end to end with descriptions from auto-interpretation: the
canned OpenAI-compatible server on loopback explains and scores every firing latent,
classification reads the explanations filtered by score, and the LPF correction solves on
them. On a copy of the shared toy run: only describe and what follows it run again."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from saeflow.core.io import read_json
from saeflow.formats.descriptions import read_description_scores
from saeflow.labels import explainer
from saeflow.testing.workspace import TEST_CONFIGS, run_snakemake

from tests.labels.test_autointerp import CannedLLM

pytestmark = pytest.mark.slow

MIN_DETECTION = 0.6
# Small context samples keep the server's work to seconds; the canned explainer answers
# "mentions of X" (X the span marked most often), so the categories' keywords read that.
DESCRIBE = {"backend": "autointerp", "n_top": 4, "n_quantiles": 2, "per_quantile": 2,
            "n_non_activating": 4, "examples_per_prompt": 5, "window_left": 4,
            "window_right": 1, "min_score": {"detection": MIN_DETECTION}}
CATEGORIES = {"digits": {"patterns": [r"^mentions of \d"]},
              "string-literal": {"patterns": [
                  r"""^mentions of ("|'|temperature|price|speed|level|height|weight|label|color"""
                  r"""|city|name)"""]}}


def test_autointerp_descriptions_carry_labels_and_correction(toy_run, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(toy_run, work, symlinks=True)  # the shared run's tree stays as it is
    server = CannedLLM()
    extra = work / "autointerp.yaml"
    extra.write_text(json.dumps({"labels": {
        "describe": {**DESCRIBE, "llm": {"base_url": server.url, "model": "canned-1",
                                         "cache_dir": str(tmp_path / "llm-cache"),
                                         "backoff_s": 0.0}},
        "categories": CATEGORIES}}))
    target = "results/toy/correction/summary.json"
    try:
        run_snakemake(work, target, "--cores", "2", "--resources", "gpu=1",
                      "--configfile", *TEST_CONFIGS, str(extra))
        asked = len(server.log)
        # every reply is cached: a rerun from describe on asks the server nothing new
        run_snakemake(work, target, "--cores", "2", "--resources", "gpu=1", "--forcerun",
                      "describe", "--configfile", *TEST_CONFIGS, str(extra))
        assert len(server.log) == asked
    finally:
        server.close()
    results = work / "results" / "toy"

    descriptions = read_json(results / "labels" / "descriptions.json")
    assert descriptions["provenance"]["config"]["backend"] == "autointerp"
    described = descriptions["records"]
    assert asked >= 3 * len(described) > 0  # an explanation and both scorers per latent
    assert all(r["description"].startswith("mentions of ") for r in described)
    explained = [m[-1]["content"] for m, _ in server.log if m[0]["content"] == explainer.SYSTEM]
    assert explained and all("<<" in text for text in explained)  # the prompts carry contexts

    scores = read_description_scores(results / "labels" / "descriptions.json")
    weak = {i for i, s in scores.items() if s["detection"]["balanced_accuracy"] is None
            or s["detection"]["balanced_accuracy"] < MIN_DETECTION}
    assert 0 < len(weak) < len(scores)
    for category in CATEGORIES:
        classified = read_json(results / "labels" / "classified" / f"{category}.json")
        members = {r["feature_index"] for r in classified["records"] if r["label"] == "related"}
        assert members and not members & weak, category  # the score filter holds
        assert classified["n_filtered"] == len(weak)

    for method in ("naive", "two-bucket", "general"):
        lpf = read_json(results / "correction" / f"{method}.json")
        for category in CATEGORIES:
            cell = lpf["categories"][category]
            assert math.isfinite(cell["lpf_corrected"]), (method, category)
            assert cell["n_predicted"] == len(members_of(results, category)), (method, category)
    assert read_json(results / "correction" / "summary.json")["methods"]


def members_of(results, category):
    classified = read_json(results / "labels" / "classified" / f"{category}.json")
    return [r for r in classified["records"] if r["label"] == "related"]
