"""Layer specs (``"0-5"``, ``"2,5,10"``, ``"0-2,10,15-17"``) and per-layer dataset expansion.

Pure Python with no heavy imports, so the Snakefile may import it while building the DAG.
A spec is parsed to a sorted, de-duplicated list of layer indices; a reversed range, a
non-number or a layer the model lacks is an :class:`~saeflow.core.errors.InputError` that quotes
the spec.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from saeflow.core.errors import InputError

_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")
_SINGLE = re.compile(r"^\d+$")


def parse_layer_spec(spec: str | int | Sequence[int], available: Iterable[int] | None = None,
                     source: str = "config", field: str = "layers") -> list[int]:
    """Parse a layer spec into sorted unique layer indices.

    ``spec`` is a string of comma-separated items, each ``a`` or ``a-b`` (inclusive, a <= b);
    YAML may also hand over a bare int or a list of ints/strings, accepted alike.
    ``available`` (e.g. the layers present in an activation file) makes any other layer an
    error. Raises ``InputError(source, field, ...)`` quoting the spec.
    """
    items = _spec_items(spec, source, field)
    layers: set[int] = set()
    for item in items:
        if _SINGLE.match(item):
            layers.add(int(item))
            continue
        match = _RANGE.match(item)
        if match is None:
            raise InputError(source, field, f"spec {spec!r}: {item!r} is not a layer number or "
                             "a range a-b")
        lo, hi = int(match.group(1)), int(match.group(2))
        if lo > hi:
            raise InputError(source, field, f"spec {spec!r}: range {item!r} is reversed")
        layers.update(range(lo, hi + 1))
    result = sorted(layers)
    if available is not None:
        have = set(available)
        missing = [layer for layer in result if layer not in have]
        if missing:
            raise InputError(source, field, f"spec {spec!r}: layer(s) {missing} not available "
                             f"(have {format_layer_spec(sorted(have)) or 'none'})")
    return result


def _spec_items(spec: str | int | Sequence[int], source: str, field: str) -> list[str]:
    """Split a spec into stripped item strings; empty specs and empty items are errors."""
    if isinstance(spec, bool):  # bool is an int subclass; True is not layer 1
        raise InputError(source, field, f"spec {spec!r}: not a layer spec")
    if isinstance(spec, int):
        items = [str(spec)]
    elif isinstance(spec, str):
        items = [part.strip() for part in spec.split(",")]
    elif isinstance(spec, Sequence):
        items = []
        for part in spec:
            if isinstance(part, bool) or not isinstance(part, (int, str)):
                raise InputError(source, field, f"spec {spec!r}: {part!r} is not a layer number")
            items.extend(p.strip() for p in str(part).split(","))
    else:
        raise InputError(source, field, f"spec {spec!r}: not a layer spec")
    if not items or any(item == "" for item in items):
        raise InputError(source, field, f"spec {spec!r}: empty item")
    return items


def format_layer_spec(layers: Sequence[int]) -> str:
    """The shortest spec for ``layers`` (sorted unique ints): ``[0,1,2,5]`` -> ``"0-2,5"``."""
    parts: list[str] = []
    run: list[int] = []
    for layer in sorted(set(layers)):
        if run and layer != run[-1] + 1:
            parts.append(_run_text(run))
            run = []
        run.append(layer)
    if run:
        parts.append(_run_text(run))
    return ",".join(parts)


def _run_text(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


def expand_per_layer(datasets: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Expand dataset definitions with ``per_layer: true`` into one definition per layer.

    ``{"name": "h", "layers": "0-2", "per_layer": True, ...}`` becomes ``h_L0``, ``h_L1``,
    ``h_L2``, each with ``layers: "<l>"``; this is how "probe accuracy by layer" is set up.
    Only the spec's syntax is checked here (the DAG is built before any file exists); the
    layers' existence is checked when the dataset is built. Names must be unique.
    """
    out: list[dict[str, Any]] = []
    for index, entry in enumerate(datasets):
        if not isinstance(entry, dict) or "name" not in entry or "strategy" not in entry:
            raise InputError("config", f"probe.datasets[{index}]",
                             "each dataset needs at least 'name' and 'strategy'")
        if entry.get("per_layer"):
            layers = parse_layer_spec(entry.get("layers", ""), source="config",
                                      field=f"probe.datasets[{entry['name']}].layers")
            for layer in layers:
                item = {k: v for k, v in entry.items() if k != "per_layer"}
                item.update(name=f"{entry['name']}_L{layer}", layers=str(layer),
                            group=entry["name"])
                out.append(item)
        else:
            out.append(dict(entry))
    names = [item["name"] for item in out]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InputError("config", "probe.datasets", f"duplicate dataset names {duplicates}")
    return out
