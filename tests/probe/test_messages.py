"""Errors about a label dataset's classes name the user's file (the prompt file, or the
activation file's metadata column) and the field, the dataset and its config key."""

from __future__ import annotations

import numpy as np
import pytest

from saeflow.core.errors import InputError
from saeflow.probe.strategies import BuildOptions, build_probe_dataset, make_probe_dataset_file
from test_probe_data import write_toy_files

HC = {"strategy": "hidden-to-concept", "layers": "1"}
WHERE = BuildOptions(n_folds=5, key="probe.datasets[3]", prompts="config/prompts/mine.jsonl")


def test_a_single_class_column_names_the_prompt_file_and_the_config_key(tmp_path):
    act, _ = write_toy_files(tmp_path, n=20, labels=np.zeros(20, int))
    out = tmp_path / "one.h5"
    with pytest.raises(InputError, match=r"^config/prompts/mine.jsonl: label: dataset 'one' "
                       r"\(probe.datasets\[3\].target.column = 'label'\): only one class "
                       r"\['NoError'\] among its 20 sample\(s\): a probe needs two or more$"):
        make_probe_dataset_file({"name": "one", **HC}, act, None, out, options=WHERE)
    assert not out.exists()


def test_a_class_rarer_than_the_folds_names_the_file_the_key_and_n_folds(tmp_path):
    act, _ = write_toy_files(tmp_path, n=23, labels=np.array([0] * 20 + [1] * 3))
    with pytest.raises(InputError, match=r"^config/prompts/mine.jsonl: label: dataset 'few' "
                       r"\(probe.datasets\[3\].target.column = 'label'\): class 'TypeError' "
                       r"has 3 sample\(s\), fewer than the 5 CV folds \(probe.cv.n_folds\)$"):
        build_probe_dataset({"name": "few", **HC}, act, options=WHERE)
    # no prompt file known (a direct call): the activation file's column is named instead
    with pytest.raises(InputError, match=r"heldout_seen.h5: meta/label: dataset 'few' "
                       r"\(probe.datasets\[\].target.column = 'label'\): class 'TypeError'"):
        build_probe_dataset({"name": "few", **HC}, act, options=BuildOptions(n_folds=5))
    # a failure target's classes come from the model's answers in the activation file
    act, codes = write_toy_files(tmp_path, model_correct=np.arange(60) > 2)
    with pytest.raises(InputError, match=r"heldout_seen.h5: meta/model_correct: dataset 'f' "
                       r"\(probe.datasets\[3\], strategy sae-to-failure\): class 'wrong' has "
                       r"3 sample\(s\)"):
        build_probe_dataset({"name": "f", "strategy": "sae-to-failure", "layers": "1"}, act,
                            codes, options=WHERE)
