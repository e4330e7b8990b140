"""Feature descriptions: generated from codes (toy) and imported from Neuronpedia exports."""

from __future__ import annotations

import gzip
import json

import h5py
import numpy as np
import pytest
from scipy import sparse

from saeflow.formats.descriptions import read_descriptions
from saeflow.formats.neuronpedia import import_neuronpedia
from saeflow.labels.describe import (
    class_membership, describe_features, describe_stage, feature_token_mass, membership_from_files,
    row_tokens,
)
from saeflow.core.errors import InputError

VOCAB = ["<bos>", " 3", '"', " price", " x", " +", " 7"]
CLASSES = ["special", "digit", "quote", "string_word", "name", "operator", "digit"]


def decode(ids):
    return "".join(VOCAB[i] for i in ids)


def toy_data():
    """2 prompts x 3 stored positions; 4 features: digits, quote, mixed, dead."""
    tokens = np.array([[0, 4, 5, 1, 2], [0, 3, 6, 2, 0]])
    positions = np.array([[1, 3, 4], [1, 2, -1]])  # tokens: x, 3, "  |  price, 7, (absent)
    dense = np.zeros((6, 4), dtype=np.float32)
    dense[1, 0], dense[4, 0] = 2.0, 1.0           # feature 0: ' 3', ' 7'
    dense[2, 1], dense[3, 1] = 3.0, 1.0           # feature 1: '"' (3), ' price' (1)
    dense[0, 2], dense[1, 2] = 1.0, 1.0           # feature 2: ' x', ' 3' half each
    return sparse.csr_matrix(dense), tokens, positions


def test_row_tokens_follow_row_major_layout_and_mark_absent():
    _, tokens, positions = toy_data()
    assert row_tokens(tokens, positions).tolist() == [4, 1, 2, 3, 6, -1]


def test_token_mass_sums_activation_per_token():
    codes, tokens, positions = toy_data()
    mass = feature_token_mass(codes, row_tokens(tokens, positions), len(VOCAB)).toarray()
    assert mass.shape == (4, len(VOCAB))
    assert mass[0, 1] == 2.0 and mass[0, 6] == 1.0 and mass[1, 2] == 3.0 and mass[3].sum() == 0


def test_descriptions_list_top_tokens_with_shares_and_contexts():
    codes, tokens, positions = toy_data()
    records = describe_features(codes, tokens, positions, decode, "toy-L1", top_k=2,
                                n_contexts=1, context=2)
    assert [r["feature_index"] for r in records] == [0, 1, 2]  # dead feature 3 left out
    assert records[0]["feature_id"] == "toy-L1-0"
    assert records[0]["description"].startswith('Top tokens: " 3" 67%, " 7" 33%.')
    assert records[0]["description"].endswith('Contexts: " x +[ 3]"')
    assert records[1]["description"].startswith('Top tokens: "\\"" 75%')


def test_class_membership_uses_mass_share_threshold():
    codes, tokens, positions = toy_data()
    mass = feature_token_mass(codes, row_tokens(tokens, positions), len(VOCAB))
    digits = class_membership(mass, CLASSES, {"digit"}, threshold=0.5)
    assert digits.tolist() == [True, False, True, False]  # feature 2 is exactly half digit
    strict = class_membership(mass, CLASSES, {"digit"}, threshold=0.6)
    assert strict.tolist() == [True, False, False, False]
    strings = class_membership(mass, CLASSES, {"quote", "string_word"})
    assert strings.tolist() == [False, True, False, False]


def _write_contract_files(tmp_path):
    codes, tokens, positions = toy_data()
    codes_h5, acts_h5, truth = tmp_path / "codes.h5", tmp_path / "acts.h5", tmp_path / "truth.json"
    with h5py.File(codes_h5, "w") as fh:
        g = fh.create_group("codes/blocks.0.hook_resid_post")
        g["indptr"], g["indices"], g["values"] = codes.indptr, codes.indices, codes.data
        g.attrs.update({"d_sae": 4, "n_prompts": 2, "n_positions": 3})
    with h5py.File(acts_h5, "w") as fh:
        fh["tokens"], fh["positions"] = tokens.astype(np.int32), positions.astype(np.int32)
    truth.write_text(json.dumps({"token_classes": sorted(set(CLASSES)), "token_class_of_id": CLASSES}))
    return codes_h5, acts_h5, truth


def test_membership_from_contract_files(tmp_path):
    codes_h5, acts_h5, truth = _write_contract_files(tmp_path)
    members = membership_from_files(codes_h5, acts_h5, truth, "blocks.0.hook_resid_post",
                                    {"digits": ["digit"], "strings": ["quote", "string_word"]})
    assert members == {"digits": [0, 2], "strings": [1]}
    with pytest.raises(InputError, match="token_classes.*unknown classes"):
        membership_from_files(codes_h5, acts_h5, truth, "blocks.0.hook_resid_post",
                              {"digits": ["number"]})
    with pytest.raises(InputError, match="codes/blocks.9.hook_resid_post: codes group"):
        membership_from_files(codes_h5, acts_h5, truth, "blocks.9.hook_resid_post", {})


def _np_row(index, description, layer="12-gemmascope-res-65k", model="gpt-4o-mini"):
    return {"modelId": "gemma-2-2b", "layer": layer, "index": str(index),
            "description": description, "explanationModelName": model}


