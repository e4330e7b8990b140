"""Neuronpedia explanation exports: batches of ``*.jsonl`` / ``*.jsonl.gz`` rows, each
``{modelId, layer (the source id), index, description, explanationModelName, ...}``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saeflow.core.errors import InputError
from saeflow.formats.records import feature_index_of, read_lines


def import_neuronpedia(folder: str | Path, source: str | None = None,
                       model_id: str | None = None,
                       explanation_model: str | None = None) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Normalise Neuronpedia explanation batches (``*.jsonl`` / ``*.jsonl.gz``) in ``folder``.

    Keeps rows whose ``layer`` equals ``source`` (the source id, e.g. ``12-gemmascope-res-65k``)
    and, when given, whose ``modelId`` / ``explanationModelName`` match. A feature explained
    more than once keeps its first explanation in file-name then line order (counted in the
    returned stats). Returns records sorted by feature index, and counts.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.name.endswith((".jsonl", ".jsonl.gz")))
    if not files:
        raise InputError(folder, "<folder>", "no .jsonl or .jsonl.gz files")
    found: dict[tuple[str, int], dict[str, Any]] = {}
    stats = {"n_rows": 0, "n_filtered": 0, "n_duplicates": 0}
    for path in files:
        for where, row in read_lines(path):
            stats["n_rows"] += 1
            for key in ("layer", "index", "description"):
                if key not in row:
                    raise InputError(path, f"{where}.{key}", "missing")
            if ((source and row["layer"] != source) or (model_id and row.get("modelId") != model_id)
                    or (explanation_model and row.get("explanationModelName") != explanation_model)):
                stats["n_filtered"] += 1
                continue
            if not isinstance(row["description"], str):
                raise InputError(path, f"{where}.description", "not a string")
            key = (str(row["layer"]), feature_index_of({"index": row["index"]}, path, where))
            if key in found:
                stats["n_duplicates"] += 1
                continue
            found[key] = {"feature_id": f"{key[0]}-{key[1]}", "feature_index": key[1],
                          "description": row["description"].strip(),
                          "explanation_model": row.get("explanationModelName")}
    sources = sorted({k[0] for k in found})
    if not found:
        raise InputError(folder, "layer", f"no explanations matched source={source!r}")
    if len(sources) > 1:
        raise InputError(folder, "layer", f"several sources {sources}; choose one with --source")
    return [found[k] for k in sorted(found, key=lambda k: k[1])], stats
