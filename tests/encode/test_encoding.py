import h5py
import numpy as np
import pytest
import torch

from saeflow.encode import encode_to_hdf5
from saeflow.formats.codes import read_codes
from saeflow.core.errors import InputError
from saeflow.extract import Storage, extract_to_hdf5

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def acts_file(tiny_model, small_world, tmp_path_factory):
    path = tmp_path_factory.mktemp("acts") / "acts.h5"
    extract_to_hdf5(tiny_model, small_world.prompt_sets["heldout_seen"][:30],
                    ["blocks.0.hook_resid_post", HOOK], path, Storage(batch_size=8))
    return path


def test_stored_codes_equal_sae_encode(acts_file, random_sae, tmp_path):
    out = tmp_path / "codes.h5"
    summary = encode_to_hdf5(acts_file, out, {HOOK: lambda: random_sae}, batch_rows=50)
    codes = read_codes(out, HOOK).toarray()
    with h5py.File(acts_file) as f:
        acts = f[f"acts/{HOOK}"][()].astype(np.float32)
        valid = (f["positions"][()] >= 0).reshape(-1)
    with torch.no_grad():
        expected = random_sae.encode(torch.from_numpy(acts.reshape(-1, acts.shape[-1]))).numpy()
    expected[~valid] = 0
    assert codes.shape == expected.shape
    np.testing.assert_array_equal(codes, expected)
    assert summary[HOOK]["nnz"] == int((expected > 0).sum()) > 0
    with h5py.File(out) as f:
        stats = f[f"stats/{HOOK}"]
        np.testing.assert_allclose(stats["firing_frequency"][()], (expected[valid] > 0).mean(0))
        np.testing.assert_allclose(stats["mean_activation"][()], expected[valid].mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats["max_activation"][()], expected[valid].max(0), rtol=1e-6)
        assert (f[f"codes/{HOOK}/row_valid"][()] == valid).all()


def test_batch_size_does_not_change_codes(acts_file, random_sae, tmp_path):
    encode_to_hdf5(acts_file, tmp_path / "a.h5", {HOOK: lambda: random_sae}, batch_rows=7)
    encode_to_hdf5(acts_file, tmp_path / "b.h5", {HOOK: lambda: random_sae}, batch_rows=10_000)
    assert (read_codes(tmp_path / "a.h5", HOOK) != read_codes(tmp_path / "b.h5", HOOK)).nnz == 0


def test_hook_without_activations_fails_without_output(acts_file, random_sae, tmp_path):
    out = tmp_path / "codes.h5"
    with pytest.raises(InputError, match="blocks.5.hook_resid_post"):
        encode_to_hdf5(acts_file, out, {"blocks.5.hook_resid_post": lambda: random_sae})
    assert not list(tmp_path.iterdir())


def test_attention_hook_z_is_stored_flat_and_encoded_as_in_the_model(tiny_model, small_world, tmp_path):
    """``attn.hook_z`` ([b, T, heads, d_head]) is stored heads x d_head flat; a hook_z SAE (as
    sae-lens configures Gemma Scope's attention SAEs) encodes the file exactly as it encodes
    the hook's per-head tensor inside the model."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    hook = "blocks.0.attn.hook_z"
    records = small_world.prompt_sets["heldout_seen"][:12]
    acts = tmp_path / "acts.h5"
    extract_to_hdf5(tiny_model, records, [hook], acts, Storage(dtype="float32", batch_size=5))
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=64, reshape_activations="hook_z",
                                        metadata=SAEMetadata(hook_name=hook)))
    with torch.no_grad():
        sae.W_enc.normal_(0, 1.0)
    codes_path = tmp_path / "codes.h5"
    encode_to_hdf5(acts, codes_path, {hook: lambda: sae})
    with h5py.File(acts) as f:
        assert f[f"acts/{hook}"].shape[-1] == 32  # 4 heads x 8
    codes = read_codes(codes_path, hook)
    fresh = StandardSAE(StandardSAEConfig(d_in=32, d_sae=64, reshape_activations="hook_z",
                                          metadata=SAEMetadata(hook_name=hook)))
    fresh.load_state_dict(sae.state_dict())
    from saeflow.core.prompts import encode_prompt

    ids = encode_prompt(tiny_model.tokenizer, records[3]["text"])
    _, cache = tiny_model.run_with_cache(torch.tensor([ids]))
    with torch.no_grad():
        expected = fresh.encode(cache[hook][0]).numpy()  # [T, heads, d_head] in, per-head mode
    with h5py.File(acts) as f:
        n_pos = f[f"acts/{hook}"].shape[1]
    dense = codes[3 * n_pos:3 * n_pos + len(ids)].toarray()  # rows: prompt x stored position
    assert expected.any()
    np.testing.assert_allclose(dense[:len(ids)], expected, atol=1e-5)
