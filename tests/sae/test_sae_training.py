"""SAE training on the real path (saeflow.sae): what sae-lens's runner is given -- every token of
each record as extraction feeds it, sae-lens's own packing, or exactly the activations
extraction stores at the study's positions -- every architecture it trains, the progress it
logs, the corpus forms it reads, and the one-line refusals of a corpus too small."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import datasets
import h5py
import numpy as np
import pytest
import torch
from sae_lens import SAE

from saeflow.core.errors import InputError
from saeflow.core.prompts import encode_prompt
from saeflow.sae import corpus as corpora
from saeflow.sae import data as prep
from saeflow.sae.train import Run, TrainSpec, train_sae, training_data

HOOK = "blocks.1.hook_resid_post"
SAE_CFG = {"source": "train", "hooks": [HOOK], "d_sae": 64, "training_tokens": 4000,
           "batch_tokens": 128, "lr": 0.003, "l1_coefficient": 1.0}


@pytest.fixture(scope="module")
def corpus(small_world, toy_tokenizer, tmp_path_factory):
    """The toy world's train prompts (with pos_snippet_end, pos_final) as a JSONL corpus."""
    path = tmp_path_factory.mktemp("corpus") / "train.jsonl"
    records = small_world.prompt_sets["train"]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_windows_are_prompts_as_extraction_feeds_them(tiny_model, small_world, corpus):
    tok = tiny_model.tokenizer
    records = small_world.prompt_sets["train"]
    tokens, excluded, n = prep.window_tokens(tok, corpora.iter_corpus(str(corpus)), None, 64)
    rows = [encode_prompt(tok, r["text"]) for r in records]
    assert tokens.shape == (len(rows), max(map(len, rows)))
    for row, window in zip(rows, tokens.tolist(), strict=True):
        assert window[:len(row)] == row and set(window[len(row):]) <= {tok.pad_token_id}
    assert excluded == [tok.pad_token_id, tok.bos_token_id]
    assert n == sum(len(r) - 1 for r in rows)  # every real token but BOS
    # a record longer than the context is cut into windows, each led by BOS; no token is lost
    cut = prep.prompt_windows(tok, [records[0]["text"]], 8, 64)
    assert all(w[0] == tok.bos_token_id and len(w) <= 8 for w in cut)
    assert [t for w in cut for t in w[1:]] == rows[0][1:]


def test_positions_train_on_exactly_what_extraction_stores(tiny_model, small_world, corpus,
                                                           tmp_path):
    from saeflow.extract import Storage, extract_to_hdf5

    records = corpora.read_corpus(str(corpus))
    positions = ["snippet_end", "final", -2]
    acts = prep.position_activations(tiny_model, HOOK, records, positions, str(corpus))
    extract_to_hdf5(tiny_model, list(records), [HOOK], tmp_path / "acts.h5",
                    Storage(positions=positions, dtype="float32"))
    with h5py.File(tmp_path / "acts.h5") as f:
        stored = f[f"acts/{HOOK}"][()].reshape(-1, acts.shape[1])
    assert acts.shape == (3 * len(records), 32)
    np.testing.assert_allclose(acts.numpy(), stored, atol=1e-5)
    data = prep.positions_data(acts, HOOK, datasets.Dataset.from_dict({"text": ["x"]}), 50,
                               tmp_path / "cache", seed=0)
    cached = datasets.load_from_disk(str(tmp_path / "cache"))[HOOK]
    assert data.n_tokens == len(acts) and np.shape(cached)[1:] == (50, 32)
    # the rows are the activations, shuffled: each cached vector is one of them
    first = torch.tensor(np.asarray(cached[0]))
    assert all(bool(((acts - v).abs().max(1).values < 1e-6).any()) for v in first)


@pytest.mark.parametrize("architecture, inference", [
    ("standard", "StandardSAE"), ("topk", "TopKSAE"), ("batchtopk", "JumpReLUSAE"),
    ("jumprelu", "JumpReLUSAE")])
def test_every_architecture_trains_with_sae_lens_and_loads_back(tiny_model, corpus, tmp_path,
                                                                architecture, inference, caplog):
    cfg = {**SAE_CFG, "architecture": architecture, "k": 8, "corpus": str(corpus)}
    data = training_data(tiny_model, HOOK, str(corpus), cfg, 0, tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="saeflow.sae.train"):
        last = train_sae(tiny_model, HOOK, data, TrainSpec.from_config(cfg),
                         Run("saeflow-toy", str(corpus)), tmp_path / "sae")
    sae = SAE.load_from_disk(str(tmp_path / "sae"))
    assert type(sae).__name__ == inference
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.metadata.hook_name) == (32, 64, HOOK)
    assert sae.cfg.metadata.dataset_path == str(corpus)
    lines = [r.getMessage() for r in caplog.records if "tokens/s" in r.getMessage()]
    assert len(lines) >= 10 and all(w in lines[-1] for w in ("loss", "L0", "explained variance"))
    assert last["tokens"] >= 4000 and 0 < last["l0"] <= 64
    if architecture in ("topk", "batchtopk"):
        assert last["l0"] == pytest.approx(8, abs=0.5)


