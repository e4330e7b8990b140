import collections

import pytest

from saeflow.toy.corpus import (
    ANSWERS, LABELS, TEMPLATES, execute_label, sample_examples, training_templates,
)
from saeflow.toy.world import WorldConfig, build_prompt_sets


@pytest.mark.parametrize("snippet, label", [
    ('print("price: " + 130)', "TypeError"),
    ('print("price: " + "130")', "NoError"),
    ('print("price: " + 130(', "SyntaxError"),
    ("x = 5 / 0", "ZeroDivisionError"),
    ("x = [1, 2]; print(x[2])", "IndexError"),
    ("x = 1; print(y + 1)", "NameError"),
    ("x = compute(3)", "NameError"),
])
def test_labels_come_from_execution(snippet, label):
    assert execute_label(snippet) == label


def test_every_sampled_label_matches_a_fresh_execution(small_world):
    for records in small_world.prompt_sets.values():
        for record in records:
            assert execute_label(record["snippet"]) == record["label"]
            assert record["answer"] == " " + record["label"]
            assert LABELS[record["label_id"]] == record["label"]


def test_templates_with_random_slots_give_several_labels():
    import random

    examples = sample_examples(["divide", "index_list", "maybe_undefined"], 300, random.Random(1))
    per_template = collections.defaultdict(set)
    for e in examples:
        per_template[e.template].add(e.label)
    assert all(len(labels) == 2 for labels in per_template.values())


def test_unseen_templates_never_reach_training(small_world):
    unseen = set(WorldConfig.defaults().unseen_templates)
    assert not {r["template"] for r in small_world.prompt_sets["train"]} & unseen
    assert {r["template"] for r in small_world.prompt_sets["heldout_unseen"]} <= unseen
    assert set(training_templates(tuple(unseen))) == set(TEMPLATES) - unseen


def test_pairs_flip_type_error_into_syntax_error(small_world):
    pairs = small_world.prompt_sets["pairs"]
    for clean, corrupted in zip(pairs[0::2], pairs[1::2]):
        assert (clean["role"], corrupted["role"]) == ("clean", "corrupted")
        assert clean["pair_id"] == corrupted["pair_id"]
        assert (clean["label"], corrupted["label"]) == ("TypeError", "SyntaxError")


def test_world_is_deterministic():
    a = build_prompt_sets(WorldConfig.defaults(n_train=50, n_heldout=10, n_pairs=4, seed=3))
    b = build_prompt_sets(WorldConfig.defaults(n_train=50, n_heldout=10, n_pairs=4, seed=3))
    c = build_prompt_sets(WorldConfig.defaults(n_train=50, n_heldout=10, n_pairs=4, seed=4))
    assert a.prompt_sets == b.prompt_sets
    assert a.prompt_sets != c.prompt_sets


def test_unknown_unseen_template_is_rejected():
    with pytest.raises(KeyError, match="nonsense"):
        training_templates(("nonsense",))


def test_answers_cover_the_labels():
    assert [a.strip() for a in ANSWERS] == list(LABELS)
