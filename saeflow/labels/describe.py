"""Feature descriptions: one text per SAE feature, generated from activations or imported.

A description record is ``{feature_id: "<source>-<index>", feature_index: int, description}``.
In the toy world the text is written from activation data alone (the tokens a feature fires on
and short left contexts), standing in for an LLM explainer; the toy's ground-truth category
membership (:func:`class_membership`) comes from the same activation mass but over token
*classes*, which a description never names. Real SAEs import Neuronpedia explanation exports.

This module also owns reading record files (list, ``{"records": [...]}``, dict-of-records,
``.jsonl`` / ``.jsonl.gz``) because every later stage of the labelling chain reads them.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from saeflow.core.errors import InputError

_ID_SUFFIX = re.compile(r"-(\d+)$")


# --- record files -----------------------------------------------------------------------------

def _read_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    rows = []
    with opener(path, "rt") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(path, f"line {lineno}", f"malformed JSON: {err.msg}") from None
            if not isinstance(record, dict):
                raise InputError(path, f"line {lineno}", "expected a JSON object")
            rows.append((f"line {lineno}", record))
    return rows


def load_record_list(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """Records of a JSON / JSONL file as ``(where, record)`` pairs, ``where`` naming the row.

    Accepts a list of records, ``{"records": [...]}`` (saeflow's own outputs), a dict mapping
    an id to a record (the key becomes ``feature_id`` when the record has no id of its own),
    or one record per line (``.jsonl``, ``.jsonl.gz``).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "<file>", "does not exist")
    if ".jsonl" in path.name:
        return _read_lines(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(path, f"line {err.lineno}", f"malformed JSON: {err.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("records"), list):
        data = data["records"]
    if isinstance(data, list):
        named = [(f"records[{i}]", r) for i, r in enumerate(data)]
    elif isinstance(data, dict):
        named = []
        for key, record in data.items():
            if key == "provenance":
                continue
            if isinstance(record, dict) and not ({"feature_id", "feature_index", "index"} & set(record)):
                record = {**record, "feature_id": key}
            named.append((f"[{key!r}]", record))
    else:
        raise InputError(path, "<root>", "expected a list of records or a dict of records")
    for where, record in named:
        if not isinstance(record, dict):
            raise InputError(path, where, "expected a JSON object")
    return named


def feature_index_of(record: Mapping[str, Any], source: str | Path, where: str) -> int:
    """The integer feature index of a record: ``feature_index``, ``index``, or an id's ``-<n>``."""
    for key in ("feature_index", "index"):
        value = record.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not (
                isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())):
            raise InputError(source, f"{where}.{key}", f"not a non-negative integer: {value!r}")
        if int(value) < 0:
            raise InputError(source, f"{where}.{key}", f"negative index {value}")
        return int(value)
    fid = record.get("feature_id")
    match = _ID_SUFFIX.search(fid) if isinstance(fid, str) else None
    if match is None:
        raise InputError(source, where, "no feature index: need 'feature_index', 'index' or "
                                        "a 'feature_id' ending in -<n>")
    return int(match.group(1))


def read_descriptions(path: str | Path) -> list[dict[str, Any]]:
    """Description records from ``path``, validated: index present, text present, ids unique."""
    records, seen = [], {}
    for where, raw in load_record_list(path):
        index = feature_index_of(raw, path, where)
        text = raw.get("description")
        if not isinstance(text, str):
            raise InputError(path, f"{where}.description", "missing or not a string")
        fid = str(raw.get("feature_id", index))
        if fid in seen:
            raise InputError(path, "feature_id", f"duplicate id {fid!r} ({seen[fid]} and {where})")
        seen[fid] = where
        records.append({"feature_id": fid, "feature_index": index, "description": text})
    if not records:
        raise InputError(path, "records", "no descriptions")
    return records


# --- toy world: descriptions from activations -------------------------------------------------

def row_tokens(tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Token id at each codes row (``row = i * P + p``), -1 where the position is absent.

    tokens: ``[n, T]`` int; positions: ``[n, P]`` int (-1 = absent). Returns ``[n * P]`` int64.
    """
    n, n_pos = positions.shape
    safe = np.clip(positions, 0, None)
    toks = np.take_along_axis(tokens.astype(np.int64), safe.astype(np.int64), axis=1)
    return np.where(positions >= 0, toks, -1).reshape(n * n_pos)


def feature_token_mass(codes: sparse.csr_matrix, tokens_at_row: np.ndarray,
                       vocab_size: int) -> sparse.csr_matrix:
    """Activation mass per (feature, token id).

    codes: ``[rows, d_sae]`` CSR; tokens_at_row: ``[rows]`` (-1 = no token).
    Returns ``[d_sae, vocab_size]`` CSR: entry (f, t) sums feature f's activations on token t.
    """
    valid = np.nonzero(tokens_at_row >= 0)[0]
    onehot = sparse.csr_matrix((np.ones(len(valid)), (valid, tokens_at_row[valid])),
                               shape=(len(tokens_at_row), vocab_size))
    return (codes.T.tocsr().astype(np.float64) @ onehot).tocsr()


def describe_features(codes: sparse.csr_matrix, tokens: np.ndarray, positions: np.ndarray,
                      decode: Callable[[Sequence[int]], str], source: str,
                      top_k: int = 5, n_contexts: int = 3, context: int = 4) -> list[dict[str, Any]]:
    """One description per feature that fires at least once.

    codes: ``[n * P, d_sae]`` CSR; tokens: ``[n, T]``; positions: ``[n, P]``; ``decode`` turns
    token ids into text. The text lists the ``top_k`` tokens by share of the feature's
    activation mass, then the ``n_contexts`` strongest activations with ``context`` tokens of
    left context and the firing token in brackets, e.g.
    ``Top tokens: "3" 41%, " 5" 20%. Contexts: "x = [3]"; "len([ 5]"``.
    Tokens are JSON-quoted so a quote token is unambiguous to keyword patterns.
    """
    n_pos = positions.shape[1]
    mass = feature_token_mass(codes, row_tokens(tokens, positions), int(tokens.max()) + 1)
    by_feature = codes.tocsc()
    records = []
    for f in range(codes.shape[1]):
        lo, hi = mass.indptr[f], mass.indptr[f + 1]
        total = mass.data[lo:hi].sum()
        if total <= 0:
            continue
        order = np.argsort(-mass.data[lo:hi], kind="stable")[:top_k]
        tops = ", ".join(f"{json.dumps(decode([int(mass.indices[lo + j])]))} "
                         f"{100 * mass.data[lo + j] / total:.0f}%" for j in order)
        rows = by_feature.indices[by_feature.indptr[f]:by_feature.indptr[f + 1]]
        vals = by_feature.data[by_feature.indptr[f]:by_feature.indptr[f + 1]]
        contexts = []
        for r in rows[np.argsort(-vals, kind="stable")[:n_contexts]]:
            i, pos = divmod(int(r), n_pos)
            t = int(positions[i, pos])
            left = decode([int(x) for x in tokens[i, max(0, t - context):t]])
            contexts.append(json.dumps(f"{left}[{decode([int(tokens[i, t])])}]"))
        records.append({"feature_id": f"{source}-{f}", "feature_index": f,
                        "description": f"Top tokens: {tops}. Contexts: {'; '.join(contexts)}"})
    return records


def class_membership(token_mass: sparse.csr_matrix, token_class_of_id: Sequence[str],
                     classes: Collection[str], threshold: float = 0.5) -> np.ndarray:
    """Toy ground truth: does at least ``threshold`` of a feature's mass fall on ``classes``?

    token_mass: ``[d_sae, vocab]`` from :func:`feature_token_mass`; token_class_of_id:
    ``[vocab]`` class names (``truth.json``'s ``token_class_of_id``). Returns ``[d_sae]`` bool;
    features that never fire are members of nothing.
    """
    wanted = set(classes)
    in_class = np.array([c in wanted for c in token_class_of_id], dtype=np.float64)
    if len(in_class) < token_mass.shape[1]:
        in_class = np.pad(in_class, (0, token_mass.shape[1] - len(in_class)))
    total = np.asarray(token_mass.sum(axis=1)).ravel()
    share = np.asarray(token_mass @ in_class[: token_mass.shape[1]]).ravel()
    return (total > 0) & (share >= threshold * np.where(total > 0, total, 1.0))


def read_codes_h5(path: str | Path, hook_name: str) -> sparse.csr_matrix:
    """The ``[n * P, d_sae]`` CSR codes of one hook, read as ``docs/outputs.md`` specifies."""
    import h5py

    with h5py.File(path, "r") as fh:
        if f"codes/{hook_name}" not in fh:
            raise InputError(path, f"codes/{hook_name}", "no such group")
        group = fh[f"codes/{hook_name}"]
        n_rows = int(group.attrs["n_prompts"]) * int(group.attrs["n_positions"])
        return sparse.csr_matrix((group["values"][:], group["indices"][:], group["indptr"][:]),
                                 shape=(n_rows, int(group.attrs["d_sae"])))


def read_tokens_h5(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``tokens [n, T]`` and ``positions [n, P]`` of an activations file."""
    import h5py

    with h5py.File(path, "r") as fh:
        for name in ("tokens", "positions"):
            if name not in fh:
                raise InputError(path, name, "dataset missing")
        return fh["tokens"][:], fh["positions"][:]


def describe_from_files(codes_h5: str | Path, activations_h5: str | Path, tokenizer_dir: str | Path,
                        hook_name: str, source: str, **options: int) -> list[dict[str, Any]]:
    """:func:`describe_features` on a codes file, its activations file and the toy tokenizer."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
    tokens, positions = read_tokens_h5(activations_h5)
    codes = read_codes_h5(codes_h5, hook_name)
    if codes.shape[0] != positions.size:
        raise InputError(codes_h5, f"codes/{hook_name}",
                         f"{codes.shape[0]} rows but {activations_h5} has {positions.size} positions")
    return describe_features(codes, tokens, positions, tokenizer.decode, source, **options)


def membership_from_files(codes_h5: str | Path, activations_h5: str | Path, truth_json: str | Path,
                          hook_name: str, categories: Mapping[str, Collection[str]],
                          threshold: float = 0.5) -> dict[str, list[int]]:
    """Toy truth per category: feature indices whose mass share on the category's token
    classes (``categories[name]`` lists ``truth.json`` class names) reaches ``threshold``."""
    from saeflow.core.io import read_json

    truth = read_json(truth_json)
    classes_of_id = truth.get("token_class_of_id")
    if not isinstance(classes_of_id, list):
        raise InputError(truth_json, "token_class_of_id", "missing or not a list")
    known = set(truth.get("token_classes", classes_of_id))
    tokens, positions = read_tokens_h5(activations_h5)
    codes = read_codes_h5(codes_h5, hook_name)
    vocab = max(int(tokens.max()) + 1, len(classes_of_id))
    mass = feature_token_mass(codes, row_tokens(tokens, positions), vocab)
    out = {}
    for name, classes in categories.items():
        unknown = sorted(set(classes) - known)
        if unknown:
            raise InputError(truth_json, "token_classes", f"category {name!r} names unknown classes {unknown}")
        out[name] = np.nonzero(class_membership(mass, classes_of_id, classes, threshold))[0].tolist()
    return out


def describe_stage(cfg: Mapping[str, Any], out: str | Path, hook_name: str | None = None,
                   codes: str | Path | None = None, activations: str | Path | None = None,
                   tokenizer_dir: str | Path | None = None, folder: str | Path | None = None) -> None:
    """The stage: descriptions from toy activations (``cfg["backend"] == "activations"``) or a
    Neuronpedia export folder (``"neuronpedia"``, with ``source`` and optional ``model_id``,
    ``explanation_model``), written to ``out`` as ``{source, n_features, records}``."""
    from saeflow.core.io import write_json

    backend = cfg.get("backend", "activations")
    if backend == "neuronpedia":
        records, stats = import_neuronpedia(folder, cfg.get("source"), cfg.get("model_id"),
                                            cfg.get("explanation_model"))
        source = records[0]["feature_id"].rsplit("-", 1)[0]
    elif backend == "activations":
        source = cfg.get("source") or hook_name
        options = {k: int(cfg[k]) for k in ("top_k", "n_contexts", "context") if k in cfg}
        records = describe_from_files(codes, activations, tokenizer_dir, hook_name, source, **options)
        stats = {}
    else:
        raise InputError("config", "labels.describe.backend",
                         f"unknown backend {backend!r} (activations or neuronpedia)")
    write_json(out, {"source": source, "n_features": len(records), **stats, "records": records},
               dict(cfg))


# --- real SAEs: Neuronpedia exports -----------------------------------------------------------

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
        for where, row in _read_lines(path):
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
