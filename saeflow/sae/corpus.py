"""Reading an SAE training corpus (``sae.corpus``): records with a ``text``, whatever holds them.

* a JSONL file (``.jsonl``/``.jsonl.gz``): the prompt-file format, read by
  :func:`saeflow.core.prompts.load_prompt_set` (``text`` plus any ``pos_<name>`` fields, which
  named training positions read);
* any other file: one record per non-blank line;
* a ``datasets.save_to_disk`` folder, or the name of a dataset in the local Hugging Face cache
  (read offline): its ``train`` split (or its only one), column ``text`` and any ``pos_<name>``
  columns, row by row.

:func:`saeflow.core.local_files.check_corpus` checks the same forms when the DAG is parsed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from saeflow.core.errors import InputError
from saeflow.core.io import Records
from saeflow.core.local_files import check_corpus

FIELD = "sae.corpus"


def iter_numbered(spec: str, source: str = "config") -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line or row number from 1, record)`` of the corpus in order, lazily for datasets;
    each record a dict with a non-empty string ``text``. A missing or empty corpus, or a
    dataset without a ``text`` column, is one InputError naming ``sae.corpus``."""
    kind = check_corpus(spec, source, FIELD)
    if kind == "jsonl":
        from saeflow.core.prompts import load_prompt_set

        loaded = load_prompt_set(spec)
        yield from zip(loaded.lines, loaded, strict=True)
    elif kind == "text":
        from saeflow.core.io import read_text

        for lineno, line in enumerate(read_text(spec).split("\n"), 1):
            if line.strip():
                yield lineno, {"text": line}
    else:
        yield from enumerate(_dataset_rows(spec, source), 1)


def iter_corpus(spec: str, source: str = "config") -> Iterator[dict[str, Any]]:
    """The corpus's records in order (:func:`iter_numbered` without the numbers)."""
    for _, record in iter_numbered(spec, source):
        yield record


def read_corpus(spec: str, source: str = "config", limit: int | None = None) -> Records:
    """The corpus's records (the first ``limit``, if given), each with its line (row) number
    for error messages."""
    records = Records()
    records.lines = []
    for line, record in iter_numbered(spec, source):
        if limit is not None and len(records) >= limit:
            break
        records.append(record)
        records.lines.append(line)
    if not records:
        raise InputError(spec, FIELD, "the corpus has no record to train on")
    return records


def load_dataset(spec: str, source: str = "config") -> Any:
    """A ``save_to_disk`` folder or a cached dataset (offline) as one ``datasets.Dataset``
    with a ``text`` column."""
    import datasets

    from saeflow.core.local_files import corpus_kind

    try:
        if corpus_kind(spec) == "folder":
            data = datasets.load_from_disk(spec)
        else:
            from saeflow.core.hub import hub_access

            with hub_access(spec, FIELD):
                data = datasets.load_dataset(spec)
    except (OSError, ValueError, FileNotFoundError) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise InputError(source, FIELD, f"cannot read dataset {spec!r}: {first}") from None
    if isinstance(data, (datasets.DatasetDict, dict)):
        splits = list(data)
        if "train" not in data and len(splits) != 1:
            raise InputError(source, FIELD, f"dataset {spec!r} has splits {splits}: no 'train'")
        data = data["train"] if "train" in data else data[splits[0]]
    if "text" not in data.column_names:
        raise InputError(source, FIELD, f"dataset {spec!r} has no 'text' column (it has "
                         f"{data.column_names})")
    if len(data) == 0:
        raise InputError(source, FIELD, f"dataset {spec!r} has no rows")
    return data


def _dataset_rows(spec: str, source: str) -> Iterator[dict[str, Any]]:
    data = load_dataset(spec, source)
    columns = ["text", *(c for c in data.column_names if c.startswith("pos_"))]
    for batch in data.select_columns(columns).iter(batch_size=1024):
        for i, text in enumerate(batch["text"]):
            if not isinstance(text, str) or not text:
                continue
            yield {"text": text, **{c: batch[c][i] for c in columns[1:]}}


def texts_dataset(spec: str, source: str = "config") -> Any:
    """The corpus as a ``datasets.Dataset`` with one ``text`` column, as sae-lens reads text
    (a dataset is passed as it is)."""
    from saeflow.core.local_files import corpus_kind

    if corpus_kind(spec) in ("folder", "name"):
        return load_dataset(spec, source)
    import datasets

    return datasets.Dataset.from_dict({"text": [r["text"] for r in iter_corpus(spec, source)]})
