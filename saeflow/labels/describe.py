"""Feature descriptions: one text per SAE feature, generated from activations or imported.

A description record is ``{feature_id: "<source>-<index>", feature_index: int, description}``.
In the toy world the text is written from activation data alone (the tokens a feature fires on
and short left contexts), standing in for an LLM explainer; the toy's ground-truth category
membership (:func:`class_membership`) comes from the same activation mass but over token
*classes*, which a description never names. Pretrained SAEs import Neuronpedia explanation
exports; any SAE (one the pipeline trained) can be explained by an LLM and scored
(:mod:`saeflow.labels.autointerp`). :func:`describe_stage` picks the backend from
``BACKENDS``.
Reading description files is :mod:`saeflow.formats.descriptions`; Neuronpedia exports,
:mod:`saeflow.formats.neuronpedia`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from saeflow.core.errors import InputError
from saeflow.formats.activations import read_tokens_positions
from saeflow.formats.codes import read_codes
from saeflow.formats.neuronpedia import import_neuronpedia

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


def describe_from_files(codes_h5: str | Path, activations_h5: str | Path, tokenizer_dir: str | Path,
                        hook_name: str, source: str, **options: int
                        ) -> tuple[list[dict[str, Any]], int]:
    """:func:`describe_features` on a codes file, its activations file and the toy tokenizer;
    and the SAE's width ``d_sae``."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
    tokens, positions = read_tokens_positions(activations_h5)
    codes = read_codes(codes_h5, hook_name)
    if codes.shape[0] != positions.size:
        raise InputError(codes_h5, f"codes/{hook_name}",
                         f"{codes.shape[0]} rows but {activations_h5} has {positions.size} positions")
    records = describe_features(codes, tokens, positions, tokenizer.decode, source, **options)
    return records, codes.shape[1]


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
    tokens, positions = read_tokens_positions(activations_h5)
    codes = read_codes(codes_h5, hook_name)
    vocab = max(int(tokens.max()) + 1, len(classes_of_id))
    mass = feature_token_mass(codes, row_tokens(tokens, positions), vocab)
    out = {}
    for name, classes in categories.items():
        unknown = sorted(set(classes) - known)
        if unknown:
            raise InputError(truth_json, "token_classes", f"category {name!r} names unknown classes {unknown}")
        out[name] = np.nonzero(class_membership(mass, classes_of_id, classes, threshold))[0].tolist()
    return out


Described = tuple[str, int | None, list[dict[str, Any]], dict[str, Any]]


def _describe_neuronpedia(cfg: Mapping[str, Any], inputs: Mapping[str, Any], hook_name: str | None,
                          sae_key: str, model_cfg: Mapping[str, Any] | None) -> Described:
    """Neuronpedia exports (``inputs`` ``folder``, else rule fetch_neuronpedia's
    ``manifest``), checked against the width of ``inputs`` ``codes`` when given."""
    from saeflow.core.io import read_json

    folder = inputs.get("folder") or read_json(inputs["manifest"])["folder"]
    d_sae = read_codes(inputs["codes"], hook_name).shape[1] if inputs.get("codes") else None
    sae = f"the SAE of labels.hook {hook_name} (given by {sae_key})"
    records, stats = import_neuronpedia(folder, cfg.get("source"), cfg.get("model_id"),
                                        cfg.get("explanation_model"), d_sae, sae)
    return records[0]["feature_id"].rsplit("-", 1)[0], d_sae, records, stats


def _describe_activations(cfg: Mapping[str, Any], inputs: Mapping[str, Any], hook_name: str | None,
                          sae_key: str, model_cfg: Mapping[str, Any] | None) -> Described:
    """Toy: top tokens with contexts (:func:`describe_from_files`; ``inputs`` ``codes``,
    ``activations``, ``model`` whose tokenizer/ sits beside it)."""
    source = cfg.get("source") or hook_name
    options = {k: int(cfg[k]) for k in ("top_k", "n_contexts", "context") if k in cfg}
    records, d_sae = describe_from_files(inputs["codes"], inputs["activations"],
                                         Path(inputs["model"]) / "tokenizer", hook_name,
                                         source, **options)
    return source, d_sae, records, {}