def test_packed_text_is_sae_lens_own_tokenisation(tiny_model, corpus, tmp_path):
    cfg = {**SAE_CFG, "pack": True, "context_size": 32, "corpus": str(corpus)}
    data = training_data(tiny_model, HOOK, str(corpus), cfg, 0, tmp_path)
    assert data.context_size == 32 and data.exclude is True and not data.tokenized
    assert data.dataset.column_names == ["text"]
    train_sae(tiny_model, HOOK, data, TrainSpec.from_config(cfg), Run("toy", str(corpus)),
              tmp_path / "sae")
    sae = SAE.load_from_disk(str(tmp_path / "sae"))
    assert sae.cfg.metadata.context_size == 32 and sae.cfg.metadata.prepend_bos


@pytest.mark.parametrize("extra, what", [
    ({}, "tokens (BOS and padding excluded)"),
    ({"positions": ["snippet_end", "final"]}, "activations at sae.positions"),
    ({"pack": True}, "text tokens")])
def test_a_corpus_smaller_than_training_tokens_is_one_line(tiny_model, corpus, tmp_path, extra,
                                                           what):
    cfg = {**SAE_CFG, **extra, "corpus": str(corpus), "training_tokens": 10**7}
    with pytest.raises(InputError) as err:
        training_data(tiny_model, HOOK, str(corpus), cfg, 0, tmp_path)
    line = str(err.value)
    assert line.startswith(f"config: sae.corpus: '{corpus}' gives ") and what in line
    assert line.endswith("fewer than sae.training_tokens (10000000): give a larger corpus or "
                         "fewer training tokens") and "\n" not in line


def test_a_context_beyond_the_model_is_one_line(tiny_model, corpus, tmp_path):
    cfg = {**SAE_CFG, "corpus": str(corpus), "context_size": 65}
    with pytest.raises(InputError, match=r"^config: sae.context_size: 65 tokens, beyond the "
                       r"model's context of 64$"):
        training_data(tiny_model, HOOK, str(corpus), cfg, 0, tmp_path)


def test_text_files_and_saved_datasets_are_corpora(tmp_path):
    (tmp_path / "c.txt").write_text("one line\n\n  \nanother line\n")
    assert [r["text"] for r in corpora.iter_corpus(str(tmp_path / "c.txt"))] == \
        ["one line", "another line"]
    datasets.Dataset.from_dict({"text": ["a", "", "b"], "pos_x": [1, 2, 3], "other": [0, 0, 0]}
                               ).save_to_disk(str(tmp_path / "saved"))
    assert list(corpora.iter_corpus(str(tmp_path / "saved"))) == [
        {"text": "a", "pos_x": 1}, {"text": "b", "pos_x": 3}]
    datasets.Dataset.from_dict({"words": ["a"]}).save_to_disk(str(tmp_path / "no_text"))
    with pytest.raises(InputError, match="has no 'text' column"):
        list(corpora.iter_corpus(str(tmp_path / "no_text")))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(InputError, match=r"sae.corpus: '.*empty.jsonl' is empty"):
        list(corpora.iter_corpus(str(tmp_path / "empty.jsonl")))


def test_a_dataset_name_is_read_offline_from_the_local_cache(tmp_path):
    """A fresh interpreter whose huggingface caches are ``tmp_path`` (read at import time)."""
    from saeflow.testing import local_hub

    hf_home = tmp_path / "hf"
    local_hub.cache_dataset(hf_home, "saeflow/tiny-corpus", {"text": ["x y", "z"]})
    code = ("from saeflow.sae.corpus import iter_corpus\n"
            "print([r['text'] for r in iter_corpus('saeflow/tiny-corpus')])\n"
            "from saeflow.core.errors import InputError\n"
            "try:\n    list(iter_corpus('saeflow/absent'))\n"
            "except InputError as err:\n    print(err)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=local_hub.offline_env(hf_home),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.strip().splitlines()
    assert out[0] == "['x y', 'z']"
    assert out[1] == ("config: sae.corpus: 'saeflow/absent' is no file or folder, and no dataset "
                      "of that name is in the local Hugging Face cache (HF_HOME)")
