import dataclasses
import json

import h5py
import numpy as np
import pytest
import torch

from saeflow.core.errors import InputError
from saeflow.extract import Storage, extract_to_hdf5, token_positions
from saeflow.core.prompts import encode_prompt

HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"]


def test_positions_spec():
    records = [{"pos_snippet_end": 2}, {"pos_snippet_end": 1}]
    lengths = np.array([5, 3])
    grid, names = token_positions("all", records, lengths)
    assert grid.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, -1, -1]] and names == list("01234")
    grid, names = token_positions("final", records, lengths)
    assert grid.tolist() == [[4], [2]] and names == ["final"]
    grid, names = token_positions(["snippet_end", -2, 0, 2], records, lengths)
    assert grid.tolist() == [[2, 3, 0, 2], [1, 1, 0, 2]]
    with pytest.raises(InputError, match="pos_missing"):
        token_positions(["missing"], records, lengths, "p.jsonl")


@pytest.mark.parametrize("spec, records, line", [
    # an integer offset past the end of a prompt (BOS + 2 tokens: 0..2)
    ([0, 4], [{}, {}], "p.jsonl: line 2: extraction.positions[1] = 4 is token 4, past the end of "
     "this prompt's 3 tokens (0 to 2, BOS = 0); 1 of 2 prompts are too short for it: give "
     "positions inside every prompt"),
    # a negative offset before the start
    (["final", -4], [{}, {}], "p.jsonl: line 2: extraction.positions[1] = -4 is token -1, before "
     "the start of this prompt's 3 tokens (0 to 2, BOS = 0); 1 of 2 prompts are too short for "
     "it: give positions inside every prompt"),
    # a recorded named position outside its prompt
    (["x"], [{"pos_x": 1}, {"pos_x": 3}], "p.jsonl: line 2.pos_x: token 3 is past the end of this "
     "prompt's 3 tokens (0 to 2, BOS = 0) (extraction.positions[0] = 'x'); 1 of 2 prompts record "
     "it outside: write pos_x: null where it is absent by design"),
    (["x"], [{"pos_x": 1}, {"pos_x": "2"}], "p.jsonl: line 2.pos_x: '2' is not a token index (an "
     "integer, or null if absent)"),
    (["x"], [{"pos_x": 1}, {}], "p.jsonl: line 2.pos_x: named position 'x' is not recorded "
     "(extraction.positions names it; write pos_x: null where it is absent by design)"),
])
def test_a_position_outside_a_prompt_is_refused(spec, records, line):
    """Never stored as absent (-1, a zero row) without a word: the file, line and key."""
    with pytest.raises(InputError) as err:
        token_positions(spec, records, np.array([5, 3]), "p.jsonl")
    assert str(err.value) == line


@pytest.mark.parametrize("spec", [["final", "snippet_end"], "all"])
def test_a_position_absent_by_design_is_counted_in_the_log_and_the_file(
        tiny_model, small_world, tmp_path, caplog, spec):
    """pos_x: null: stored absent (-1; with ``all``, meta/pos_x -1, which probes resolve),
    counted in the log and in the file's absent_positions attribute."""
    records = [dict(r) for r in small_world.prompt_sets["pairs"][:6]]
    for r in records[:2]:
        r["pos_snippet_end"] = None
    out = tmp_path / "acts.h5"
    extract_to_hdf5(tiny_model, records, HOOKS[1:], out, Storage(positions=spec, batch_size=4),
                    source="p.jsonl")
    with h5py.File(out) as f:
        assert json.loads(f.attrs["absent_positions"]) == {"snippet_end": 2}
        assert f["meta/pos_snippet_end"][:3].tolist() == [-1, -1, records[2]["pos_snippet_end"]]
        if spec != "all":
            assert f["positions"][:2, 1].tolist() == [-1, -1] and (f["positions"][2:] >= 0).all()
    assert "p.jsonl: 2 of 6 prompts lack position 'snippet_end' (pos_snippet_end: null)" \
        in caplog.text


