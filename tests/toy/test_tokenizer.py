from saeflow.core.prompts import encode_prompt
from saeflow.toy.corpus import ANSWERS
from saeflow.toy.world import classify_token, ground_truth, pair_difference_positions


def test_round_trip_is_exact(small_world, toy_tokenizer):
    for records in small_world.prompt_sets.values():
        for record in records:
            ids = toy_tokenizer.encode(record["text"] + record["answer"], add_special_tokens=False)
            assert toy_tokenizer.decode(ids) == record["text"] + record["answer"]


def test_every_answer_is_one_token(toy_tokenizer):
    ids = [toy_tokenizer.encode(a, add_special_tokens=False) for a in ANSWERS]
    assert all(len(i) == 1 for i in ids)
    assert len({i[0] for i in ids}) == len(ANSWERS)


def test_prompts_start_with_bos_and_positions_are_recorded(small_world, toy_tokenizer):
    record = small_world.prompt_sets["heldout_seen"][0]
    ids = encode_prompt(toy_tokenizer, record["text"])
    assert ids[0] == toy_tokenizer.bos_token_id
    assert record["pos_final"] == len(ids) - 1
    assert toy_tokenizer.decode(ids[record["pos_final"]]) == " a"
    assert record["pos_snippet_end"] < record["pos_final"]


def test_pairs_have_equal_length_and_differ_at_recorded_positions(small_world, toy_tokenizer):
    diffs = pair_difference_positions(toy_tokenizer, small_world.prompt_sets["pairs"])
    pairs = small_world.prompt_sets["pairs"]
    for d, clean, corrupted in zip(diffs, pairs[0::2], pairs[1::2]):
        a, b = encode_prompt(toy_tokenizer, clean["text"]), encode_prompt(toy_tokenizer, corrupted["text"])
        assert len(a) == len(b) == d["length"]
        assert d["diff_positions"] and all(a[i] != b[i] for i in d["diff_positions"])
        assert all(a[i] == b[i] for i in range(len(a)) if i not in d["diff_positions"])


def test_ground_truth_token_classes(toy_tokenizer):
    truth = ground_truth(toy_tokenizer, [])
    classes = truth["token_class_of_id"]
    assert len(classes) == len(toy_tokenizer)
    assert classes[toy_tokenizer.bos_token_id] == "special"
    assert classes[toy_tokenizer.encode(" 7", add_special_tokens=False)[0]] == "digit"
    assert classify_token('"') == "quote" and classify_token(" +") == "operator"
    assert set(truth["answer_token_ids"]) == {a.strip() for a in ANSWERS}
