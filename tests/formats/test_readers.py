"""Every reader of a user file goes through one checked path: each kind of bad input is one
line naming the file and the field, and the file is left as the user wrote it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from saeflow.core.errors import InputError
from saeflow.core.io import read_json, read_jsonl, read_yaml
from saeflow.core.prompts import load_prompt_set
from saeflow.formats.activations import open_activations
from saeflow.formats.codes import read_codes
from saeflow.formats.descriptions import read_descriptions
from saeflow.formats.labels import read_labelled
from saeflow.formats.neuronpedia import import_neuronpedia
from saeflow.labels.study import load_study

GOOD_STUDY = ("baseline_loss: 1.0\ncategories:\n  a: {n_predicted: 3, ablated_loss: 1.5,"
              " confusion: {tp: 2, fp: 1, tn: 5, fn: 1}}\n")


def _neuronpedia(folder: Path, text: bytes) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "batch-0.jsonl.gz").write_bytes(gzip.compress(text))
    return folder


# reader, file name, bytes of a good file
READERS = {
    "descriptions": (read_descriptions, "d.json",
                     b'{"records": [{"feature_index": 1, "description": "x"}]}'),
    "labels": (read_labelled, "l.json", b'[{"feature_index": 1, "label": "related"}]'),
    "prompts": (load_prompt_set, "p.jsonl", b'{"text": "a", "answer": " b"}\n'),
    "study": (load_study, "s.yaml", GOOD_STUDY.encode()),
    "neuronpedia": (lambda folder: import_neuronpedia(folder, "src"), "np",
                    b'{"layer": "src", "index": 1, "description": "x"}\n'),
}
BAD = {
    "undecodable": lambda good: good[:-3] + b"\xff\xfe" + good[-3:],
    "truncated": lambda good: good[: len(good) // 2],
    "empty": lambda good: b"",
}


def _write(tmp_path: Path, reader: str, data: bytes) -> Path:
    name = READERS[reader][1]
    if reader == "neuronpedia":
        return _neuronpedia(tmp_path / name, data)
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _snapshot(path: Path) -> dict[str, bytes]:
    files = [path] if path.is_file() else sorted(path.rglob("*"))
    return {str(p): p.read_bytes() for p in files if p.is_file()}


def _one_line_naming(err: InputError, path: Path) -> None:
    text = str(err)
    assert "\n" not in text, text
    assert text.startswith(str(path)) or str(path) in text, text
    assert err.field and err.field != "None", text


@pytest.mark.parametrize("reader", sorted(READERS))
def test_good_files_read(tmp_path, reader):
    fn, _, good = READERS[reader]
    assert fn(_write(tmp_path, reader, good))


@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("reader", sorted(READERS))
def test_damaged_files_are_one_line_and_untouched(tmp_path, reader, bad):
    fn, _, good = READERS[reader]
    path = _write(tmp_path, reader, BAD[bad](good))
    before = _snapshot(path)
    with pytest.raises(InputError) as err:
        fn(path)
    _one_line_naming(err.value, path if reader != "neuronpedia" else path)
    if bad == "undecodable":
        line = good[:-3].count(b"\n") + 1
        assert "not UTF-8" in str(err.value) and f"line {line}" in str(err.value)
    assert _snapshot(path) == before


@pytest.mark.parametrize("reader, text, field", [
    ("descriptions", b'[{"feature_index": 1, "description": "x", "description": "y"}]', "description"),
    ("labels", b'{"records": [{"feature_index": 1, "label": "related", "label": "no"}]}', "label"),
    ("prompts", b'{"text": "a", "text": "b"}\n', "line 1: text"),
    ("study", (GOOD_STUDY + "baseline_loss: 2.0\n").encode(), "line 4"),
])
def test_a_key_given_twice_is_refused(tmp_path, reader, text, field):
    path = _write(tmp_path, reader, text)
    with pytest.raises(InputError, match="twice") as err:
        READERS[reader][0](path)
    assert field in str(err.value)


@pytest.mark.parametrize("reader, text, field", [
    ("descriptions", b'{"records": "oops"}', "records"),
    ("descriptions", b'"just a string"', "<root>"),
    ("labels", b'{"category": "a", "records": "oops"}', "records"),
    ("prompts", b'["a list"]\n', "line 1"),
    ("study", b"- 1\n- 2\n", "<root>"),
])
def test_wrong_top_level_type_names_the_field(tmp_path, reader, text, field):
    path = _write(tmp_path, reader, text)
    with pytest.raises(InputError) as err:
        READERS[reader][0](path)
    assert err.value.field == field, str(err.value)


@pytest.mark.parametrize("reader, text, field", [
    ("descriptions", b'[{"feature_index": NaN, "description": "x"}]', "<root>"),
    ("prompts", b'{"text": "a", "weight": NaN}\n', "line 1"),
    ("study", GOOD_STUDY.replace("1.5", ".nan").encode(), "categories.a.ablated_loss"),
])
def test_nan_is_refused(tmp_path, reader, text, field):
    path = _write(tmp_path, reader, text)
    with pytest.raises(InputError) as err:
        READERS[reader][0](path)
    assert err.value.field == field, str(err.value)


@pytest.mark.parametrize("reader, text, field", [
    ("descriptions", b'[{"feature_index": -3, "description": "x"}]', "records[0].feature_index"),
    ("labels", b'[{"index": -1, "label": "related"}]', "records[0].index"),
    ("study", GOOD_STUDY.replace("n_predicted: 3", "n_predicted: -3").encode(),
     "categories.a.n_predicted"),
    ("study", GOOD_STUDY.replace("tp: 2", "tp: -2").encode(), "categories.a.confusion.tp"),
])
def test_negative_counts_are_refused(tmp_path, reader, text, field):
    path = _write(tmp_path, reader, text)
    with pytest.raises(InputError) as err:
        READERS[reader][0](path)
    assert err.value.field == field, str(err.value)


@pytest.mark.parametrize("text, field, nearest", [
    (GOOD_STUDY.replace("ablated_loss: 1.5,", "ablated_loss: 1.5, delta_sse: 0.1,"),
     "categories.a.delta_sse", "delta_se"),
    (GOOD_STUDY + "delta_covarance: {names: [a], matrix: [[0.01]]}\n", "delta_covarance",
     "delta_covariance"),
    (GOOD_STUDY.replace("tp: 2", "tpp: 2"), "categories.a.confusion.tpp", "tp"),
])
def test_unknown_study_keys_name_the_nearest_valid_one(tmp_path, text, field, nearest):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=f"did you mean '{nearest}'") as err:
        load_study(path)
    assert err.value.field == field


def test_prompt_errors_count_file_lines_from_one(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": ""}\n')
    with pytest.raises(InputError, match=r"line 3\.text"):
        load_prompt_set(path)
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    assert read_jsonl(path).lines == [1, 3]


def test_json_and_yaml_loaders_name_the_line(tmp_path):
    (tmp_path / "a.json").write_text('{"a": 1,\n "b": }')
    with pytest.raises(InputError, match="line 2: malformed JSON"):
        read_json(tmp_path / "a.json")
    (tmp_path / "a.yaml").write_text("a: 1\nb: [\n")
    with pytest.raises(InputError, match="malformed YAML"):
        read_yaml(tmp_path / "a.yaml")
    with pytest.raises(InputError, match="does not exist"):
        read_json(tmp_path / "missing.json")


# --- HDF5 files ------------------------------------------------------------------------------

HOOK = "blocks.0.hook_resid_post"


def _acts(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f["tokens"] = np.ones((4, 3), np.int32)
        f["lengths"] = np.full(4, 3, np.int32)
        f["positions"] = np.tile(np.arange(3, dtype=np.int32), (4, 1))
        f.create_dataset(f"acts/{HOOK}", data=np.random.default_rng(0).normal(size=(4, 3, 1000)),
                         chunks=(1, 3, 1000), compression="gzip")
        f.attrs["hooks"] = json.dumps([HOOK])
        f.attrs["position_names"] = json.dumps(["0", "1", "2"])
    return path


def _codes(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        g = f.create_group(f"codes/{HOOK}")
        g["indptr"] = np.array([0, 1, 2, 2, 3], np.int64)
        g["indices"] = np.array([0, 5, 2], np.int32)
        g["values"] = np.array([1.0, 2.0, 3.0], np.float32)
        g["row_valid"] = np.ones(4, bool)
        g.attrs.update({"d_sae": 8, "n_prompts": 2, "n_positions": 2})
    return path


def test_codes_reader_checks_the_layout(tmp_path):
    path = _codes(tmp_path / "c.h5")
    assert read_codes(path, HOOK).toarray()[1, 5] == 2.0
    with h5py.File(path, "a") as f:
        f[f"codes/{HOOK}/indices"][1] = 9  # beyond d_sae
    with pytest.raises(InputError, match=f"codes/{HOOK}/indices: feature index outside"):
        read_codes(path, HOOK)
    with h5py.File(path, "a") as f:
        del f[f"codes/{HOOK}/values"]
    with pytest.raises(InputError, match=f"codes/{HOOK}/values: dataset missing"):
        read_codes(path, HOOK)


@pytest.mark.parametrize("damage", ["truncated", "random_bytes", "deleted_dataset", "not_hdf5"])
def test_damaged_activation_files_are_one_line(tmp_path, damage):
    path = _acts(tmp_path / "a.h5")
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "random_bytes":  # inside the last compressed chunk
        rng = np.random.default_rng(1)
        start = len(data) - 4000
        data[start:start + 2000] = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
    elif damage == "deleted_dataset":
        with h5py.File(path, "a") as f:
            del f[f"acts/{HOOK}"]
    else:
        path.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(InputError) as err:
        with open_activations(path, [HOOK]) as h5:
            h5[f"acts/{HOOK}"]  # the open checks shapes; reading goes through formats.hdf5
            from saeflow.formats.hdf5 import read_array

            read_array(h5, f"acts/{HOOK}", path)
    _one_line_naming(err.value, path)


@pytest.mark.parametrize("data", [
    [{"index": "3", "explanation": "x"}, {"index": 5, "description": "y"}],  # a per-source list
    {"3": {"explanation": "x"}, "5": {"description": "y"}},                # dict by index
    {"3": "x", "5": "y"},                                                  # index -> text
    {"src-3": "x", "src-5": "y"},                                          # feature id -> text
])
def test_neuronpedia_per_source_json_is_read_in_every_shape(tmp_path, data):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data))
    records = read_descriptions(path)
    assert [(r["feature_index"], r["description"]) for r in records] == [(3, "x"), (5, "y")]


@pytest.mark.parametrize("data", [
    [{"feature_index": 3, "label": "related"}, {"index": 5, "label": "not-related"}],
    {"records": [{"feature_id": "12-res-3", "label": "yes"}, {"index": "5", "label": "no"}]},
    {"12-res-3": {"label": "related"}, "12-res-5": {"label": "not related"}},
])
def test_label_files_in_the_shapes_researchers_have(tmp_path, data):
    path = tmp_path / "l.json"
    path.write_text(json.dumps(data))
    records = read_labelled(path)
    assert [(r["feature_index"], r["label"]) for r in records] == [(3, "related"), (5, "not-related")]
