"""Layer specs: parsing, errors that quote the spec, compact formatting, per-layer expansion."""

from __future__ import annotations

import pytest

from saeflow.core.errors import InputError
from saeflow.core.layerspec import expand_per_layer, format_layer_spec, parse_layer_spec


@pytest.mark.parametrize("spec, expected", [
    ("0-5", [0, 1, 2, 3, 4, 5]),
    ("2,5,10", [2, 5, 10]),
    ("0-2,10,15-17", [0, 1, 2, 10, 15, 16, 17]),
    ("10, 2 ,2,0-1", [0, 1, 2, 10]),  # sorted and de-duplicated
    ("3-3", [3]),
    (4, [4]),
    ([7, "1-2"], [1, 2, 7]),
])
def test_parse(spec, expected):
    assert parse_layer_spec(spec) == expected


@pytest.mark.parametrize("spec, match", [
    ("5-2", "reversed"),
    ("a", "not a layer number"),
    ("1,,2", "empty item"),
    ("", "empty item"),
    ("-1", "not a layer number"),
    ("1.5", "not a layer number"),
    (True, "not a layer spec"),
])
def test_bad_specs_quote_the_spec(spec, match):
    with pytest.raises(InputError, match=match) as err:
        parse_layer_spec(spec, source="ds", field="layers")
    assert str(err.value).startswith("ds: layers: spec ")
    assert repr(spec) in str(err.value)


def test_layer_the_model_lacks():
    assert parse_layer_spec("0-2", available=range(4)) == [0, 1, 2]
    with pytest.raises(InputError, match=r"spec '2-5': layer\(s\) \[4, 5\] not available "
                                          r"\(have 0-3\)"):
        parse_layer_spec("2-5", available=range(4))


def test_format_roundtrips():
    for layers in ([0, 1, 2, 5], [3], [0, 2, 4], list(range(12))):
        assert parse_layer_spec(format_layer_spec(layers)) == layers
    assert format_layer_spec([5, 0, 1, 2]) == "0-2,5"


def test_expand_per_layer():
    out = expand_per_layer([
        {"name": "h", "strategy": "hidden-to-concept", "layers": "0-1,3", "per_layer": True},
        {"name": "s", "strategy": "sae-to-failure", "layers": "0-3"},
    ])
    assert [d["name"] for d in out] == ["h_L0", "h_L1", "h_L3", "s"]
    assert out[2]["layers"] == "3" and out[2]["group"] == "h" and "per_layer" not in out[2]
    with pytest.raises(InputError, match="duplicate"):
        expand_per_layer([{"name": "h_L0", "strategy": "x", "layers": "0"},
                          {"name": "h", "strategy": "x", "layers": "0", "per_layer": True}])
    with pytest.raises(InputError, match="name"):
        expand_per_layer([{"strategy": "x"}])
