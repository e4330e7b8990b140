"""What a study brings on disk, checked without heavy imports (the Snakefile is parsed on every
invocation): a model checkpoint folder (``model.source: local``) and an SAE training corpus
(``sae.corpus``).

A checkpoint folder is a Hugging Face ``save_pretrained`` folder: ``config.json``, the weights
(``*.safetensors`` or ``pytorch_model*.bin``, every shard an index names) and the tokenizer
(``tokenizer.json``, ``tokenizer.model``, or ``vocab.json`` + ``merges.txt``). Its files are
inputs of every rule that loads the model, and their sha256 go into every output's provenance
(:func:`file_hashes`, cached by size and mtime so a parse does not re-read gigabytes).

A corpus is a JSONL file (records with ``text``), a text file (one record a line), a
``datasets.save_to_disk`` folder, or the name of a dataset in the local Hugging Face cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saeflow.core.errors import InputError

WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_SETS = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"))
TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
HASH_CACHE = Path(".cache") / "saeflow" / "sha256.json"


# ------------------------------------------------------------------ checkpoint folders

def checkpoint_files(path: str | Path, source: str, field: str = "model.path") -> list[Path]:
    """The files of checkpoint folder ``path`` a model load reads, in a fixed order:
    ``config.json``, the weights, the tokenizer. A missing folder, config, weight file (or a
    shard its index names) or tokenizer is one InputError naming ``field``."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(source, field, f"{str(path)!r} is not a folder (a Hugging Face "
                         "checkpoint folder: config.json, weights, tokenizer)")
    config = folder / "config.json"
    if not config.is_file():
        raise InputError(source, field, f"{folder} has no config.json: not a Hugging Face "
                         "checkpoint folder (save it with save_pretrained)")
    read_checkpoint_config(folder, source, field)
    return [config, *_weight_files(folder, source, field), *_tokenizer_files(folder, source, field)]


def _weight_files(folder: Path, source: str, field: str) -> list[Path]:
    for index in WEIGHT_INDEXES:
        if (folder / index).is_file():
            try:
                shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise InputError(source, field, f"{folder / index} is not a weight index "
                                 "(no weight_map)") from None
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise InputError(source, field, f"{folder} lacks weight file {missing[0]!r} "
                                 f"that {index} names ({len(missing)} of {len(shards)} missing)")
            return [folder / index, *(folder / s for s in shards)]
    found = sorted({p for pattern in WEIGHT_GLOBS for p in folder.glob(pattern) if p.is_file()})
    if not found:
        raise InputError(source, field, f"{folder} has no weights (model.safetensors, "
                         "model-*.safetensors or pytorch_model*.bin)")
    return found


def _tokenizer_files(folder: Path, source: str, field: str) -> list[Path]:
    for names in TOKENIZER_SETS:
        if all((folder / n).is_file() for n in names):
            extras = [folder / n for n in TOKENIZER_EXTRAS if (folder / n).is_file()]
            return [*(folder / n for n in names), *extras]
    raise InputError(source, field, f"{folder} has no tokenizer (tokenizer.json, "
                     "tokenizer.model, or vocab.json + merges.txt): save the tokenizer with the "
                     "model (tokenizer.save_pretrained)")


def read_checkpoint_config(folder: str | Path, source: str, field: str = "model.path"
                           ) -> dict[str, Any]:
    """The checkpoint's ``config.json`` as a dict; unreadable is one InputError."""
    path = Path(folder) / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(source, field, f"{path} is not readable JSON ({err})") from None
    if not isinstance(raw, dict):
        raise InputError(source, field, f"{path} is not a JSON object")
    return raw


# Hugging Face config keys of the figures a TransformerLens architecture fixes, by meaning.
HF_KEYS = {
    "n_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "d_model": ("hidden_size", "n_embd", "d_model"),
    "n_heads": ("num_attention_heads", "n_head"),
    "d_vocab": ("vocab_size",),
}


def checkpoint_dims(config: dict[str, Any]) -> dict[str, int]:
    """``n_layers``, ``d_model``, ``n_heads``, ``d_vocab`` (those the config states) of a
    Hugging Face config dict."""
    out = {}
    for name, keys in HF_KEYS.items():
        for key in keys:
            if isinstance(config.get(key), int):
                out[name] = int(config[key])
                break
    return out


# ------------------------------------------------------------------ TransformerLens's registry

@functools.cache
def known_architectures() -> frozenset[str]:
    """Every model name (official names and aliases, lower-cased) TransformerLens's
    ``HookedTransformer`` registry knows, read from its ``supported_models.py`` without
    importing ``transformer_lens`` (seconds); empty when it cannot be found."""
    import importlib.util

    spec = importlib.util.find_spec("transformer_lens")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    path = Path(next(iter(spec.submodule_search_locations))) / "supported_models.py"
    module_spec = importlib.util.spec_from_file_location("_saeflow_tl_registry", path)
    if module_spec is None or module_spec.loader is None or not path.is_file():
        return frozenset()
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    names = {n.lower() for n in module.OFFICIAL_MODEL_NAMES}
    names |= {a.lower() for aliases in module.MODEL_ALIASES.values() for a in aliases}
    return frozenset(names)


