"""Neuronpedia export downloads against a loopback store: resumable, atomic, one line when
the store is unreachable."""

from __future__ import annotations

import pytest

from saeflow.core.errors import InputError
from saeflow.formats.neuronpedia import import_neuronpedia
from saeflow.labels.exports import export_folder, fetch_explanations
from saeflow.testing.local_study import MODEL_ID, SOURCE, ExportStore, write_exports

D_SAE = 100


@pytest.fixture
def store_root(tmp_path):
    write_exports(tmp_path / "store" / MODEL_ID / SOURCE / "explanations", D_SAE, per_batch=30)
    return tmp_path / "store"


def test_a_broken_download_resumes_with_only_the_missing_batches(tmp_path, store_root):
    store = ExportStore(store_root, fail_once=("batch-2.jsonl.gz",))
    cache = tmp_path / "cache"
    try:
        with pytest.raises(InputError, match="batch-2.jsonl.gz: response: HTTP 500"):
            fetch_explanations(store.url, MODEL_ID, SOURCE, cache)
        done = sorted(p.name for p in export_folder(cache, MODEL_ID, SOURCE).iterdir())
        assert done == ["batch-0.jsonl.gz", "batch-1.jsonl.gz"]  # no partial file left
        store.requests.clear()
        manifest = fetch_explanations(store.url, MODEL_ID, SOURCE, cache)
    finally:
        store.close()
    assert [r.rsplit("/", 1)[1] for r in store.requests] == [
        "batch-2.jsonl.gz", "batch-3.jsonl.gz", "batch-4.jsonl.gz"]  # 4 batches, then none
    assert manifest["downloaded"] == 2 and len(manifest["batches"]) == 4
    records, _ = import_neuronpedia(manifest["folder"], SOURCE)
    assert [r["feature_index"] for r in records] == list(range(D_SAE))


def test_a_damaged_batch_is_refused_and_not_cached(tmp_path, store_root):
    (store_root / MODEL_ID / SOURCE / "explanations" / "batch-1.jsonl.gz").write_bytes(b"junk")
    store = ExportStore(store_root)
    try:
        with pytest.raises(InputError, match="batch-1.jsonl.gz: <body>: not a gzip batch"):
            fetch_explanations(store.url, MODEL_ID, SOURCE, tmp_path / "cache")
    finally:
        store.close()
    assert not (export_folder(tmp_path / "cache", MODEL_ID, SOURCE) / "batch-1.jsonl.gz").exists()


def test_an_unknown_source_and_an_unreachable_store_are_one_line(tmp_path, store_root):
    store = ExportStore(store_root)
    try:
        with pytest.raises(InputError, match="no explanation export for this model and source"):
            fetch_explanations(store.url, MODEL_ID, "nope", tmp_path / "cache")
    finally:
        store.close()
    with pytest.raises(InputError) as err:  # port 9: nothing listens, refused at once
        fetch_explanations("http://127.0.0.1:9", MODEL_ID, SOURCE, tmp_path / "cache")
    assert "\n" not in str(err.value)
    assert "unreachable" in str(err.value) and "labels.describe.folder" in str(err.value)
