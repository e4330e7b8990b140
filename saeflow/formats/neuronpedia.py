"""Neuronpedia explanation exports: batches of ``*.jsonl`` / ``*.jsonl.gz`` rows, each
``{modelId, layer (the source id), index, description, explanationModelName, ...}``.
:func:`import_neuronpedia` reads a folder of them; :func:`check_batch` checks one downloaded
batch's bytes the same way before it may enter the download cache."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from saeflow.core.errors import InputError
from saeflow.formats.records import feature_index_of, read_lines

REQUIRED = ("layer", "index", "description")


def check_batch(data: bytes, source: str | Path) -> int:
    """The rows of one ``*.jsonl.gz`` batch's bytes, checked: gzip that decompresses whole,
    UTF-8, one JSON object per line with ``layer``, ``index`` and ``description``. An HTML
    error page or a truncated stream is an InputError naming ``source`` (the batch's URL)."""
    if not data.strip():
        raise InputError(source, "<body>", "not a gzip batch: empty")
    try:
        text = gzip.decompress(data).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        start = data[:40].decode("utf-8", "replace").strip().splitlines()[0]
        what = (f"truncated or damaged ({err})" if data[:2] == b"\x1f\x8b"
                else f"it starts {start!r} (an error page?)")
        raise InputError(source, "<body>", f"not a gzip batch: {what}") from None
    n = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(source, f"line {lineno}", f"malformed JSON: {err.msg} (an error "
                             "page?)") from None
        missing = [k for k in REQUIRED if not isinstance(row, dict) or k not in row]
        if missing:
            raise InputError(source, f"line {lineno}", f"not an explanation row (no "
                             f"{', '.join(missing)})")
        n += 1
    return n


def import_neuronpedia(folder: str | Path, source: str | None = None,
                       model_id: str | None = None, explanation_model: str | None = None,
                       d_sae: int | None = None, sae: str = "the SAE"
                       ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Normalise Neuronpedia explanation batches (``*.jsonl`` / ``*.jsonl.gz``) in ``folder``.

    Keeps rows whose ``layer`` equals ``source`` (the source id, e.g. ``12-gemmascope-res-65k``)
    and, when given, whose ``modelId`` / ``explanationModelName`` match. A feature explained
    more than once keeps its first explanation in file-name then line order (counted in the
    returned stats). With ``d_sae`` a kept row's index beyond the SAE's width is an error
    naming the batch, the line and ``sae`` (where the config names the SAE). Returns records
    sorted by feature index, and counts.
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
            for key in REQUIRED:
                if key not in row:
                    raise InputError(path, f"{where}.{key}", "missing")
            if ((source and row["layer"] != source) or (model_id and row.get("modelId") != model_id)
                    or (explanation_model and row.get("explanationModelName") != explanation_model)):
                stats["n_filtered"] += 1
                continue
            if not isinstance(row["description"], str):
                raise InputError(path, f"{where}.description", "not a string")
            key = (str(row["layer"]), feature_index_of({"index": row["index"]}, path, where))
            if d_sae is not None and key[1] >= d_sae:
                raise InputError(path, f"{where}.index", f"feature {key[1]} is beyond the width "
                                 f"(d_sae {d_sae}) of {sae}: are labels.describe.source "
                                 f"{key[0]!r} and that SAE the same?")
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
