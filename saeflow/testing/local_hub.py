"""A local Hugging Face hub cache for the real-model path, and the checks run against it.

``build_hub_cache`` writes, under ``<hf_home>/hub``, the layout ``huggingface_hub`` itself
produces when it downloads (``models--<org>--<name>/{blobs,refs/main,snapshots/<commit>}``,
snapshot files being relative links to content-addressed blobs) for two real repos:

* ``gpt2`` (TransformerLens's official name): a randomly initialised 2-layer GPT-2 with a tiny
  byte-level BPE tokenizer, saved with ``save_pretrained`` (safetensors);
* ``jbloom/GPT2-Small-SAEs-Reformatted``, which sae-lens's release ``gpt2-small-res-jb``
  points at: one random SAE for ``blocks.0.hook_resid_pre`` in the repo's own format (a
  pre-6.0 sae-lens ``cfg.json``, ``sae_weights.safetensors``, ``sparsity.safetensors``),
  sized for the tiny model's ``d_model``.

:func:`fine_tune` saves that model, fine-tuned, as a user's checkpoint folder
(``model.source: local``); :func:`cache_dataset` puts a dataset in the datasets library's cache
(a corpus named by ``sae.corpus``).

It also writes reference values (the HF model's logits, the SAE's weights) next to the cache.

Run as a script (``python -m saeflow.testing.local_hub MODE HF_HOME REF_DIR WORK_DIR``) in a fresh interpreter
whose environment is :func:`offline_env` -- huggingface_hub reads ``HF_HOME``/``HF_HUB_OFFLINE``
at import time -- it loads both through saeflow's real loaders, runs extraction and encoding
(``MODE=full``) or asks for an SAE the cache lacks (``MODE=load``), and prints one JSON line of
measurements for tests/core/test_pretrained_local.py to judge. It also notes every name lookup and
connection it makes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

MODEL_NAME = "gpt2"
SAE_RELEASE = "gpt2-small-res-jb"
SAE_REPO = "jbloom/GPT2-Small-SAEs-Reformatted"
HOOK = "blocks.0.hook_resid_pre"
D_MODEL, N_LAYERS, N_HEADS, N_CTX, D_SAE, VOCAB = 64, 2, 2, 64, 96, 320
UNREACHABLE = "http://127.0.0.1:9"
EOS = "<|endoftext|>"
CORPUS = [
    "The cat sat on the mat.", "A dog ran to the park and back.",
    "Paris is the capital of France.", "The quick brown fox jumps over the lazy dog.",
    "Sparse autoencoders find features in the residual stream.",
    "Tokens go in, logits come out.", "One two three four five six seven eight nine ten.",
]
PROMPTS = ["The cat sat on", "Paris is the capital of", "Sparse features in the stream"]
MODEL_COMMIT = hashlib.sha1(b"saeflow-local-gpt2").hexdigest()
SAE_COMMIT = hashlib.sha1(b"saeflow-local-sae").hexdigest()


def offline_env(hf_home: Path, offline: bool = True) -> dict[str, str]:
    """A clean child environment: cache under ``hf_home``, hub endpoint on a dead port."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(hf_home.parent),
           "HF_HOME": str(hf_home), "HF_ENDPOINT": UNREACHABLE, "HF_HUB_DISABLE_TELEMETRY": "1",
           "XDG_CACHE_HOME": str(hf_home.parent / "xdg-cache"), "WANDB_MODE": "disabled",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


# ---------------------------------------------------------------- building the cache

def _add_snapshot(hub: Path, repo_id: str, commit: str, source: Path) -> Path:
    """Copy the files under ``source`` into ``hub`` as the commit ``commit`` of ``repo_id``
    (on ``main``), the way a download lays them out: content in ``blobs/<sha256>``, and
    ``snapshots/<commit>/<path>`` a relative link to its blob."""
    repo_dir = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


def _tiny_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=VOCAB, min_frequency=1, special_tokens=[EOS],
                            show_progress=False)
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS,
                                  unk_token=EOS, model_max_length=N_CTX)
    assert len(tokenizer) == VOCAB, len(tokenizer)
    return tokenizer


