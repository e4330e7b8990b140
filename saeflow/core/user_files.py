"""The files a study brings itself (a local checkpoint, a corpus, prompt files), as the
Snakefile plans with them: a checkpoint's files as inputs with their digests, and the ones
not in place yet, which a dry run plans without and a run stops on (common.smk)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from saeflow.core.config import fail
from saeflow.core.errors import InputError


def checkpoint_inputs(model: dict[str, Any], source: str) -> list[str]:
    """A local checkpoint's files (config, weights, tokenizer): the inputs of every rule that
    loads the model, so a changed file reruns them. Adds ``sha256`` (file -> digest, cached by
    size and mtime) to the ``model`` section, which every output that records it carries in
    its provenance. [] for other models."""
    from saeflow.core.local_files import checkpoint_files, file_hashes

    if model.get("source") != "local" or not Path(model["path"]).exists():
        return []
    try:
        files = checkpoint_files(model["path"], source)
    except InputError as err:
        fail(err)
    model["sha256"] = file_hashes(files)
    return [str(p) for p in files]


def absent_inputs(config: Mapping[str, Any], source: str) -> list[InputError]:
    """The user's own inputs the config names that do not exist yet: the checkpoint folder
    (``model.path``), the corpus file (``sae.corpus`` named as a path) and the prompt-set
    files. A dry run plans the DAG without them (every shipped study config builds its DAG on
    a fresh clone, before the user has put their data in place); a run stops before any job
    starts (:func:`stop_if_absent`). Inputs that exist are checked in full at parse time."""
    from saeflow.core.local_files import is_absent_corpus_file

    model, sae = config["model"], config["sae"]
    absent = []
    if model.get("source") == "local" and not Path(model["path"]).exists():
        absent.append(InputError(source, "model.path", f"{str(model['path'])!r} does not exist: "
                                 "the Hugging Face checkpoint folder (config.json, weights, "
                                 "tokenizer)"))
    if sae.get("source") == "train" and is_absent_corpus_file(sae.get("corpus")):
        absent.append(InputError(source, "sae.corpus", f"{str(sae['corpus'])!r} does not exist"))
    sets = config["extraction"]["prompt_sets"]
    for name, path in ({} if isinstance(sets, list) else sets).items():
        if not Path(path).exists():
            absent.append(InputError(source, f"extraction.prompt_sets.{name}",
                                     f"prompt file {path!r} does not exist"))
    return absent


def warn_absent(absent: Sequence[InputError]) -> None:
    """One line per absent input on stderr, at parse time."""
    for err in absent:
        print(f"saeflow: warning: {err} (planned without it; a run stops until it exists)",
              file=sys.stderr)


def stop_if_absent(absent: Sequence[InputError]) -> None:
    """Snakemake's ``onstart`` (a run, never a dry run): the first absent input's one line and
    exit status 2, before any job starts."""
    if absent:
        fail(absent[0])
