"""``model.source: local``: a fine-tuned checkpoint folder loads through TransformerLens's
``hf_model=`` path as its architecture, with its own tokenizer and weights (its logits are the
Hugging Face model's, not the base model's), and a folder that is not that architecture's, or
lacks a part, is one line. Run in a fresh interpreter on the local hub cache (huggingface_hub
reads its cache location at import time): TransformerLens reads gpt2's architecture there."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from saeflow.testing import local_hub

CHILD = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM
from saeflow.core.errors import InputError
from saeflow.core.models import load_model

def load(path, name="gpt2"):
    return load_model({"source": "local", "name": name, "path": path, "dtype": "float32"}, None)

good, base, bad = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
model = load(good)
tokens = torch.tensor([[0, 5, 7, 9, 11, 13]])
with torch.no_grad():
    ours = model(tokens)
    hf = AutoModelForCausalLM.from_pretrained(good)(tokens).logits
    before = AutoModelForCausalLM.from_pretrained(base)(tokens).logits
out = {"class": type(model).__name__, "n_layers": model.cfg.n_layers,
       "vs_hf": float((ours - hf).abs().max()), "vs_base": float((ours - before).abs().max()),
       "tokenizer": model.tokenizer.name_or_path, "errors": {}}
for case, (path, name) in bad.items():
    try:
        load(path, name)
        out["errors"][case] = None
    except InputError as err:
        out["errors"][case] = str(err)
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("local_model")
    hf_home = root / "hf"
    snapshots = local_hub.build_hub_cache(hf_home, root / "ref")
    good = local_hub.fine_tune(hf_home, root / "finetuned")
    bad = {}
    for case, edit in {"layers": {"n_layer": 3}, "vocab": {"vocab_size": 400},
                       "width": {"n_embd": 32}}.items():
        folder = shutil.copytree(good, root / case)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **edit}))
        bad[case] = (str(folder), "gpt2")
    (shutil.copytree(good, root / "no_weights") / "model.safetensors").unlink()
    (shutil.copytree(good, root / "no_tokenizer") / "tokenizer.json").unlink()
    bad.update({"no_weights": (str(root / "no_weights"), "gpt2"),
                "no_tokenizer": (str(root / "no_tokenizer"), "gpt2"),
                "architecture": (str(good), "gpt-5-nano")})
    proc = subprocess.run([sys.executable, "-c", CHILD, str(good), str(snapshots["model"]),
                           json.dumps(bad)], env=local_hub.offline_env(hf_home),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return {"root": root, **json.loads(line[len("RESULT "):])}


def test_a_fine_tuned_folder_loads_with_its_own_weights_and_tokenizer(loaded):
    assert loaded["class"] == "HookedTransformer" and loaded["n_layers"] == local_hub.N_LAYERS
    assert loaded["vs_hf"] < 1e-4  # no weight processing: the Hugging Face model's logits
    assert loaded["vs_base"] > 1e-2  # the fine-tuned weights, not the cached gpt2's
    assert loaded["tokenizer"] == str(loaded["root"] / "finetuned")


@pytest.mark.parametrize("case, line", [
    ("layers", "{root}/layers/config.json: n_layers: 3, but architecture 'gpt2' (model.name, "
               "TransformerLens) has n_layers 2: the checkpoint is not of that architecture"),
    ("width", "{root}/width/config.json: d_model: 32, but architecture 'gpt2' (model.name, "
              "TransformerLens) has d_model 64: the checkpoint is not of that architecture"),
    ("vocab", "{root}/vocab/config.json: d_vocab: 400, but architecture 'gpt2' (model.name, "
              "TransformerLens) has d_vocab 320: the checkpoint is not of that architecture"),
    ("no_weights", "config: model.path: {root}/no_weights has no weights (model.safetensors, "
                   "model-*.safetensors or pytorch_model*.bin)"),
    ("no_tokenizer", "config: model.path: {root}/no_tokenizer has no tokenizer (tokenizer.json, "
                     "tokenizer.model, or vocab.json + merges.txt): save the tokenizer with the "
                     "model (tokenizer.save_pretrained)"),
])
def test_a_folder_that_is_not_the_architecture_is_one_line(loaded, case, line):
    assert loaded["errors"][case] == line.format(root=loaded["root"])


def test_an_unknown_architecture_is_one_line(loaded):
    error = loaded["errors"]["architecture"]
    assert error.startswith("config: model.name: 'gpt-5-nano' is not an architecture "
                            "TransformerLens knows (transformer_lens.supported_models, ")
    assert "did you mean" in error and "\n" not in error
