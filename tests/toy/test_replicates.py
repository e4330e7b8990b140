"""Spread over seeds: every seed of a config shifted, headline numbers summarised, the table
the docs quote and its parse."""

import math

import pytest

from saeflow.toy.replicates import parse_table, shift_seeds, summarise, table


def test_every_seed_of_the_config_moves_and_nothing_else():
    config = {"seed": 0, "world": {"n_train": 10}, "labels": {"sample": {"n": 3, "seed": 42}},
              "probe": {"datasets": [{"name": "d", "seed": 7}], "cv": {"seed": 0}},
              "flags": {"seed": True}}
    shifted = shift_seeds(config, 3)
    assert shifted == {"seed": 3, "world": {"n_train": 10},
                       "labels": {"sample": {"n": 3, "seed": 45}},
                       "probe": {"datasets": [{"name": "d", "seed": 10}], "cv": {"seed": 3}},
                       "flags": {"seed": True}}  # a boolean is not a seed
    assert shift_seeds(config, 0) == config and config["seed"] == 0  # a copy


def test_numbers_get_mean_sd_and_range_and_claims_their_frequency():
    runs = [{"acc": 0.5, "best": "atp", "holds": True},
            {"acc": 0.7, "best": "ig", "holds": True},
            {"acc": 0.9, "best": "atp", "holds": True, "extra": 1.0}]
    s = summarise(runs, [0, 1, 2])
    acc = s["numbers"]["acc"]
    assert acc["mean"] == pytest.approx(0.7) and acc["sd"] == pytest.approx(0.2)
    assert (acc["min"], acc["max"], acc["n"]) == (0.5, 0.9, 3)
    assert s["numbers"]["extra"]["n"] == 1 and s["numbers"]["extra"]["sd"] is None
    assert s["claims"]["best"]["counts"] == {"atp": 2, "ig": 1}
    assert not s["claims"]["best"]["holds_in_every_replicate"]
    assert s["claims"]["holds"]["holds_in_every_replicate"]
    text = table(s)
    assert "| best | atp | atp: 2 of 3, ig: 1 of 3 |" in text
    assert "| holds | True | True: 3 of 3 (every replicate) |" in text
    parsed = parse_table(text)
    assert parsed["acc"] == (0.5, 0.5, 0.9) and parsed["extra"] == (None, 1.0, 1.0)


def test_a_run_outside_the_range_is_seen():
    """What the doc test relies on: a number of another run compared with the parsed range."""
    s = summarise([{"x": 1.0}, {"x": 2.0}], [0, 1])
    this, lo, hi = parse_table(table(s))["x"]
    assert lo <= this <= hi and not lo <= 2.5 <= hi and not math.isnan(this)