def _tiny_gpt2(staging: Path, ref_dir: Path) -> None:
    import numpy as np
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _tiny_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    # n_ctx is not a GPT2Config field any more, but gpt2's real config.json carries it and
    # TransformerLens reads it, so keep it in the file.
    config = GPT2Config(n_layer=N_LAYERS, n_embd=D_MODEL, n_head=N_HEADS, n_positions=N_CTX,
                        n_ctx=N_CTX, vocab_size=VOCAB, bos_token_id=eos_id, eos_token_id=eos_id,
                        architectures=["GPT2LMHeadModel"], initializer_range=0.1)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # GPT-2 starts with zero biases and unit LayerNorms; make them count
        for name, param in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                param.add_(0.2 * torch.randn_like(param))
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)

    texts = CORPUS[:3]
    rows = [[eos_id] + tokenizer.encode(t, add_special_tokens=False) for t in texts]
    width = min(len(r) for r in rows)
    tokens = torch.tensor([r[:width] for r in rows])
    with torch.no_grad():
        logits = model(tokens).logits
    np.savez(ref_dir / "model.npz", tokens=tokens.numpy(), logits=logits.numpy(),
             prompt_ids=np.array([tokenizer.encode(p, add_special_tokens=False)[0]
                                  for p in PROMPTS]))


def _tiny_sae(staging: Path, ref_dir: Path) -> None:
    import numpy as np
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(1)
    weights = {
        "W_enc": torch.randn(D_MODEL, D_SAE, generator=generator) / D_MODEL**0.5,
        "b_enc": 0.1 * torch.randn(D_SAE, generator=generator) - 0.05,
        "W_dec": torch.randn(D_SAE, D_MODEL, generator=generator) / D_SAE**0.5,
        "b_dec": 0.2 * torch.randn(D_MODEL, generator=generator),
    }
    folder = staging / HOOK
    folder.mkdir(parents=True)
    save_file(weights, str(folder / "sae_weights.safetensors"))
    save_file({"sparsity": -3 - torch.rand(D_SAE, generator=generator)},
              str(folder / "sparsity.safetensors"))
    # The repo's own config format (sae-lens < 6: hook_point, dtype "torch.float32", no
    # apply_b_dec_to_input, so it defaults to True), with this model's widths.
    cfg = {"model_name": "gpt2-small", "hook_point": HOOK, "hook_point_layer": 0,
           "hook_point_head_index": None, "dataset_path": "Skylion007/openwebtext",
           "is_dataset_tokenized": False, "context_size": 128, "d_in": D_MODEL, "d_sae": D_SAE,
           "expansion_factor": D_SAE // D_MODEL, "dtype": "torch.float32", "device": "cpu",
           "seed": 42, "b_dec_init_method": "geometric_median", "l1_coefficient": 8e-05,
           "lr": 0.0004, "train_batch_size": 4096, "log_to_wandb": True}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    np.savez(ref_dir / "sae.npz", **{k: v.numpy() for k, v in weights.items()})


def build_hub_cache(hf_home: Path, ref_dir: Path) -> dict[str, Path]:
    """Write both repos into ``hf_home/hub`` and the reference values into ``ref_dir``."""
    import tempfile

    hub = hf_home / "hub"
    hub.mkdir(parents=True, exist_ok=True)
    ref_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_src, sae_src = Path(tmp, "model"), Path(tmp, "sae")
        _tiny_gpt2(model_src, ref_dir)
        _tiny_sae(sae_src, ref_dir)
        return {"model": _add_snapshot(hub, MODEL_NAME, MODEL_COMMIT, model_src),
                "sae": _add_snapshot(hub, SAE_REPO, SAE_COMMIT, sae_src)}