def test_import_neuronpedia_normalises_filters_and_dedupes(tmp_path):
    (tmp_path / "batch-0.jsonl").write_text("\n".join(json.dumps(r) for r in [
        _np_row(7, " numbers in code "), _np_row(3, "quotes"),
        _np_row(7, "second opinion", model="claude"), _np_row(1, "other layer", layer="6-res")]))
    with gzip.open(tmp_path / "batch-1.jsonl.gz", "wt") as fh:
        fh.write(json.dumps(_np_row(12, "formatting")) + "\n")
    records, stats = import_neuronpedia(tmp_path, source="12-gemmascope-res-65k")
    assert [r["feature_index"] for r in records] == [3, 7, 12]
    assert records[1] == {"feature_id": "12-gemmascope-res-65k-7", "feature_index": 7,
                          "description": "numbers in code", "explanation_model": "gpt-4o-mini"}
    assert stats == {"n_rows": 5, "n_filtered": 1, "n_duplicates": 1}
    chosen, _ = import_neuronpedia(tmp_path, source="12-gemmascope-res-65k", explanation_model="claude")
    assert [(r["feature_index"], r["description"]) for r in chosen] == [(7, "second opinion")]


def test_import_neuronpedia_bad_input(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps(_np_row(1, "x")) + "\n" + json.dumps(_np_row(2, "y", layer="6-res")))
    with pytest.raises(InputError, match="layer: several sources"):
        import_neuronpedia(tmp_path)
    (tmp_path / "b.jsonl").write_text(json.dumps(_np_row("4a", "z")))
    with pytest.raises(InputError, match=r"b.jsonl: line 1.index: not a non-negative integer"):
        import_neuronpedia(tmp_path, source="12-gemmascope-res-65k")
    (tmp_path / "b.jsonl").write_text("{not json\n")
    with pytest.raises(InputError, match=r"b.jsonl: line 1: malformed JSON"):
        import_neuronpedia(tmp_path, source="12-gemmascope-res-65k")
    (tmp_path / "b.jsonl").write_text(json.dumps({"layer": "12-gemmascope-res-65k", "index": "3"}))
    with pytest.raises(InputError, match=r"line 1.description: missing"):
        import_neuronpedia(tmp_path, source="12-gemmascope-res-65k")


def test_read_descriptions_accepts_shapes_and_rejects_bad_rows(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"src-4": {"description": "a"}, "src-9": {"description": "b"}}))
    assert [(r["feature_id"], r["feature_index"]) for r in read_descriptions(path)] == [
        ("src-4", 4), ("src-9", 9)]
    path.write_text(json.dumps({"records": [{"feature_id": "s-1", "description": "a"},
                                            {"feature_id": "s-1", "description": "b"}]}))
    with pytest.raises(InputError, match="feature_id: duplicate id 's-1'"):
        read_descriptions(path)
    path.write_text(json.dumps([{"feature_index": 2}]))
    with pytest.raises(InputError, match=r"records\[0\].description: missing"):
        read_descriptions(path)
    path.write_text(json.dumps([{"feature_id": "no-number-here", "description": "a"}]))
    with pytest.raises(InputError, match="no feature index"):
        read_descriptions(path)


def test_describe_stage_writes_neuronpedia_descriptions(tmp_path):
    (tmp_path / "np").mkdir()
    (tmp_path / "np" / "a.jsonl").write_text(json.dumps(_np_row(3, "digits")))
    codes_h5, _, _ = _write_contract_files(tmp_path)  # the SAE: d_sae 4
    out = tmp_path / "descriptions.json"
    describe_stage({"backend": "neuronpedia", "source": "12-gemmascope-res-65k"}, out,
                   "blocks.0.hook_resid_post", {"folder": tmp_path / "np", "codes": codes_h5})
    data = json.loads(out.read_text())
    assert data["source"] == "12-gemmascope-res-65k" and data["n_features"] == 1
    assert (data["hook"], data["d_sae"]) == ("blocks.0.hook_resid_post", 4)  # which SAE
    assert read_descriptions(out)[0]["feature_id"] == "12-gemmascope-res-65k-3"
    with pytest.raises(InputError, match="labels.describe.backend: unknown backend 'gpt'"):
        describe_stage({"backend": "gpt"}, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_an_exported_index_beyond_the_saes_width_names_batch_line_and_config_key(tmp_path):
    (tmp_path / "np").mkdir()
    with gzip.open(tmp_path / "np" / "batch-0.jsonl.gz", "wt") as fh:
        fh.write(json.dumps(_np_row(1, "a")) + "\n" + json.dumps(_np_row(4, "b")) + "\n")
    codes_h5, _, _ = _write_contract_files(tmp_path)  # d_sae 4: index 4 is one too far
    out = tmp_path / "descriptions.json"
    with pytest.raises(InputError) as err:
        describe_stage({"backend": "neuronpedia", "source": "12-gemmascope-res-65k"}, out,
                       "blocks.0.hook_resid_post", {"folder": tmp_path / "np", "codes": codes_h5},
                       "sae.ids.blocks.0.hook_resid_post")
    assert str(err.value) == (
        f"{tmp_path}/np/batch-0.jsonl.gz: line 2.index: feature 4 is beyond the width (d_sae 4) "
        "of the SAE of labels.hook blocks.0.hook_resid_post (given by "
        "sae.ids.blocks.0.hook_resid_post): are labels.describe.source "
        "'12-gemmascope-res-65k' and that SAE the same?")
    assert not out.exists()
