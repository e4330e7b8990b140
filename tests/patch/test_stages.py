"""The patching rules' entry points (saeflow.patch.stages): each takes the rule's
ModelSAEs and config section, writes its outputs with the config they used, and the summary
reads the estimators' files by the names patch.estimators gives them."""

from __future__ import annotations

import json

import h5py
import pytest
import torch

from saeflow.core.bundle import ModelSAEs
from saeflow.core.config import schema_defaults
from saeflow.core.errors import InputError
from saeflow.patch import stages
from saeflow.patch.estimators import ESTIMATORS
from saeflow.testing.fixtures import random_pair_batch
from tests.patch.test_attribution import make_model, make_saes

torch.set_num_threads(1)

BATCHES = [random_pair_batch(3, 5, [1], seed=7), random_pair_batch(3, 7, [2, 4], seed=8)]


class _Bundle(ModelSAEs):
    """The test model and SAEs in place of the files a rule names."""

    def load_model(self, device: str = "cpu"):
        return make_model()

    def load_saes(self, device: str = "cpu"):
        return make_saes(make_model(), list(self.hooks))


@pytest.fixture
def rule(monkeypatch):
    monkeypatch.setattr(stages, "load_pairs", lambda path, tokenizer: BATCHES)
    bundle = _Bundle({"source": "test"}, None, {"kind": "test"},
                     ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post"))
    patch = {**schema_defaults("patch"), "pairs": "pairs.jsonl", "n_bootstrap": 20,
             "top_k": 4, "n_random": 3, "faithfulness_n": [1, 3], "faithfulness_random": 1,
             "ig_steps": 2, "exhaustive": True, "estimators": ["atp", "qkfix", "ig"]}
    return bundle, patch


def _provenance(path):
    with h5py.File(path) as f:
        return json.loads(f.attrs["provenance"])["config"]


def test_every_stage_writes_its_outputs_and_the_summary_reads_them(rule, tmp_path):
    bundle, patch = rule
    p = {n: tmp_path / n for n in ("resid.h5", "atp.h5", "ig.h5", "qkfix.h5", "exact.h5",
                                   "verify.json", "faithfulness.json", "top_latents.json",
                                   "circuit.json", "summary.json")}
    stages.patch_resid_stage(bundle, patch, "pairs.jsonl", p["resid.h5"])
    assert set(_provenance(p["resid.h5"])) == {"patch", "model"}
    for name in patch["estimators"]:
        stages.patch_estimate_stage(name, bundle, patch, "pairs.jsonl", p[f"{name}.h5"])
    config = _provenance(p["atp.h5"])
    assert set(config) == {"patch", "model", "sae"} and config["sae"] == {"kind": "test"}
    assert _provenance(p["ig.h5"])["estimator"]["steps"] == 2
    assert _provenance(p["qkfix.h5"])["estimator"]["name"] == "qkfix"
    stages.patch_exact_stage(bundle, patch, "pairs.jsonl", p["exact.h5"])
    stages.patch_verify_stage(bundle, patch, "pairs.jsonl", p["atp.h5"], [], p["verify.json"],
                              p["faithfulness.json"], p["top_latents.json"])
    stages.patch_circuit_stage(bundle, patch, "pairs.jsonl", p["atp.h5"], "", p["circuit.json"])
    for name in ("verify.json", "circuit.json"):  # JSON keeps the config's order
        config = json.loads(p[name].read_text())["provenance"]["config"]
        assert list(config) == ["patch", "model", "sae"]
    inputs = {"resid": str(p["resid.h5"]), "verify": str(p["verify.json"]),
              "faithfulness": str(p["faithfulness.json"]), "circuit": str(p["circuit.json"]),
              "truth": [], "exact": [str(p["exact.h5"])],
              **{name: str(p[f"{name}.h5"]) for name in patch["estimators"]}}
    stages.patch_summary_stage(patch, inputs, p["summary.json"])
    summary = json.loads(p["summary.json"].read_text())
    assert summary["estimators"] == ["atp", "ig", "qkfix"]  # the registry's order
    assert [k for k in summary if k.endswith("_vs_exhaustive")] == [
        "atp_vs_exhaustive", "ig_vs_exhaustive", "qkfix_vs_exhaustive"]
    assert summary["toy_check"] is None and summary["circuit"]["n_nodes"] >= 0
    assert summary["provenance"]["config"] == {"patch": json.loads(json.dumps(patch))}


def test_an_unknown_estimator_is_one_input_error(rule, tmp_path):
    bundle, patch = rule
    with pytest.raises(InputError, match=r"patch\.estimators: unknown estimator 'nope'"):
        stages.patch_estimate_stage("nope", bundle, patch, "pairs.jsonl", tmp_path / "x.h5")
    assert not list(tmp_path.iterdir())


def test_the_schema_names_the_registrys_estimators():
    """patch.estimators is validated by the schema's enum: the registry's names, in order."""
    from pathlib import Path

    import yaml

    schema = yaml.safe_load((Path(__file__).resolve().parents[2] / "workflow" / "schemas"
                             / "config.schema.yaml").read_text())
    spec = schema["properties"]["patch"]["properties"]["estimators"]
    assert spec["items"]["enum"] == list(ESTIMATORS)
    assert spec["contains"] == {"const": "atp"} and "atp" in spec["default"]