def fine_tune(hf_home: Path, dest: Path, steps: int = 20, seed: int = 0) -> Path:
    """The cached ``gpt2`` fine-tuned (AdamW on the next-token loss of :data:`CORPUS`, so its
    weights change) and saved to ``dest`` as a user's checkpoint folder: ``save_pretrained``'s
    config, safetensors weights and tokenizer. Returns ``dest``."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    snapshot = next((hf_home / "hub" / "models--gpt2" / "snapshots").iterdir())
    tokenizer = AutoTokenizer.from_pretrained(snapshot)
    model = GPT2LMHeadModel.from_pretrained(snapshot)
    torch.manual_seed(seed)
    rows = [[tokenizer.bos_token_id] + tokenizer.encode(t, add_special_tokens=False) for t in CORPUS]
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        tokens = torch.tensor([rows[step % len(rows)]])
        loss = model(tokens, labels=tokens).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval().save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest


def cache_dataset(hf_home: Path, name: str, rows: dict[str, list[Any]]) -> Path:
    """Dataset ``name`` (``org/name``; columns ``rows``) in the datasets library's cache under
    ``hf_home`` as an earlier ``load_dataset(name)`` leaves it (``<org>___<name>/default/0.0.0/
    <hash>/``: an Arrow stream of the train split and ``dataset_info.json``), so an offline
    ``load_dataset(name)`` reads it. Returns the folder."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    org, short = name.split("/")
    data = datasets.Dataset.from_dict(rows)
    folder = hf_home / "datasets" / f"{org}___{short}" / "default" / "0.0.0" / ("0" * 16)
    folder.mkdir(parents=True, exist_ok=True)
    with ArrowWriter(features=data.features, path=str(folder / f"{short}-train.arrow")) as writer:
        writer.write_table(data.data.table)
        n, n_bytes = writer.finalize()
    split = datasets.SplitInfo("train", num_bytes=n_bytes, num_examples=n, dataset_name=short)
    datasets.DatasetInfo(features=data.features, config_name="default", dataset_name=short,
                         splits=datasets.SplitDict({"train": split})).write_to_directory(str(folder))
    return folder


# ---------------------------------------------------------------- the checks (child process)

def _record_network(attempts: list[str]) -> None:
    """Note every name lookup and connection this process makes (they still go ahead)."""
    import socket

    lookup, connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        attempts.append(f"lookup {host}")
        return lookup(host, *args, **kwargs)

    def connect_(self, address):
        attempts.append(f"connect {address}")
        return connect(self, address)

    socket.getaddrinfo, socket.socket.connect = getaddrinfo, connect_


def check_model(out: dict[str, Any], ref_dir: Path):
    import numpy as np
    import torch

    from saeflow.core.models import load_model

    model = load_model({"source": "pretrained", "name": MODEL_NAME, "dtype": "float32"}, None)
    ref = np.load(ref_dir / "model.npz")
    with torch.no_grad():
        logits = model(torch.from_numpy(ref["tokens"])).numpy()
    out["model"] = {
        "class": type(model).__name__, "d_model": model.cfg.d_model, "n_layers": model.cfg.n_layers,
        "d_vocab": model.cfg.d_vocab, "n_ctx": model.cfg.n_ctx,
        "tokenizer_vocab": len(model.tokenizer), "bos_token": model.tokenizer.bos_token,
        "prompt_ids": [model.tokenizer.encode(p, add_special_tokens=False)[0] for p in PROMPTS],
        "ref_prompt_ids": ref["prompt_ids"].tolist(),
        "logits_max_abs_diff": float(np.abs(logits - ref["logits"]).max()),
        "logits_scale": float(np.abs(ref["logits"]).max()),
    }
    return model


SAE_CFG = {"source": "pretrained", "release": SAE_RELEASE, "ids": {HOOK: HOOK}}


def check_sae(out: dict[str, Any], ref_dir: Path):
    import numpy as np
    import torch

    from saeflow.core.saes import load_sae

    sae = load_sae(SAE_CFG, HOOK, None)
    w = {k: torch.from_numpy(v) for k, v in np.load(ref_dir / "sae.npz").items()}
    x = torch.randn(32, D_MODEL, generator=torch.Generator().manual_seed(2)) + w["b_dec"]
    with torch.no_grad():
        codes = sae.encode(x)
        manual = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])  # apply_b_dec_to_input
        manual_no_bdec = torch.relu(x @ w["W_enc"] + w["b_enc"])
        out["sae"] = {
            "class": type(sae).__name__, "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae,
            "hook_name": sae.cfg.metadata.hook_name,
            "apply_b_dec_to_input": bool(sae.cfg.apply_b_dec_to_input),
            "weights_max_abs_diff": max(float((getattr(sae, k) - v).abs().max())
                                        for k, v in w.items()),
            "encode_max_abs_diff": float((codes - manual).abs().max()),
            "encode_vs_no_bdec_diff": float((codes - manual_no_bdec).abs().max()),
            "active_fraction": float((codes > 0).float().mean()),
        }
    return sae


