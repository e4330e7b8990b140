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
    """Every reader opens through formats.hdf5.open_h5, which checks the shards a gathered file
    records (the probes' reader too, which opens the file directly)."""
    from saeflow.formats.hdf5 import open_h5

    copy = tmp_path / "acts"
    shutil.copytree(runs["root"] / "acts", copy)
    (copy / "set.shards" / "00001.h5").unlink()
    message = (r"set\.h5: shards: shard .*set\.shards/00001\.h5 is missing \(deleted after this "
               r"file was gathered from it\): run snakemake again to rebuild it")
    for reader in (open_activations, open_h5):
        with pytest.raises(InputError, match=message):
            reader(copy / "set.h5")
    codes = tmp_path / "codes"
    shutil.copytree(runs["root"] / "codes", codes)
    (codes / "set.shards" / "00002.h5").unlink()
    with pytest.raises(InputError, match=r"set\.h5: shards: shard .*00002\.h5 is missing"):
        read_codes(codes / "set.h5", SAE_HOOK)


def _flip_a_byte(path):
    """Change one byte of ``path`` near its end, keeping its size and mtime."""
    import os

    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize("stage", ["acts", "codes"])
def test_a_changed_shard_is_an_error_naming_it(runs, tmp_path, stage):
    """Size always; sha256 when the mtime differs from the one recorded, and on verify."""
    import os

    from saeflow.formats.hdf5 import open_h5, verify_shards

    copy = tmp_path / stage
    shutil.copytree(runs["root"] / stage, copy)  # copy2: sizes and mtimes kept
    shard = copy / "set.shards" / "00001.h5"
    assert verify_shards(copy / "set.h5") == 4
    recorded = shard.stat().st_mtime_ns
    os.utime(shard)  # touched: a new mtime, the same bytes
    open_h5(copy / "set.h5").close()
    os.utime(shard, ns=(recorded, recorded))
    _flip_a_byte(shard)  # same size, the recorded mtime: only a full check sees it
    open_h5(copy / "set.h5").close()
    with pytest.raises(InputError, match=rf"{shard}: <file>: contents changed since .*set\.h5 was "
                       r"gathered from it \(sha256 [0-9a-f]{12}\.\.\., recorded [0-9a-f]{12}"
                       r"\.\.\.\); delete the shard and run snakemake again to rebuild it"):
        verify_shards(copy / "set.h5")
    os.utime(shard)  # its mtime moved too: every open checks its sha256
    with pytest.raises(InputError, match="contents changed since"):
        open_h5(copy / "set.h5")
    with open(shard, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(InputError, match=rf"{shard}: <file>: \d+ bytes, \d+ when .*set\.h5 was "
                       "gathered from it: the shard changed; delete the shard and run snakemake "
                       "again to rebuild it"):
        open_h5(copy / "set.h5")


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


def test_a_deleted_shard_is_planned_for_rebuild(tmp_path):
    """Snakemake ignores a deleted intermediate whose consumers are up to date
    (snakemake/snakemake#1978): a gathered file whose shard is gone is marked out of date
    while the DAG is built, so a dry run plans the shard and the gather again."""
    import os
    import time

    from saeflow.testing.workspace import run_snakemake, sync_workflow

    work = sync_workflow(tmp_path)
    (work / "p.jsonl").write_text("".join(f'{{"text": "prompt {i}"}}\n' for i in range(48)))
    (work / "s.yaml").write_text(
        "experiment: s\nmodel: {source: pretrained, name: gpt2}\n"
        "sae: {source: pretrained, release: r, hooks: [blocks.0.hook_resid_pre],"
        " ids: {blocks.0.hook_resid_pre: x}}\n"
        "extraction: {prompt_sets: {p: p.jsonl}, hooks: [blocks.0.hook_resid_pre],"
        " shard_size: 16, batch_size: 8}\n")
    results = work / "results" / "s"
    made = [[results / stage / "p.shards" / f"{i:05d}.h5" for i in range(3)]
            for stage in ("activations", "codes")]
    made.append([results / "activations" / "p.h5", results / "codes" / "p.h5",
                 results / "sae" / "metrics.json", results / "sae" / "density.json",
                 results / "figures" / "sae_density.png"])
    later = time.time() + 60  # newer than every workflow file: only a missing shard is stale
    for k, files in enumerate(made):
        for path in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")
            os.utime(path, (later + k, later + k))

    def planned():
        """The job-stats table of a dry run: rule -> jobs, and stderr."""
        import re

        proc = run_snakemake(work, "-n", "results/s/activations/p.h5", "all",
                             "--configfile", "s.yaml")
        jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, re.MULTILINE))
        return {rule: int(n) for rule, n in jobs.items() if rule not in ("all", "total")}, \
            proc.stderr

    assert planned()[0] == {}
    (results / "activations" / "p.shards" / "00001.h5").unlink()
    (results / "codes" / "p.shards" / "00002.h5").unlink()
    jobs, stderr = planned()
    # shard 1's activations (its codes follow them) and shard 2's codes, both gathers
    assert jobs == {"extract_shard": 1, "encode_shard": 2, "gather_activations": 1,
                    "gather_codes": 1}, jobs
    assert "saeflow: results/s/activations/p.h5: shard results/s/activations/p.shards/00001.h5 " \
        "is missing (1 of 3): marked out of date" in stderr