def _describe_autointerp(cfg: Mapping[str, Any], inputs: Mapping[str, Any], hook_name: str | None,
                         sae_key: str, model_cfg: Mapping[str, Any] | None) -> Described:
    """An LLM's explanations, scored (:mod:`saeflow.labels.autointerp`; ``inputs`` ``codes``,
    ``activations`` and, for the toy, ``model``; the tokenizer is ``model_cfg``'s model's)."""
    from saeflow.labels.autointerp import autointerp_from_files, model_tokenizer

    source = cfg.get("source") or hook_name
    tokenizer = model_tokenizer(model_cfg or {}, inputs.get("model"))
    records, d_sae, stats = autointerp_from_files(inputs["codes"], inputs["activations"],
                                                  tokenizer, hook_name, cfg, source)
    return source, d_sae, records, stats


# labels.describe.backend -> its describer: (cfg, inputs, hook, sae_key, model_cfg) -> Described
BACKENDS = {"activations": _describe_activations, "neuronpedia": _describe_neuronpedia,
            "autointerp": _describe_autointerp}


def describe_stage(cfg: Mapping[str, Any], out: str | Path, hook_name: str | None = None,
                   inputs: Mapping[str, Any] | None = None, sae_key: str = "sae",
                   model_cfg: Mapping[str, Any] | None = None) -> None:
    """Rule ``describe``: descriptions by the backend ``cfg["backend"]`` names (``BACKENDS``):
    toy activations (``"activations"``), Neuronpedia exports (``"neuronpedia"``, with
    ``source`` and optional ``model_id``, ``explanation_model``) or an LLM's scored
    explanations (``"autointerp"``, :mod:`saeflow.labels.autointerp`; ``model_cfg`` is
    ``config["model"]``, whose tokenizer decodes the contexts), written to ``out`` as
    ``{source, hook, d_sae, n_features, records}`` plus the backend's fields. ``d_sae`` is
    the width of ``hook_name``'s SAE in ``inputs`` ``codes`` (None without them); an
    exported index beyond it is an error naming the batch and ``sae_key``, the config key
    that gives the SAE."""
    from saeflow.core.config import schema_defaults
    from saeflow.core.io import write_json

    backend = cfg.get("backend") or schema_defaults("labels.describe")["backend"]
    if backend not in BACKENDS:
        raise InputError("config", "labels.describe.backend",
                         f"unknown backend {backend!r} ({', '.join(sorted(BACKENDS))})")
    source, d_sae, records, stats = BACKENDS[backend](cfg, dict(inputs or {}), hook_name,
                                                      sae_key, model_cfg)
    write_json(out, {"source": source, "hook": hook_name, "d_sae": d_sae,
                     "n_features": len(records), **stats, "records": records}, dict(cfg))


def truth_membership_stage(codes_h5: str | Path, activations_h5: str | Path, truth_json: str | Path,
                     hook_name: str, categories: Any, threshold: float,
                     out: str | Path) -> None:
    """Rule ``truth_membership`` (toy only): :func:`membership_from_files` of each category of
    ``categories`` (``config["labels"]["categories"]``, each with ``token_classes``)
    to ``out`` (truth_membership.json, ``{threshold, members: {category: [feature]}}``)."""
    from saeflow.core.io import write_json
    from saeflow.labels.classify import resolve_categories

    cats = resolve_categories(categories)
    members = membership_from_files(codes_h5, activations_h5, truth_json, hook_name,
                                    {n: c["token_classes"] for n, c in cats.items()}, threshold)
    write_json(out, {"threshold": threshold, "members": members},
               {"categories": cats, "threshold": threshold})
