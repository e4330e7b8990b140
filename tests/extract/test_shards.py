"""Sharded extraction and encoding: shards gathered into virtual datasets read exactly as one
unsharded run's files, in place; a missing or mismatched shard is an input error."""

import shutil

import h5py
import numpy as np
import pytest

from saeflow.core.errors import InputError
from saeflow.encode import encode_to_hdf5, gather_codes_stage
from saeflow.extract import Storage, extract_to_hdf5, gather_activations_stage
from saeflow.formats.activations import open_activations
from saeflow.formats.codes import read_codes

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
SAE_HOOK = HOOKS[1]
SHARD, N = 8, 30  # the last shard is short


@pytest.fixture(scope="module")
def runs(tiny_model, small_world, random_sae, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    records = small_world.prompt_sets["heldout_unseen"][:N]
    whole_acts, whole_codes = root / "whole" / "acts.h5", root / "whole" / "codes.h5"
    extract_to_hdf5(tiny_model, records, HOOKS, whole_acts, Storage(batch_size=4))
    encode_to_hdf5(whole_acts, whole_codes, {SAE_HOOK: lambda: random_sae}, batch_rows=64)
    acts, codes = [], []
    for i, start in enumerate(range(0, N, SHARD)):
        acts.append(root / "acts" / "set.shards" / f"{i:05d}.h5")
        codes.append(root / "codes" / "set.shards" / f"{i:05d}.h5")
        extract_to_hdf5(tiny_model, records, HOOKS, acts[-1], Storage(batch_size=4),
                        rows=(start, min(start + SHARD, N)))
        encode_to_hdf5(acts[-1], codes[-1], {SAE_HOOK: lambda: random_sae}, batch_rows=64)
    gather_activations_stage(acts, root / "acts" / "set.h5")
    gather_codes_stage(codes, root / "codes" / "set.h5")
    return {"root": root, "whole_acts": whole_acts, "whole_codes": whole_codes,
            "acts_shards": acts, "code_shards": codes}


def test_gathered_activations_equal_an_unsharded_run(runs):
    gathered = runs["root"] / "acts" / "set.h5"
    with open_activations(runs["whole_acts"]) as whole, open_activations(gathered) as f:
        for hook in HOOKS:
            assert f[f"acts/{hook}"].is_virtual
            np.testing.assert_array_equal(f[f"acts/{hook}"][()], whole[f"acts/{hook}"][()])
        for key in ("tokens", "lengths", "positions"):
            np.testing.assert_array_equal(f[key][()], whole[key][()])
        assert set(f["meta"]) == set(whole["meta"])
        for key in whole["meta"]:
            np.testing.assert_array_equal(f[f"meta/{key}"][()], whole[f"meta/{key}"][()])
        assert f.attrs["position_names"] == whole.attrs["position_names"]


def test_gathered_codes_equal_an_unsharded_run(runs):
    gathered = runs["root"] / "codes" / "set.h5"
    assert (read_codes(gathered, SAE_HOOK) != read_codes(runs["whole_codes"], SAE_HOOK)).nnz == 0
    with h5py.File(gathered) as f, h5py.File(runs["whole_codes"]) as whole:
        assert f[f"codes/{SAE_HOOK}/values"].is_virtual
        np.testing.assert_array_equal(f[f"codes/{SAE_HOOK}/row_valid"][()],
                                      whole[f"codes/{SAE_HOOK}/row_valid"][()])
        for stat in whole[f"stats/{SAE_HOOK}"]:
            np.testing.assert_allclose(f[f"stats/{SAE_HOOK}/{stat}"][()],
                                       whole[f"stats/{SAE_HOOK}/{stat}"][()], rtol=1e-12)


def test_the_pair_reads_from_elsewhere_once_moved_together(runs, tmp_path, monkeypatch):
    moved = tmp_path / "moved"
    shutil.copytree(runs["root"] / "acts", moved)
    monkeypatch.chdir(tmp_path.parent)
    with open_activations(moved / "set.h5") as f, open_activations(runs["whole_acts"]) as whole:
        np.testing.assert_array_equal(f[f"acts/{SAE_HOOK}"][()], whole[f"acts/{SAE_HOOK}"][()])


def test_a_missing_shard_is_an_error_not_fill_values(runs, tmp_path):
    copy = tmp_path / "acts"
    shutil.copytree(runs["root"] / "acts", copy)
    (copy / "set.shards" / "00001.h5").unlink()
    with pytest.raises(InputError, match=r"set\.h5: acts/blocks\.\d\.hook_resid_post: .*00001\.h5 "
                       "is missing"):
        open_activations(copy / "set.h5")
    codes = tmp_path / "codes"
    shutil.copytree(runs["root"] / "codes", codes)
    (codes / "set.shards" / "00002.h5").unlink()
    with pytest.raises(InputError, match=r"codes/blocks\.1\.hook_resid_post/indices: .*missing"):
        read_codes(codes / "set.h5", SAE_HOOK)


def test_shards_out_of_order_or_missing_leave_no_output(runs, tmp_path):
    shards = runs["acts_shards"]
    out = tmp_path / "set.h5"
    with pytest.raises(InputError, match=r"00002\.h5: attrs/shard_rows: rows 16\.\.24, expected "
                       "to start at 8"):
        gather_activations_stage([shards[0], shards[2], shards[3]], out)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_an_empty_shard_is_an_input_error(tiny_model, small_world, tmp_path):
    from saeflow.core.bundle import ModelSAEs
    from saeflow.extract import extract_stage

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"text": "x = 1"}\n')
    with pytest.raises(InputError, match="no shard 3 of 8"):
        extract_stage(ModelSAEs({"source": "pretrained", "name": "unused"}), prompts,
                      {"shard_size": 8}, "cpu", tmp_path / "out.h5", shard=3)
