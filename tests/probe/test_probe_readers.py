"""Every HDF5 reader of saeflow.probe and saeflow.labels goes through saeflow.formats.hdf5's
checked opener: a missing file, a file that is not HDF5 and a missing dataset are each one
InputError naming the file and the dataset, never an h5py traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from saeflow.core.config import schema_defaults
from saeflow.core.errors import InputError
from saeflow.labels.ablation import eval_set_from_h5
from saeflow.probe.dataset import ProbeDataset, read_probe_dataset, write_probe_dataset
from saeflow.probe.effects import compute_effects
from saeflow.probe.effects_files import coefficient_weights, read_effect_arrays, write_effects
from saeflow.probe.crossval import ProbeConfig
from saeflow.probe.fit import fit_probe
from saeflow.probe.fit_files import write_probe_fit
from saeflow.probe.strategies import build_probe_dataset

Reader = Callable[[Path], Any]


def _dataset() -> ProbeDataset:
    """40 prompts, 4 hidden columns, a binary label column 0 separates."""
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    X = rng.normal(size=(40, 4))
    X[:, 0] += 3.0 * y
    cols = {"hook": np.zeros(4, np.int32), "layer": np.zeros(4, np.int32),
            "position": np.zeros(4, np.int32), "unit": np.arange(4, dtype=np.int32)}
    meta = {"target_kind": "label", "positions": ["final"], "layers": [0], "strategy": "test",
            "input_kind": "hidden", "class_names": ["0", "1"]}
    return ProbeDataset("syn", X, y, np.arange(40), np.zeros(40, np.int32), cols, meta)


def probe_dataset(tmp: Path) -> tuple[Path, Reader]:
    write_probe_dataset(_dataset(), tmp / "data.h5")
    return tmp / "data.h5", read_probe_dataset


def probe_fit(tmp: Path) -> tuple[Path, Reader]:
    cfg = ProbeConfig.from_dict({**schema_defaults("probe.cv"), "n_folds": 2, "inner_folds": 2,
                                 "Cs": [1.0], "alphas": [1.0], "n_permutations": 0})
    write_probe_fit(fit_probe(_dataset(), cfg), tmp / "fit.json", tmp / "fit.h5")
    return tmp / "fit.h5", coefficient_weights


def effect_arrays(tmp: Path) -> tuple[Path, Reader]:
    write_effects(compute_effects(_dataset(), n_permutations=20, top_k=2), tmp / "e.json",
                  tmp / "e.h5")
    return tmp / "e.h5", read_effect_arrays


def eval_prompts(tmp: Path) -> tuple[Path, Reader]:
    with h5py.File(tmp / "acts.h5", "w") as fh:
        fh["tokens"] = np.array([[1, 5, 6, 0], [2, 7, 0, 0]])
        fh["lengths"] = np.array([3, 2])
        fh["meta/answer_token_id"] = np.array([30, 31])
    return tmp / "acts.h5", lambda path: eval_set_from_h5(path, "answer")


def probe_data_activations(tmp: Path) -> tuple[Path, Reader]:
    from test_probe_data import write_toy_files

    act, codes = write_toy_files(tmp, n=30)
    spec = {"name": "sc", "strategy": "sae-to-concept", "layers": "0-2", "positions": ["mid"]}
    return act, lambda path: build_probe_dataset(spec, path, codes)


# (reader, how its valid file is made, a dataset it reads)
READERS = [
    ("read_probe_dataset", probe_dataset, "y"),
    ("read_probe_dataset", probe_dataset, "columns/unit"),
    ("coefficient_weights", probe_fit, "fold_0/coef"),
    ("coefficient_weights", probe_fit, "columns/layer"),
    ("read_effect_arrays", effect_arrays, "q"),
    ("eval_set_from_h5", eval_prompts, "lengths"),
    ("eval_set_from_h5", eval_prompts, "meta/answer_token_id"),
    ("build_probe_dataset", probe_data_activations, "positions"),
]
CASES = [(name, make, key, damage) for name, make, key in READERS
         for damage in ("missing file", "not HDF5", "missing dataset")]


@pytest.mark.parametrize(("name", "make", "key", "damage"), CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[3]}" for c in CASES])
def test_a_bad_file_is_one_input_error_naming_it(tmp_path, name, make, key, damage):
    path, read = make(tmp_path)
    read(path)  # the valid file reads
    if damage == "missing file":
        path.unlink()
        field = "<file>"
    elif damage == "not HDF5":
        path.write_text("not an HDF5 file\n")
        field = "<file>"
    else:
        with h5py.File(path, "a") as h5:
            del h5[key]
        field = key
    with pytest.raises(InputError) as err:
        read(path)
    assert err.value.source == str(path) and err.value.field == field, str(err.value)


def test_model_correct_from_file(tmp_path):
    from saeflow.probe.inputs import load_model_correct

    (tmp_path / "mc.json").write_text("[1, 0, 1]")
    assert load_model_correct(tmp_path / "mc.json").tolist() == [True, False, True]
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="0/1"):
        load_model_correct(tmp_path / "bad.json")
