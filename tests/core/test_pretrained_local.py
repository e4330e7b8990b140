"""The real-model path works offline from a local Hugging Face cache.

saeflow/testing/local_hub.py writes a hub cache (the layout a download leaves) holding a tiny random
``gpt2`` and an SAE of the real release ``gpt2-small-res-jb``. A fresh interpreter, with
``HF_HOME`` there, ``HF_HUB_OFFLINE=1`` and ``HF_ENDPOINT`` on a dead loopback port, then loads
both through saeflow's real loaders (TransformerLens ``from_pretrained_no_processing``, sae-lens
``SAE.from_pretrained``) and runs extraction and encoding. huggingface_hub reads those variables
at import time, so the checks run in a child process and this process's environment is never
touched. The child reports measurements as JSON; the assertions are here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from saeflow.testing import local_hub as hub


@pytest.fixture(scope="module")
def local_hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("local_hub")
    hf_home, ref_dir = root / "hf", root / "ref"
    snapshots = hub.build_hub_cache(hf_home, ref_dir)
    return {"root": root, "hf_home": hf_home, "ref_dir": ref_dir, "snapshots": snapshots}


class _Child:
    """One checking run of saeflow/testing/local_hub.py in a fresh interpreter, started at once."""

    def __init__(self, local_hub, mode: str, offline: bool):
        self.dir = local_hub["root"] / f"{mode}-{'offline' if offline else 'no-flag'}"
        self.dir.mkdir()
        self.out, self.err = open(self.dir / "stdout", "w+"), open(self.dir / "stderr", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "saeflow.testing.local_hub", mode, str(local_hub["hf_home"]),
             str(local_hub["ref_dir"]), str(self.dir)],
            env=hub.offline_env(local_hub["hf_home"], offline=offline),
            stdout=self.out, stderr=self.err, text=True)

    def result(self) -> dict:
        try:
            code = self.proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.out.seek(0), self.err.seek(0)
        assert code == 0, self.err.read()[-4000:]
        line = next(x for x in self.out.read().splitlines() if x.startswith("RESULT "))
        return json.loads(line.removeprefix("RESULT "))


@pytest.fixture(scope="module")
def children(local_hub):
    """Both runs go side by side: ``full`` (model, SAE, pipeline) with ``HF_HUB_OFFLINE=1``,
    and ``load`` (model, SAE, a missing SAE id) with the flag unset."""
    runs = {"offline": _Child(local_hub, "full", offline=True),
            "no_flag": _Child(local_hub, "load", offline=False)}
    yield runs
    for run in runs.values():
        if run.proc.poll() is None:
            run.proc.kill()
        run.out.close(), run.err.close()


@pytest.fixture(scope="module")
def offline(children):
    return children["offline"].result()


def test_cache_layout_is_what_huggingface_hub_reads(local_hub, children):
    # (``children`` only so that the two runs start before this check, not after it)
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    cache = local_hub["hf_home"] / "hub"
    info = scan_cache_dir(cache)
    assert not info.warnings, info.warnings
    repos = {r.repo_id: r for r in info.repos}
    assert set(repos) == {hub.MODEL_NAME, hub.SAE_REPO}
    for repo_id, commit in ((hub.MODEL_NAME, hub.MODEL_COMMIT), (hub.SAE_REPO, hub.SAE_COMMIT)):
        (revision,) = repos[repo_id].revisions
        assert revision.commit_hash == commit and revision.refs == frozenset({"main"})
    wanted = {hub.MODEL_NAME: ["config.json", "model.safetensors", "tokenizer.json",
                               "tokenizer_config.json"],
              hub.SAE_REPO: [f"{hub.HOOK}/{name}" for name in
                             ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors")]}
    for repo_id, files in wanted.items():
        for filename in files:
            path = try_to_load_from_cache(repo_id, filename, cache_dir=cache)
            assert isinstance(path, str) and Path(path).is_file(), (repo_id, filename)
            assert Path(path).is_symlink() and "/blobs/" in str(Path(path).resolve())


def test_child_used_the_local_cache_and_no_network(offline, local_hub):
    assert offline["hf_hub_cache"] == str(local_hub["hf_home"] / "hub")
    assert offline["endpoint"] == hub.UNREACHABLE
    assert offline["network"] == []  # not even a name lookup


def test_pretrained_model_loads_from_cache(offline):
    model = offline["model"]
    assert model["class"] == "HookedTransformer"
    shape = (model["d_model"], model["n_layers"], model["n_ctx"])
    assert shape == (hub.D_MODEL, hub.N_LAYERS, hub.N_CTX)
    assert model["d_vocab"] == model["tokenizer_vocab"] == hub.VOCAB
    assert model["bos_token"] == hub.EOS
    assert model["prompt_ids"] == model["ref_prompt_ids"]  # the cached tokenizer, not another
    # No weight processing: the HF model's own logits, not merely the same softmax.
    assert model["logits_scale"] > 1.0
    assert model["logits_max_abs_diff"] < 1e-4


def test_pretrained_sae_loads_from_cache(offline):
    sae = offline["sae"]
    assert sae["class"] == "StandardSAE"
    assert (sae["d_in"], sae["d_sae"], sae["hook_name"]) == (hub.D_MODEL, hub.D_SAE, hub.HOOK)
    assert sae["weights_max_abs_diff"] == 0.0
    # The release's pre-6.0 config defaults apply_b_dec_to_input to True:
    # encode(x) = ReLU((x - b_dec) W_enc + b_enc), which differs from ReLU(x W_enc + b_enc).
    assert sae["apply_b_dec_to_input"] is True
    assert sae["encode_max_abs_diff"] < 1e-5
    assert sae["encode_vs_no_bdec_diff"] > 1e-2
    assert 0.05 < sae["active_fraction"] < 0.95


def test_extraction_and_encoding_on_the_cached_model_and_sae(offline):
    run = offline["pipeline"]
    n_pos = max(run["lengths"])
    assert run["acts_shape"] == [len(hub.PROMPTS), n_pos, hub.D_MODEL]
    assert run["codes_shape"] == [len(hub.PROMPTS) * n_pos, hub.D_SAE]
    assert run["first_tokens"] == [run["bos_token_id"]] * len(hub.PROMPTS)
    assert run["n_valid"] == sum(run["lengths"]) == run["summary"]["valid_rows"]
    assert run["acts_vs_model_max_abs_diff"] < 1e-5
    assert run["nnz"] == run["summary"]["nnz"] > 0
    assert run["codes_nonzero_match"] and run["codes_max_abs_diff"] < 1e-5


def test_unreachable_hub_without_offline_flag_still_loads_the_cache(children):
    """No ``HF_HUB_OFFLINE``: saeflow.core.hub probes the dead endpoint (and nothing else), goes
    offline and loads the cache; an SAE id the cache lacks fails with saeflow's one-line error."""
    run = children["no_flag"].result()
    assert run["offline_after"] is True
    assert all("127.0.0.1" in attempt for attempt in run["network"]), run["network"]
    assert run["model"]["logits_max_abs_diff"] < 1e-4
    assert run["sae"]["encode_max_abs_diff"] < 1e-5
    error = run["missing_sae_error"]
    assert error and "\n" not in error and "blocks.1.hook_resid_pre" in error
    assert "unreachable" in error and "not in the local cache" in error
