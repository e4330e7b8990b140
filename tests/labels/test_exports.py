"""Neuronpedia export downloads against a loopback store: resumable, atomic, one line when
the store is unreachable; a dropped connection retried; a bad batch never cached."""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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


class FaultyStore:
    """The export store on 127.0.0.1, answering each batch named in ``faults`` with its
    faults in turn before the real bytes: ``drop`` (the connection closes mid-body), ``html``
    (an error page with status 200), ``gzip-html`` (the same page, gzipped), ``truncated``
    (the first half of the gzip stream, as a complete response)."""

    def __init__(self, root, faults):
        self.requests: list[str] = []
        store = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 - http.server's name
                name = self.path.rsplit("/", 1)[-1]
                store.requests.append(name)
                path = root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_response(403)
                    self.end_headers()
                    return
                data = path.read_bytes()
                fault = faults.get(name, []).pop(0) if faults.get(name) else None
                page = b"<html><body>Service Unavailable</body></html>"
                body = {"html": page, "gzip-html": gzip.compress(page),
                        "truncated": data[:len(data) // 2]}.get(fault, data)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:len(body) // 2] if fault == "drop" else body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def cached(cache):
    return sorted(p.name for p in export_folder(cache, MODEL_ID, SOURCE).iterdir())


ALL = ["batch-0.jsonl.gz", "batch-1.jsonl.gz", "batch-2.jsonl.gz", "batch-3.jsonl.gz"]


def test_a_connection_dropped_mid_body_is_retried(tmp_path, store_root):
    store = FaultyStore(store_root, {"batch-1.jsonl.gz": ["drop"]})
    try:
        manifest = fetch_explanations(store.url, MODEL_ID, SOURCE, tmp_path / "cache",
                                      max_retries=2, backoff_s=0.001)
    finally:
        store.close()
    assert store.requests.count("batch-1.jsonl.gz") == 2  # dropped once, then whole
    assert cached(tmp_path / "cache") == ALL and manifest["downloaded"] == 4
    records, _ = import_neuronpedia(manifest["folder"], SOURCE)
    assert [r["feature_index"] for r in records] == list(range(D_SAE))


def test_a_connection_that_always_drops_is_one_line_naming_the_batch(tmp_path, store_root):
    store = FaultyStore(store_root, {"batch-1.jsonl.gz": ["drop"] * 10})
    try:
        with pytest.raises(InputError) as err:
            fetch_explanations(store.url, MODEL_ID, SOURCE, tmp_path / "cache",
                               max_retries=2, backoff_s=0.001)
    finally:
        store.close()
    message = str(err.value)
    assert message.startswith(f"{store.url}/{MODEL_ID}/{SOURCE}/explanations/batch-1.jsonl.gz: "
                              "<body>: the connection dropped mid-body on all 3 attempts (last: "
                              "connection dropped after ")
    assert message.endswith("rerun to resume, or raise labels.describe.max_retries")
    assert "\n" not in message and store.requests.count("batch-1.jsonl.gz") == 3
    assert cached(tmp_path / "cache") == ["batch-0.jsonl.gz"]  # nothing half-written kept


@pytest.mark.parametrize(("fault", "problem"), [
    ("html", "<body>: not a gzip batch: it starts '<html><body>Service Unavailable</body></' "
             "(an error page?)"),
    ("gzip-html", "line 1: malformed JSON: Expecting value (an error page?)"),
    ("truncated", "<body>: not a gzip batch: truncated or damaged (Compressed file ended before "
                  "the end-of-stream marker was reached)"),
], ids=["html", "gzip-html", "truncated"])
def test_a_bad_batch_is_refused_not_cached_and_fetched_again_by_a_rerun(tmp_path, store_root,
                                                                        fault, problem):
    store = FaultyStore(store_root, {"batch-1.jsonl.gz": [fault]})
    cache = tmp_path / "cache"
    try:
        with pytest.raises(InputError) as err:
            fetch_explanations(store.url, MODEL_ID, SOURCE, cache)
        assert str(err.value) == (f"{store.url}/{MODEL_ID}/{SOURCE}/explanations/"
                                  f"batch-1.jsonl.gz: {problem}")
        assert cached(cache) == ["batch-0.jsonl.gz"]  # neither the bad batch nor a temp file
        manifest = fetch_explanations(store.url, MODEL_ID, SOURCE, cache)  # the rerun
    finally:
        store.close()
    assert cached(cache) == ALL and manifest["downloaded"] == 3
    records, _ = import_neuronpedia(manifest["folder"], SOURCE)
    assert [r["feature_index"] for r in records] == list(range(D_SAE))


def test_a_bad_batch_left_in_the_cache_is_fetched_again(tmp_path, store_root):
    folder = export_folder(tmp_path / "cache", MODEL_ID, SOURCE)
    folder.mkdir(parents=True)
    (folder / "batch-2.jsonl.gz").write_bytes(b"<html>an older saeflow kept this</html>")
    store = FaultyStore(store_root, {})
    try:
        manifest = fetch_explanations(store.url, MODEL_ID, SOURCE, tmp_path / "cache")
    finally:
        store.close()
    assert "batch-2.jsonl.gz" in store.requests and manifest["downloaded"] == 4
    records, _ = import_neuronpedia(manifest["folder"], SOURCE)
    assert [r["feature_index"] for r in records] == list(range(D_SAE))
