"""Probe dataset strategies on tiny synthetic files that follow docs/outputs.md exactly."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from saeflow.core.errors import InputError
from saeflow.probe.dataset import read_probe_dataset
from saeflow.probe.strategies import BuildOptions, build_probe_dataset, make_probe_dataset_file

POSITIONS = ["first", "mid", "final"]
LABELS = ["NoError", "TypeError", "KeyError"]
N_LAYERS, D_MODEL, D_SAE = 3, 8, 12
FIVE_FOLDS, TWO = BuildOptions(n_folds=5), BuildOptions(n_folds=2)  # probe.cv.n_folds
INFORMATIVE = "mid"  # the only stored position whose activations depend on the label


def write_toy_files(tmp: Path, n: int = 60, seed: int = 0, *, labels: np.ndarray | None = None,
                    model_correct: np.ndarray | None = None, absent: tuple[int, ...] = (0,),
                    nan_at: tuple[int, int] | None = None, embed_hooks: bool = False
                    ) -> tuple[Path, Path]:
    """Write ``activations.h5`` and ``codes.h5`` for ``n`` prompts, 3 positions, 3 layers.

    Ground truth: the label shifts every layer's activation at position ``mid`` (dims 0-2,
    one per class); feature 3 of every layer's SAE reads dim 1 (class TypeError). Prompts in
    ``absent`` lack position ``first``. ``model_correct`` defaults to wrong iff dim 5 of
    ``mid`` > 0.8, a signal features 5 carries.
    """
    rng = np.random.default_rng(seed)
    label_id = np.arange(n) % 3 if labels is None else np.asarray(labels)
    P = len(POSITIONS)
    positions = np.tile(np.array([1, 4, 7], np.int32), (n, 1))
    positions[list(absent), 0] = -1
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in range(N_LAYERS)]
    hooks = ["blocks.0.hook_resid_pre", *hooks] + (["hook_embed", "hook_pos_embed"]
                                                   if embed_hooks else [])
    acts = {}
    for hook in hooks:
        a = rng.normal(size=(n, P, D_MODEL)).astype(np.float32)
        if hook.endswith("resid_post"):
            a[np.arange(n), 1, label_id] += 2.5
        a[positions < 0] = 0.0
        acts[hook] = a
    if nan_at is not None:
        acts[hooks[1]][nan_at[0], 2, nan_at[1]] = np.nan
    if model_correct is None:
        model_correct = ~(acts[hooks[2]][:, 1, 5] > 0.8)
    act_path, code_path = tmp / "heldout_seen.h5", tmp / "codes_heldout_seen.h5"
    with h5py.File(act_path, "w") as h5:
        h5.create_dataset("tokens", data=rng.integers(3, 50, size=(n, 8)).astype(np.int32))
        h5.create_dataset("lengths", data=np.full(n, 8, np.int32))
        h5.create_dataset("positions", data=positions)
        for hook, a in acts.items():
            h5.create_dataset(f"acts/{hook}", data=a.astype(np.float16), chunks=(16, P, D_MODEL))
        h5.create_dataset("meta/label_id", data=label_id.astype(np.int64))
        h5.create_dataset("meta/label", data=np.array([LABELS[i] for i in label_id], dtype=object),
                          dtype=h5py.string_dtype("utf-8"))
        h5.create_dataset("meta/template", data=np.array(["t0"] * n, dtype=object),
                          dtype=h5py.string_dtype("utf-8"))
        h5.create_dataset("meta/model_correct", data=np.asarray(model_correct).astype(np.int64))
        h5.attrs.update(provenance="{}", hooks=json.dumps(hooks), position_spec=json.dumps({}),
                        position_names=json.dumps(POSITIONS), pad_token_id=0, bos_token_id=1,
                        model_dir="model")
    enc = np.zeros((D_MODEL, D_SAE), np.float32)
    enc[np.arange(D_MODEL), np.arange(D_MODEL)] = 1.0  # feature f reads dim f (f < 8)
    with h5py.File(code_path, "w") as h5:
        sae_hooks = [h for h in hooks if h.endswith("resid_post")]
        for hook in sae_hooks:
            flat = acts[hook].astype(np.float16).astype(np.float32).reshape(n * P, D_MODEL)
            codes = np.maximum(np.nan_to_num(flat) @ enc - 0.5, 0.0)
            valid = (positions >= 0).reshape(-1)
            codes[~valid] = 0.0
            indptr = np.concatenate([[0], np.cumsum((codes > 0).sum(1))]).astype(np.int64)
            rows, cols = np.nonzero(codes > 0)
            g = h5.create_group(f"codes/{hook}")
            g.create_dataset("indptr", data=indptr)
            g.create_dataset("indices", data=cols.astype(np.int32))
            g.create_dataset("values", data=codes[rows, cols].astype(np.float32))
            g.create_dataset("row_valid", data=valid)
            g.attrs.update(d_sae=D_SAE, n_prompts=n, n_positions=P, sae_source="toy")
            for stat in ("firing_frequency", "mean_activation", "mean_active", "max_activation"):
                h5.create_dataset(f"stats/{hook}/{stat}", data=np.zeros(D_SAE))
        h5.attrs.update(provenance="{}", hooks=json.dumps(sae_hooks),
                        position_names=json.dumps(POSITIONS))
    return act_path, code_path


@pytest.fixture
def toy(tmp_path: Path) -> tuple[Path, Path]:
    return write_toy_files(tmp_path)


def _acts(path: Path, hook: str) -> np.ndarray:
    with h5py.File(path, "r") as h5:
        return h5[f"acts/{hook}"][()].astype(np.float32)


def test_hidden_to_concept_concatenates_layers_and_maps_rows(toy):
    act, _ = toy
    ds = build_probe_dataset({"name": "hc", "strategy": "hidden-to-concept", "layers": "1-2",
                              "positions": ["first", "final"]}, act)
    # prompt 0 lacks 'first', so it is left out and sample_index says which rows remain
    assert ds.sample_index.tolist() == list(range(1, 60))
    assert ds.X.shape == (59, 4 * D_MODEL) and ds.meta["n_dropped"] == 1
    a1, a2 = _acts(act, "blocks.1.hook_resid_post"), _acts(act, "blocks.2.hook_resid_post")
    row = 7
    i = ds.sample_index[row]
    np.testing.assert_allclose(ds.X[row], np.concatenate([a1[i, 0], a1[i, 2], a2[i, 0], a2[i, 2]]))
    assert ds.columns["layer"].tolist() == [1] * 16 + [2] * 16
    assert ds.columns["position"].tolist() == ([0] * 8 + [1] * 8) * 2
    # the default target is the string column 'label', its classes in sorted order
    assert ds.class_names == sorted(LABELS) and ds.meta["target"] == {"column": "label"}
    in_sorted_order = np.array([sorted(LABELS).index(name) for name in LABELS])
    assert ds.y.tolist() == in_sorted_order[np.arange(1, 60) % 3].tolist()
    ordered = build_probe_dataset({"name": "hc", "strategy": "hidden-to-concept", "layers": "1-2",
                                   "positions": ["first", "final"],
                                   "target": {"column": "label", "classes": LABELS}}, act)
    assert ordered.class_names == LABELS and ordered.meta["class_values"] == LABELS
    assert ordered.y.tolist() == (np.arange(1, 60) % 3).tolist()


def test_default_position_is_final_only(toy):
    ds = build_probe_dataset({"name": "s", "strategy": "sae-to-concept", "layers": "0,2"}, toy[0],
                             toy[1])
    assert ds.positions == ["final"] and ds.X.shape == (60, 2 * D_SAE)
    assert ds.meta["input_kind"] == "sae" and ds.meta["hooks"] == [
        "blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]


def test_hidden_to_feature_target_is_that_feature(toy, caplog):
    act, codes = toy
    with caplog.at_level(logging.WARNING):
        ds = build_probe_dataset({"name": "hf", "strategy": "hidden-to-feature", "layers": "1",
                                  "positions": ["first", "mid"], "target": {"feature": 3}},
                                 act, codes)
    # the SAE encodes the probe's own input: the record and the log say so
    assert ds.meta["target"]["function_of_input"] is True
    assert "deterministic function of the input" in ds.meta["target"]["function_of_input_note"]
    assert "deterministic function of the input" in caplog.text
    from test_probing import FAST

    from saeflow.probe.fit import fit_probe
    from saeflow.probe.fit_files import probe_record

    assert probe_record(fit_probe(ds, FAST))["target_function_of_input"] is True
    # one row per valid (prompt, position): 59 at 'first', 60 at 'mid'
    assert ds.X.shape == (119, D_MODEL) and ds.target_kind == "continuous"
    a = _acts(act, "blocks.1.hook_resid_post")
    mid = ds.row_position == 1
    expect = np.maximum(a[ds.sample_index[mid], 1, 3] - 0.5, 0.0)
    np.testing.assert_allclose(ds.y[mid], expect, atol=1e-6)
    np.testing.assert_allclose(ds.X[mid], a[ds.sample_index[mid], 1])


@pytest.mark.parametrize("embed_hooks", [False, True])
def test_embedding_to_feature_reads_the_embedding(tmp_path, embed_hooks):
    act, codes = write_toy_files(tmp_path, embed_hooks=embed_hooks)
    ds = build_probe_dataset({"name": "ef", "strategy": "embedding-to-feature",
                              "target": {"layer": 2, "feature": 1}}, act, codes)
    if embed_hooks:
        expect = _acts(act, "hook_embed")[:, 2] + _acts(act, "hook_pos_embed")[:, 2]
    else:
        expect = _acts(act, "blocks.0.hook_resid_pre")[:, 2]
    np.testing.assert_allclose(ds.X, expect, rtol=1e-6)
    assert ds.meta["target"]["layer"] == 2 and ds.meta["input_kind"] == "embedding"
    assert ds.meta["target"]["function_of_input"] is False


def test_failure_target_is_wrong_answers(toy):
    act, codes = toy
    with h5py.File(act, "r") as h5:
        correct = h5["meta/model_correct"][()].astype(bool)
    ds = build_probe_dataset({"name": "sf", "strategy": "sae-to-failure", "layers": "1",
                              "positions": ["mid"]}, act, codes)
    assert ds.class_names == ["correct", "wrong"]
    np.testing.assert_array_equal(ds.y, (~correct).astype(int))
    flipped = build_probe_dataset({"name": "sf", "strategy": "sae-to-failure", "layers": "1",
                                   "positions": ["mid"]}, act, codes, model_correct=~correct)
    np.testing.assert_array_equal(flipped.y, correct.astype(int))


def test_roundtrip_keeps_data_and_metadata(toy, tmp_path):
    out = tmp_path / "probe" / "sc.h5"
    ds = make_probe_dataset_file({"name": "sc", "strategy": "sae-to-concept", "layers": "0-2",
                                  "positions": ["mid", "final"]}, *toy, out, options=FIVE_FOLDS)
    back = read_probe_dataset(out)
    assert ds.sparse and back.sparse  # SAE codes are written and read back as CSR
    np.testing.assert_array_equal(back.X.toarray(), ds.X.toarray())
    np.testing.assert_array_equal(back.sample_index, ds.sample_index)
    assert back.meta["layers"] == [0, 1, 2] and back.positions == ["mid", "final"]
    assert back.meta["input_dims"]["blocks.1.hook_resid_post@mid"] == D_SAE
    assert back.meta["strategy"] == "sae-to-concept" and back.meta["n_samples"] == 60
    assert back.meta["prompt_set"] == "heldout_seen" and back.class_names == sorted(LABELS)


@pytest.mark.parametrize("spec, match", [
    ({"strategy": "hidden-to-feature", "layers": "1", "target": {"feature": 12}},
     "beyond the SAE width"),
    ({"strategy": "hidden-to-concept", "layers": "0-5"}, r"'0-5'.*not available"),
    ({"strategy": "hidden-to-concept", "layers": "2-1"}, "reversed"),
    ({"strategy": "hidden-to-concept", "layers": "1", "positions": ["last"]}, "positions"),
    ({"strategy": "hidden-to-feature", "layers": "0-1", "target": {"feature": 1}},
     "exactly one layer"),
    ({"strategy": "probe-everything", "layers": "1"}, "unknown strategy"),
])
def test_bad_specs_name_the_cause_and_write_nothing(toy, tmp_path, spec, match):
    out = tmp_path / "out.h5"
    with pytest.raises(InputError, match=match) as err:
        make_probe_dataset_file({"name": "bad", **spec}, *toy, out)
    assert "\n" not in str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".out.h5*"))


def test_nan_in_inputs_is_an_error(tmp_path):
    act, codes = write_toy_files(tmp_path, nan_at=(4, 2))
    out = tmp_path / "x.h5"
    with pytest.raises(InputError, match=r"^nanset: X: .*NaN.*prompt 4"):
        make_probe_dataset_file({"name": "nanset", "strategy": "hidden-to-concept",
                                 "layers": "0"}, act, codes, out)
    assert not out.exists()


def test_empty_class_is_an_error(tmp_path):
    act, codes = write_toy_files(tmp_path, model_correct=np.ones(60, bool))
    with pytest.raises(InputError, match=r"meta/model_correct: dataset 'allright'.*'wrong'"):
        build_probe_dataset({"name": "allright", "strategy": "sae-to-failure", "layers": "1"},
                            act, codes)
    with pytest.raises(InputError, match=r"empty class.*'9'"):
        build_probe_dataset({"name": "c", "strategy": "hidden-to-concept", "layers": "1",
                             "target": {"column": "label_id", "classes": [0, 1, 9]}}, act)
    # an order is a vocabulary: a class this prompt set lacks is skipped, an unlisted one is not
    ds = build_probe_dataset({"name": "c", "strategy": "hidden-to-concept", "layers": "1",
                              "target": {"column": "label_id", "order": [2, 9, 0, 1]}}, act)
    assert ds.meta["class_values"] == [2, 0, 1]
    with pytest.raises(InputError, match=r"target.order: meta/label_id holds \[2\]"):
        build_probe_dataset({"name": "c", "strategy": "hidden-to-concept", "layers": "1",
                             "target": {"column": "label_id", "order": [0, 1]}}, act)


def test_too_few_samples_for_folds_is_an_error(tmp_path):
    labels = np.array([0] * 20 + [1] * 3)
    act, codes = write_toy_files(tmp_path, n=23, labels=labels)
    with pytest.raises(InputError, match=r"'TypeError' has 3 sample\(s\), fewer than the 5"):
        build_probe_dataset({"name": "few", "strategy": "hidden-to-concept", "layers": "1"},
                            act, options=FIVE_FOLDS)
    # with 3 folds the same data is fine
    assert build_probe_dataset({"name": "few", "strategy": "hidden-to-concept", "layers": "1"},
                               act, options=BuildOptions(n_folds=3)).X.shape[0] == 23


# ---------------------------------------------------------------------------- per-prompt positions

ALL_P = 7  # token columns of a `positions: all` file


def write_all_files(tmp: Path, n: int = 40, seed: int = 3) -> tuple[Path, Path, dict]:
    """Activation + code files as extraction writes them with ``positions: all``: column =
    token index, prompts of different lengths (4..7), ``meta/pos_snippet_end`` per prompt
    (prompt 1's is -1, prompt 2's lies beyond its length: both absent). Activations encode
    (prompt, token) so every gathered value can be checked; codes: feature f reads dim f."""
    rng = np.random.default_rng(seed)
    lengths = 4 + np.arange(n) % 4
    lengths[0] = ALL_P
    positions = np.where(np.arange(ALL_P)[None] < lengths[:, None], np.arange(ALL_P), -1)
    snippet_end = lengths - 3
    snippet_end[1], snippet_end[2] = -1, lengths[2] + 1
    label_id = np.arange(n) % 2
    hooks = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    acts = {}
    for k, hook in enumerate(hooks):
        a = rng.normal(size=(n, ALL_P, D_MODEL)).astype(np.float32)
        a[:, :, 7] = np.arange(n)[:, None] + 0.25 * np.arange(ALL_P)[None] + 100 * k
        a[positions < 0] = 0.0
        acts[hook] = a.astype(np.float16).astype(np.float32)
    act_path, code_path = tmp / "heldout_unseen.h5", tmp / "codes_all.h5"
    with h5py.File(act_path, "w") as h5:
        h5.create_dataset("tokens", data=rng.integers(3, 50, size=(n, ALL_P)).astype(np.int32))
        h5.create_dataset("lengths", data=lengths.astype(np.int32))
        h5.create_dataset("positions", data=positions.astype(np.int32))
        for hook, a in acts.items():
            h5.create_dataset(f"acts/{hook}", data=a.astype(np.float16), chunks=(4, ALL_P, D_MODEL))
        h5.create_dataset("meta/label_id", data=label_id.astype(np.int64))
        h5.create_dataset("meta/label", data=np.array(["NoError", "TypeError"], dtype=object)[label_id],
                          dtype=h5py.string_dtype())
        h5.create_dataset("meta/pos_snippet_end", data=snippet_end.astype(np.int64))
        h5.create_dataset("meta/pos_final", data=(lengths - 1).astype(np.int64))
        h5.create_dataset("meta/model_correct", data=(np.arange(n) % 3 > 0).astype(np.int64))
        h5.attrs.update(provenance="{}", hooks=json.dumps(hooks), position_spec=json.dumps("all"),
                        position_names=json.dumps([str(p) for p in range(ALL_P)]),
                        pad_token_id=0, bos_token_id=1, model_dir="model")
    freq = np.zeros(D_SAE)
    freq[5] = 0.9
    with h5py.File(code_path, "w") as h5:
        sae_hooks = hooks[1:]
        for hook in sae_hooks:
            flat = acts[hook].reshape(n * ALL_P, D_MODEL)
            codes = np.zeros((n * ALL_P, D_SAE), np.float32)
            codes[:, :D_MODEL] = np.abs(flat) + 0.01  # dense and positive: every value checkable
            valid = (positions >= 0).reshape(-1)
            codes[~valid] = 0.0
            indptr = np.concatenate([[0], np.cumsum((codes > 0).sum(1))]).astype(np.int64)
            rows, cols = np.nonzero(codes > 0)
            g = h5.create_group(f"codes/{hook}")
            g.create_dataset("indptr", data=indptr)
            g.create_dataset("indices", data=cols.astype(np.int32))
            g.create_dataset("values", data=codes[rows, cols].astype(np.float32))
            g.create_dataset("row_valid", data=valid)
            g.attrs.update(d_sae=D_SAE, n_prompts=n, n_positions=ALL_P, sae_source="toy")
            h5.create_dataset(f"stats/{hook}/firing_frequency", data=freq)
        h5.attrs.update(provenance="{}", hooks=json.dumps(sae_hooks),
                        position_names=json.dumps([str(p) for p in range(ALL_P)]))
    return act_path, code_path, {"lengths": lengths, "snippet_end": snippet_end, "acts": acts}


def test_per_prompt_positions_gather_each_prompts_own_column(tmp_path, monkeypatch):
    import saeflow.probe.inputs as probe_inputs

    monkeypatch.setattr(probe_inputs, "READ_BYTES", 3 * ALL_P * D_MODEL * 2)  # chunked reads
    act, codes, truth = write_all_files(tmp_path)
    ds = build_probe_dataset({"name": "h", "strategy": "hidden-to-concept", "layers": "0-1",
                              "positions": ["final", -2, "snippet_end", "0"]}, act, codes)
    # prompts 1 (pos_snippet_end -1) and 2 (beyond its length) lack snippet_end: dropped, counted
    assert ds.sample_index.tolist() == [0, *range(3, 40)]
    assert ds.meta["n_dropped"] == 2 and ds.positions == ["final", "-2", "snippet_end", "0"]
    lengths, snip = truth["lengths"], truth["snippet_end"]
    for layer, hook in enumerate(["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]):
        a = truth["acts"][hook]
        for j, token in enumerate([lengths - 1, lengths - 2, snip, np.zeros_like(lengths)]):
            block = (ds.columns["layer"] == layer) & (ds.columns["position"] == j)
            i = ds.sample_index
            np.testing.assert_allclose(ds.X[:, block], a[i, token[i]])
    assert set(ds.meta["input_dims"]) == {f"{h}@{p}" for h in ("blocks.0.hook_resid_post",
                                                               "blocks.1.hook_resid_post")
                                          for p in ["final", "-2", "snippet_end", "0"]}


def test_per_prompt_positions_read_code_rows_i_times_p_plus_col(tmp_path):
    act, codes, truth = write_all_files(tmp_path)
    ds = build_probe_dataset({"name": "s", "strategy": "sae-to-failure", "layers": "1",
                              "positions": ["snippet_end", "final"]}, act, codes, options=TWO)
    i = ds.sample_index
    a = truth["acts"]["blocks.1.hook_resid_post"]
    for j, token in enumerate([truth["snippet_end"], truth["lengths"] - 1]):
        expect = np.zeros((i.size, D_SAE), np.float32)
        expect[:, :D_MODEL] = np.abs(a[i, token[i]]) + 0.01
        np.testing.assert_allclose(ds.X[:, ds.columns["position"] == j].toarray(), expect,
                                   rtol=1e-6)
    assert ds.meta["n_dropped"] == 2 and ds.class_names == ["correct", "wrong"]


def test_per_prompt_positions_in_feature_datasets_and_feature_auto(tmp_path):
    act, codes, truth = write_all_files(tmp_path)
    ds = build_probe_dataset({"name": "f", "strategy": "hidden-to-feature", "layers": "1",
                              "positions": ["final", "snippet_end", "-9"],
                              "target": {"feature": "auto"}}, act, codes)
    # auto = the most frequent feature in stats/{hook}/firing_frequency, recorded in the target
    assert ds.meta["target"]["feature"] == 5 and ds.meta["target"]["firing_frequency"] == 0.9
    assert "auto" in ds.meta["target"]["feature_rule"]
    # rows: 40 at final, 38 at snippet_end, none at -9 (every prompt is shorter): 42 dropped
    assert ds.X.shape == (78, D_MODEL) and ds.meta["n_dropped"] == 3 * 40 - 78
    a = truth["acts"]["blocks.1.hook_resid_post"]
    for j, token in enumerate([truth["lengths"] - 1, truth["snippet_end"]]):
        rows = ds.row_position == j
        i = ds.sample_index[rows]
        np.testing.assert_allclose(ds.X[rows], a[i, token[i]])
        np.testing.assert_allclose(ds.y[rows], np.abs(a[i, token[i], 5]) + 0.01, rtol=1e-6)
    emb = build_probe_dataset({"name": "e", "strategy": "embedding-to-feature",
                               "positions": ["final"], "target": {"layer": 1, "feature": "auto"}},
                              act, codes)
    i = emb.sample_index
    embedding = truth["acts"]["blocks.0.hook_resid_pre"]
    np.testing.assert_allclose(emb.X, embedding[i, truth["lengths"][i] - 1])
    assert emb.meta["target"]["feature"] == 5


def test_per_prompt_positions_need_an_all_file_or_a_known_name(tmp_path):
    act, codes, _ = write_all_files(tmp_path)
    with pytest.raises(InputError, match=r"unknown \['question_start'\].*meta/pos_x"):
        build_probe_dataset({"name": "x", "strategy": "hidden-to-concept", "layers": "1",
                             "positions": ["question_start"]}, act)
    (tmp_path / "fixed").mkdir()
    fixed, _ = write_toy_files(tmp_path / "fixed")
    # a file of named stored positions has no per-prompt columns: -2 is not resolvable there
    with pytest.raises(InputError, match=r"unknown \['-2'\]"):
        build_probe_dataset({"name": "x", "strategy": "hidden-to-concept", "layers": "1",
                             "positions": ["-2"]}, fixed)