def test_stored_activations_equal_the_models(tiny_model, small_world, tmp_path):
    records = small_world.prompt_sets["heldout_seen"][:20]
    out = tmp_path / "acts.h5"
    summary = extract_to_hdf5(tiny_model, records, HOOKS, out, Storage(dtype="float32", batch_size=7),
                              config={"extraction": {"hooks": HOOKS}})
    assert summary["n_prompts"] == 20
    with h5py.File(out) as f:
        lengths, positions = f["lengths"][()], f["positions"][()]
        assert f["acts/blocks.1.hook_resid_post"].shape == (20, lengths.max(), 32)
        assert json.loads(f.attrs["provenance"])["config"]["extraction"]["hooks"] == HOOKS
        assert "torch" in json.loads(f.attrs["provenance"])["versions"]
        for i in (0, 13):
            ids = encode_prompt(tiny_model.tokenizer, records[i]["text"])
            assert f["tokens"][i, : len(ids)].tolist() == ids
            _, cache = tiny_model.run_with_cache(torch.tensor([ids]))
            for hook in HOOKS:
                stored = f[f"acts/{hook}"][i]
                np.testing.assert_allclose(stored[: len(ids)], cache[hook][0].numpy(), atol=1e-5)
                assert not stored[len(ids):].any()
            assert (positions[i, len(ids):] == -1).all()
        labels = [s.decode() for s in f["meta/label"][()]]
        assert labels == [r["label"] for r in records]
        assert f["meta/model_correct"].dtype == bool


def test_fp16_storage_and_final_position(tiny_model, small_world, tmp_path):
    records = small_world.prompt_sets["pairs"]
    out = tmp_path / "final.h5"
    extract_to_hdf5(tiny_model, records, HOOKS[1:], out, Storage(positions="final", batch_size=5))
    with h5py.File(out) as f:
        acts = f[f"acts/{HOOKS[1]}"]
        assert acts.dtype == np.float16 and acts.shape == (len(records), 1, 32)
        ids = encode_prompt(tiny_model.tokenizer, records[3]["text"])
        _, cache = tiny_model.run_with_cache(torch.tensor([ids]))
        np.testing.assert_allclose(acts[3, 0], cache[HOOKS[1]][0, -1].numpy(), rtol=2e-3, atol=2e-3)
        # predictions come from the final position's logits
        logits = tiny_model(torch.tensor([ids]))[0, -1]
        assert f["meta/predicted_token_id"][3] == int(logits.argmax())


def test_unknown_hook_fails_without_output(tiny_model, small_world, tmp_path):
    out = tmp_path / "bad.h5"
    with pytest.raises(InputError, match="blocks.9.hook_resid_post"):
        extract_to_hdf5(tiny_model, small_world.prompt_sets["pairs"], ["blocks.9.hook_resid_post"], out)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_multi_token_answer_is_an_error_naming_the_record(tiny_model, small_world, tmp_path):
    records = [dict(r) for r in small_world.prompt_sets["pairs"][:4]]
    records[2]["answer"] = " TypeError TypeError"
    out = tmp_path / "bad.h5"
    with pytest.raises(InputError, match=r"line 3\.answer"):
        extract_to_hdf5(tiny_model, records, HOOKS, out, source="pairs.jsonl")
    assert not out.exists()


def test_extract_stage_checks_prompts_before_loading_the_model(tmp_path, monkeypatch):
    """Bad prompts fail with their line before the model (maybe a hub download) is loaded."""
    import saeflow.core.models as models
    from saeflow.core.bundle import ModelSAEs
    from saeflow.extract import extract_stage

    def no_model(*args, **kwargs):
        raise AssertionError("model loaded before the prompt set was checked")

    monkeypatch.setattr(models, "load_model", no_model)
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text('{"text": "fine"}\n{"text": ""}\n')
    with pytest.raises(InputError, match="line 2"):
        extract_stage(ModelSAEs({"source": "pretrained", "name": "gpt2"}), prompts,
                      {"hooks": HOOKS}, "cpu", tmp_path / "acts.h5")
    assert not (tmp_path / "acts.h5").exists()


