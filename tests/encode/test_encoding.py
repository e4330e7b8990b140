import h5py
import numpy as np
import pytest
import torch

from saeflow.encode import encode_to_hdf5
from saeflow.formats.codes import read_codes
from saeflow.core.errors import InputError
from saeflow.extract import extract_to_hdf5

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def acts_file(tiny_model, small_world, tmp_path_factory):
    path = tmp_path_factory.mktemp("acts") / "acts.h5"
    extract_to_hdf5(tiny_model, small_world.prompt_sets["heldout_seen"][:30],
                    ["blocks.0.hook_resid_post", HOOK], path, batch_size=8)
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