def check_architecture(name: Any, source: str, field: str = "model.name") -> None:
    """``name`` is a model TransformerLens can instantiate (its registry's official names and
    aliases); else one line with the nearest known names."""
    known = known_architectures()
    if not known or str(name).lower() in known:
        return
    import difflib

    near = difflib.get_close_matches(str(name).lower(), sorted(known), n=3)
    hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    raise InputError(source, field, f"{name!r} is not an architecture TransformerLens knows "
                     f"(transformer_lens.supported_models, {len(known)} names){hint}")


# ------------------------------------------------------------------ hashes

def file_hashes(paths: Sequence[str | Path], cache: str | Path = HASH_CACHE) -> dict[str, str]:
    """File name (relative to the first file's folder) -> sha256 of each of ``paths``; a hash is
    reused from ``cache`` (a JSON file) while the file's size and mtime are unchanged, so a
    Snakefile parse re-reads only a changed checkpoint."""
    from saeflow.core.io import write_text_atomic

    cache = Path(cache)
    try:
        known = json.loads(cache.read_text()) if cache.is_file() else {}
    except (OSError, ValueError):
        known = {}
    out, changed = {}, False
    root = Path(paths[0]).parent if paths else Path(".")
    for path in map(Path, paths):
        stat = path.stat()
        key = str(path.resolve())
        entry = known.get(key)
        if not (isinstance(entry, dict) and entry.get("size") == stat.st_size
                and entry.get("mtime_ns") == stat.st_mtime_ns):
            entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256(path)}
            known[key], changed = entry, True
        out[os.path.relpath(path, root)] = entry["sha256"]
    if changed:
        try:
            write_text_atomic(cache, json.dumps(known, indent=1, sort_keys=True) + "\n")
        except OSError:
            pass  # a read-only working folder: hashes are recomputed next time
    return out


def sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------ corpora

def corpus_kind(spec: str) -> str:
    """How ``sae.corpus`` is read: ``jsonl`` (a ``.jsonl``/``.jsonl.gz`` file), ``text`` (any
    other file, or a file's name that is not there yet), ``folder`` (a
    ``datasets.save_to_disk`` folder) or ``name`` (a dataset in the local Hugging Face cache)."""
    path = Path(spec)
    if path.is_dir():
        return "folder"
    if path.is_file() or is_absent_corpus_file(spec):
        return "jsonl" if path.name.endswith((".jsonl", ".jsonl.gz")) else "text"
    return "name"


def is_absent_corpus_file(spec: Any) -> bool:
    """``sae.corpus`` names a file that does not exist (yet): a name ending as a corpus file
    does (``.jsonl``, ``.jsonl.gz``, ``.txt``, ``.json``) or a path from ``.``, ``~`` or
    ``/``, which no dataset name in the Hugging Face cache looks like."""
    if spec is None or Path(str(spec)).exists():
        return False
    spec = str(spec)
    return spec.endswith((".jsonl", ".jsonl.gz", ".txt", ".txt.gz", ".json")) \
        or spec.startswith((".", "~", "/"))


def hf_dataset_dirs(name: str) -> list[Path]:
    """Where the local Hugging Face caches could hold dataset ``name``: the hub cache's
    ``datasets--<org>--<name>`` and the datasets library's ``<org>___<name>``."""
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    hub = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
               or home / "hub")
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets")
    *namespace, last = name.split("/")
    # the datasets library's own folder name (datasets.naming.camelcase_to_snakecase)
    snake = re.sub(r"([a-z\d])([A-Z])", r"\1_\2",
                   re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", last)).lower()
    return [hub / ("datasets--" + name.replace("/", "--")),
            datasets_cache / "___".join([*namespace, snake])]


def check_corpus(spec: Any, source: str, field: str = "sae.corpus") -> str:
    """``sae.corpus`` names something to read: a non-empty file, a ``save_to_disk`` folder, or
    a dataset in the local Hugging Face cache. Returns its kind (:func:`corpus_kind`)."""
    spec = str(spec)
    kind = corpus_kind(spec)
    if kind in ("jsonl", "text"):
        if not _has_content(Path(spec)):
            raise InputError(source, field, f"{spec!r} is empty: no record to train on")
    elif kind == "folder":
        folder = Path(spec)
        if not any((folder / n).is_file() for n in ("state.json", "dataset_dict.json")):
            raise InputError(source, field, f"{spec!r} is a folder but not a dataset saved with "
                             "datasets' save_to_disk (no state.json or dataset_dict.json)")
    elif not any(d.is_dir() for d in hf_dataset_dirs(spec)):
        raise InputError(source, field, f"{spec!r} is no file or folder, and no dataset of that "
                         "name is in the local Hugging Face cache (HF_HOME)")
    return kind


def _has_content(path: Path) -> bool:
    """Whether a (possibly gzipped) file has a non-blank line."""
    import gzip

    opener: Any = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            return any(line.strip() for line in fh)
    except OSError:
        return False