def check_pipeline(out: dict[str, Any], model, sae, work_dir: Path) -> None:
    import h5py
    import numpy as np
    import torch

    from saeflow.encode import encode_to_hdf5
    from saeflow.formats.codes import read_codes
    from saeflow.extract import Storage, extract_to_hdf5
    from saeflow.core.saes import load_sae

    records = [{"text": p, "id": i} for i, p in enumerate(PROMPTS)]
    acts_path, codes_path = work_dir / "acts.h5", work_dir / "codes.h5"
    extract_to_hdf5(model, records, [HOOK], acts_path, Storage(positions="all", dtype="float32"))
    summary = encode_to_hdf5(acts_path, codes_path, {HOOK: lambda: load_sae(SAE_CFG, HOOK, None)})
    with h5py.File(acts_path, "r") as f:
        acts = f[f"acts/{HOOK}"][()]
        tokens, lengths, positions = f["tokens"][()], f["lengths"][()], f["positions"][()]
    n, n_pos, d = acts.shape
    valid = positions.reshape(-1) >= 0
    stored = read_codes(codes_path, HOOK).toarray()
    with torch.no_grad():
        expected = sae.encode(torch.from_numpy(acts.reshape(-1, d))).numpy() * valid[:, None]
        _, cache = model.run_with_cache(torch.from_numpy(tokens).long(), names_filter=[HOOK])
    live = cache[HOOK].numpy()
    out["pipeline"] = {
        "acts_shape": list(acts.shape), "codes_shape": list(stored.shape),
        "lengths": lengths.tolist(), "first_tokens": tokens[:, 0].tolist(),
        "bos_token_id": model.tokenizer.bos_token_id,
        "n_valid": int(valid.sum()), "nnz": int((stored != 0).sum()), "summary": summary[HOOK],
        "codes_max_abs_diff": float(np.abs(stored - expected).max()),
        "codes_nonzero_match": bool(((stored != 0) == (expected > 0)).all()),
        "acts_vs_model_max_abs_diff": max(
            float(np.abs(acts[i, :lengths[i]] - live[i, :lengths[i]]).max()) for i in range(n)),
    }


def check_missing_sae(out: dict[str, Any]) -> None:
    """An SAE id of the release that is not in the cache: saeflow's one-line error."""
    from saeflow.core.errors import InputError
    from saeflow.core.saes import load_sae

    other = "blocks.1.hook_resid_pre"
    try:
        load_sae({**SAE_CFG, "ids": {other: other}}, other, None)
        out["missing_sae_error"] = None
    except InputError as err:
        out["missing_sae_error"] = str(err)


def run_checks(mode: str, ref_dir: Path, work_dir: Path) -> dict[str, Any]:
    """``full``: model, SAE and pipeline; ``load``: model, SAE and a missing SAE id."""
    attempts: list[str] = []
    _record_network(attempts)
    import huggingface_hub.constants as hf_constants
    import torch

    torch.set_num_threads(2)
    out: dict[str, Any] = {"hf_hub_cache": hf_constants.HF_HUB_CACHE,
                           "endpoint": hf_constants.ENDPOINT}
    model = check_model(out, ref_dir)
    sae = check_sae(out, ref_dir)
    if mode == "full":
        check_pipeline(out, model, sae, work_dir)
    else:
        check_missing_sae(out)
    out["network"] = attempts
    out["offline_after"] = bool(hf_constants.HF_HUB_OFFLINE)
    return out


if __name__ == "__main__":
    mode_arg, hf_home_arg, ref_arg, work_arg = sys.argv[1:5]
    assert os.environ.get("HF_HOME") == hf_home_arg, "run with offline_env(hf_home)"
    print("RESULT " + json.dumps(run_checks(mode_arg, Path(ref_arg), Path(work_arg))))