def test_predictions_and_answer_logprobs_are_the_models_own_with_a_logit_soft_cap(
        tiny_model, small_world, tmp_path):
    """A gemma-2-style logit soft cap changes log-probabilities: extraction applies it as
    ``model(tokens)`` does."""
    from transformer_lens import HookedTransformer

    # a cap of 0.5: small enough to change every log-probability
    cfg = dataclasses.replace(tiny_model.cfg, output_logits_soft_cap=0.5)
    capped = HookedTransformer(cfg, tokenizer=tiny_model.tokenizer, default_padding_side="right")
    capped.load_state_dict(tiny_model.state_dict())
    records = small_world.prompt_sets["pairs"][:6]
    out = tmp_path / "capped.h5"
    extract_to_hdf5(capped, records, HOOKS[1:], out, Storage(positions="final", batch_size=4))
    with h5py.File(out) as f:
        for i, record in enumerate(records):
            ids = encode_prompt(capped.tokenizer, record["text"])
            with torch.no_grad():
                logprobs = capped(torch.tensor([ids]))[0, -1].log_softmax(-1)
            answer = f["meta/answer_token_id"][i]
            assert f["meta/predicted_token_id"][i] == int(logprobs.argmax())
            np.testing.assert_allclose(f["meta/answer_logprob"][i], float(logprobs[answer]),
                                       rtol=1e-5, atol=1e-6)


def test_without_answers_no_logits_are_computed(tiny_model, small_world, tmp_path, monkeypatch):
    """Prompts without answers: no consumer reads a prediction, so the final position is
    never unembedded (at gemma-2's vocabulary that is a quarter of a 2-layer forward); the
    activations are those of the same prompts with answers."""
    import saeflow.extract as extract

    records = small_world.prompt_sets["pairs"][:6]
    bare = [{k: v for k, v in r.items() if k != "answer"} for r in records]
    extract_to_hdf5(tiny_model, records, HOOKS[1:], tmp_path / "answered.h5", Storage(batch_size=4))
    calls = []
    monkeypatch.setattr(extract, "final_logits", lambda *a: calls.append(a))
    extract_to_hdf5(tiny_model, bare, HOOKS[1:], tmp_path / "bare.h5", Storage(batch_size=4))
    assert calls == []
    with h5py.File(tmp_path / "answered.h5") as a, h5py.File(tmp_path / "bare.h5") as b:
        assert "predicted_token_id" in a["meta"] and "predicted_token_id" not in b["meta"]
        np.testing.assert_array_equal(a[f"acts/{HOOKS[1]}"][:], b[f"acts/{HOOKS[1]}"][:])


def test_partial_answers_are_named_and_refused_where_needed(tiny_model, small_world, tmp_path,
                                                            caplog):
    """Some prompts without an answer: extraction stores no answers and says which lines lack
    one; the SAE evaluation and any consumer that needs answers refuse, naming those lines."""
    from saeflow.core.bundle import ModelSAEs
    from saeflow.evaluate import evaluate_saes_stage
    from saeflow.formats.activations import require_stored_answers

    records = [dict(r) for r in small_world.prompt_sets["pairs"][:6]]
    del records[1]["answer"], records[4]["answer"]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "acts.h5"
    extract_to_hdf5(tiny_model, records, HOOKS[1:], out, Storage(batch_size=4), source=str(prompts))
    assert f"{prompts}: 2 of 6 prompts have no answer (lines 2, 5)" in caplog.text
    with h5py.File(out) as f:
        assert not {"model_correct", "answer_logprob", "predicted_token_id"} & set(f["meta"])
        with pytest.raises(InputError) as err:
            require_stored_answers(f, out, "labels.ablation eval 'answer'")
    assert str(err.value) == (f"{prompts}: line 2.answer: missing: labels.ablation eval 'answer' "
                              "needs an answer in every prompt and 2 of 6 prompts lack one "
                              f"(lines without: 2, 5; extracted into {out})")
    with pytest.raises(InputError) as err:  # before any model is loaded
        evaluate_saes_stage(ModelSAEs({"source": "pretrained", "name": "unused"}), prompts, "cpu",
                            tmp_path / "metrics.json")
    assert str(err.value) == (f"{prompts}: line 2.answer: missing: the SAE evaluation's answer "
                              "loss needs an answer in every prompt, or none, and 2 of 6 prompts "
                              "lack one (4 have one; lines without: 2, 5)")
    assert not (tmp_path / "metrics.json").exists()
