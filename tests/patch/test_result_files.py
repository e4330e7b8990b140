"""The patching stage's HDF5 readers (resid.h5, atp.h5 and its estimators' files, exact.h5)
go through saeflow.formats.hdf5: a missing file, a file that is not HDF5 and a missing
dataset are each one InputError naming the file and the dataset, never an h5py traceback."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from saeflow.core.errors import InputError
from saeflow.patch.attribution import AtPResult, read_atp, write_atp
from saeflow.patch.exhaustive import ExactResult, read_exact, write_exact
from saeflow.patch.resid import ResidResult, read_resid, write_resid

HOOK = "blocks.0.hook_resid_post"
N, P, D_SAE = 3, 4, 5


def _resid(path):
    rng = np.random.default_rng(0)
    agg = {f"{k}_{s}": rng.normal(size=(2, P)) for k in ("effect", "normalised")
           for s in ("mean", "lo", "hi")}
    write_resid(path, ResidResult(np.arange(N), np.full(N, P), rng.normal(size=N),
                                  rng.normal(size=N), rng.normal(size=(N, 2, P)), agg), {})


def _atp(path):
    rng = np.random.default_rng(1)
    results = {}
    for mode, with_error in (("with_error", True), ("without_error", False)):
        r = AtPResult(with_error, np.arange(N), np.full(N, P), rng.normal(size=N),
                      rng.normal(size=N))
        r.latent_effect[HOOK], r.latent_delta[HOOK] = (rng.normal(size=(N, D_SAE))
                                                       for _ in range(2))
        r.latent_mass[HOOK] = rng.normal(size=(N, P))
        if with_error:
            r.error_effect[HOOK] = rng.normal(size=(N, P))
        results[mode] = r
    write_atp(path, results, (rng.normal(size=N), rng.normal(size=N)), {})


def _exact(path):
    rng = np.random.default_rng(2)
    results = {}
    for mode, with_error in (("with_error", True), ("without_error", False)):
        r = ExactResult(with_error, np.arange(N), np.full(N, P), n_run=7)
        r.latent_effect[HOOK] = rng.normal(size=(N, D_SAE))
        if with_error:
            r.error_effect[HOOK] = rng.normal(size=(N, P))
        results[mode] = r
    write_exact(path, results, {})


# reader, writer of a valid file, the datasets whose loss each read must name
READERS = {
    "read_resid": (read_resid, _resid, ["pair_id", "lengths", "clean_logit_diff", "cluster",
                                        "patched_logit_diff", "agg", "agg/effect_mean"]),
    "read_atp": (read_atp, _atp, ["pair_id", "model/clean_logit_diff",
                                  "with_error/corrupted_logit_diff", f"with_error/{HOOK}",
                                  f"with_error/{HOOK}/latent_effect",
                                  f"without_error/{HOOK}/latent_mass"]),
    "read_exact": (read_exact, _exact, ["pair_id", "lengths", f"with_error/{HOOK}",
                                        f"without_error/{HOOK}/latent_effect"]),
}
CASES = [(name, damage, key) for name, (_, _, keys) in READERS.items()
         for damage, key in [("missing_file", None), ("not_hdf5", None)]
         + [("missing_dataset", k) for k in keys]]


def _one_line(err, path, field):
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text, text
    assert text.startswith(f"{path}: {field}: "), text


@pytest.mark.parametrize("name, damage, key", CASES,
                         ids=[f"{n}-{d}-{k}" if k else f"{n}-{d}" for n, d, k in CASES])
def test_a_bad_file_is_one_input_error_naming_file_and_dataset(tmp_path, name, damage, key):
    read, write, _ = READERS[name]
    path = tmp_path / "file.h5"
    if damage == "missing_file":
        with pytest.raises(InputError) as err:
            read(path)
        _one_line(err, path, "<file>")
        return
    if damage == "not_hdf5":
        path.write_text("not an hdf5 file\n")
        with pytest.raises(InputError) as err:
            read(path)
        _one_line(err, path, "<file>")
        return
    write(path)
    read(path)  # the valid file reads
    with h5py.File(path, "a") as f:
        del f[key]
    with pytest.raises(InputError) as err:
        read(path)
    _one_line(err, path, key)


def test_the_exact_files_run_count_is_checked_too(tmp_path):
    path = tmp_path / "exact.h5"
    _exact(path)
    assert read_exact(path)["with_error"].n_run == 7
    with h5py.File(path, "a") as f:
        del f["with_error"].attrs["n_run"]
    with pytest.raises(InputError) as err:
        read_exact(path)
    _one_line(err, path, "with_error/attrs/n_run")
