"""Classification backends: keyword, an OpenAI-compatible LLM on loopback, and file import."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import sparse

from saeflow.labels.classify import (
    LLMConfig, classify, import_classification, keyword_classify, llm_classify, parse_answer,
    resolve_categories,
)
from saeflow.labels.describe import describe_features
from saeflow.toy.categories import toy_categories
from saeflow.core.errors import InputError
from saeflow.testing.local_study import chat_reply, send_json

SECRET = "sk-test-not-a-real-key-1234"
REPO = Path(__file__).resolve().parents[2]


def records(texts):
    return [{"feature_id": f"s-{i}", "feature_index": i, "description": t} for i, t in enumerate(texts)]


def test_keyword_backend_matches_patterns_case_insensitively():
    out = keyword_classify(records(["Fires on DIGITS", "quotes", "numbers 3"]), [r"digit", r"\d"])
    assert [r["label"] for r in out] == ["related", "not-related", "related"]
    with pytest.raises(InputError, match=r"config: digits.patterns\[1\]: invalid regex"):
        keyword_classify(records(["x"]), ["ok", "(unclosed"], "config", "digits.patterns")


def test_toy_patterns_read_generated_descriptions():
    vocab = ["<bos>", " 3", '"', " price", " x", "'"]
    tokens = np.array([[0, 1, 2, 3, 4, 5]])
    positions = np.arange(6)[None, :]
    codes = sparse.csr_matrix(np.eye(6, dtype=np.float32)[:, 1:])  # feature f fires on token f+1
    descs = describe_features(codes, tokens, positions, lambda ids: "".join(vocab[i] for i in ids), "t")
    cats = toy_categories()
    labels = {name: [r["label"] for r in keyword_classify(descs, c["patterns"])]
              for name, c in cats.items()}
    assert labels["digits"] == ["related", "not-related", "not-related", "not-related", "not-related"]
    assert labels["string-literal"] == ["not-related", "related", "related", "not-related", "related"]


@pytest.mark.parametrize(("reply", "label"), [
    ("related", "related"), ("Not related.", "not-related"), ("**Related**", "related"),
    ("Answer: not-related", "not-related"), ("no", "not-related"), ("perhaps", "unknown"),
    ("", "unknown")])
def test_parse_answer(reply, label):
    assert parse_answer(reply) == label


class FakeLLM:
    """A chat-completions server on 127.0.0.1 that fails on demand and tracks concurrency."""

    def __init__(self, fail_first=0, always_fail_after=None, status=500):
        self.calls, self.in_flight, self.max_in_flight, self.auth = 0, 0, 0, set()
        self.fail_first, self.always_fail_after, self.status = fail_first, always_fail_after, status
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.calls += 1
                    call = fake.calls
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    fake.auth.add(self.headers.get("Authorization"))
                time.sleep(0.02)
                with fake.lock:
                    fake.in_flight -= 1
                failing = call <= fake.fail_first or (
                    fake.always_fail_after is not None and call > fake.always_fail_after)
                if failing:
                    self.send_response(fake.status)
                    self.end_headers()
                    return
                text = body["messages"][-1]["content"].split("Feature description:")[1]
                reply = ("related" if "digit" in text else "I cannot say" if "weird" in text
                         else "not-related")
                send_json(self, chat_reply(reply))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def llm_env(monkeypatch):
    monkeypatch.setenv("SAEFLOW_TEST_KEY", SECRET)


TEXTS = ["digits 1 2 3", "quotes", "weird stuff", "digit 9", "brackets", "operators"]


def test_llm_backend_retries_caches_bounds_concurrency_and_counts_unknown(tmp_path, llm_env):
    server = FakeLLM(fail_first=1)
    try:
        cfg = {"base_url": server.url, "model": "tiny", "api_key_env": "SAEFLOW_TEST_KEY",
               "cache_dir": str(tmp_path / "cache"), "concurrency": 2, "backoff_s": 0.01}
        payload = classify(records(TEXTS), "digits",
                           {"backend": "llm", "question": "Digits?", "llm": cfg})
        assert [r["label"] for r in payload["records"]] == [
            "related", "not-related", "unknown", "related", "not-related", "not-related"]
        assert payload["n_unknown"] == 1 and payload["counts"]["unknown"] == 1
        assert server.calls == len(TEXTS) + 1  # one 500 retried
        assert server.max_in_flight <= 2
        assert server.auth == {f"Bearer {SECRET}"}
        again = classify(records(TEXTS), "digits", {"backend": "llm", "question": "Digits?", "llm": cfg})
        assert server.calls == len(TEXTS) + 1  # everything answered from the cache
        assert again["records"] == payload["records"]
        for path in (tmp_path / "cache").iterdir():
            assert SECRET not in path.read_text()
        assert SECRET not in json.dumps(payload)
    finally:
        server.close()


def test_llm_interrupted_run_pays_only_for_the_rest(tmp_path, llm_env):
    cfg = LLMConfig.from_dict(dict(base_url="http://127.0.0.1:9/v1", model="tiny",
                                   api_key_env="SAEFLOW_TEST_KEY", cache_dir=str(tmp_path / "cache"),
                                   concurrency=1, max_retries=1, backoff_s=0.0))
    broken = FakeLLM(always_fail_after=3)
    try:
        with pytest.raises(InputError, match="HTTP 500 after 2 attempts"):
            llm_classify(records(TEXTS), "digits", "Digits?",
                         LLMConfig(**{**cfg.to_dict(), "base_url": broken.url}))
    finally:
        broken.close()
    assert len(list((tmp_path / "cache").iterdir())) == 3
    healthy = FakeLLM()
    try:
        out = llm_classify(records(TEXTS), "digits", "Digits?",
                           LLMConfig(**{**cfg.to_dict(), "base_url": healthy.url}))
        assert healthy.calls == len(TEXTS) - 3 and len(out) == len(TEXTS)
    finally:
        healthy.close()


def test_llm_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("SAEFLOW_TEST_KEY", raising=False)
    cfg = {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "SAEFLOW_TEST_KEY",
           "cache_dir": str(tmp_path)}
    with pytest.raises(InputError, match="api_key_env: environment variable SAEFLOW_TEST_KEY is not set"):
        classify(records(["x"]), "c", {"backend": "llm", "question": "q", "llm": cfg})
    with pytest.raises(InputError, match="config: temperture: unknown key"):
        LLMConfig.from_dict({**cfg, "temperture": 0})
    refused = FakeLLM(always_fail_after=0, status=401)
    try:
        monkeypatch.setenv("SAEFLOW_TEST_KEY", "k")
        with pytest.raises(InputError, match="HTTP 401"):
            classify(records(["x"]), "c", {"backend": "llm", "question": "q",
                                           "llm": {**cfg, "base_url": refused.url}})
        assert refused.calls == 1  # a refused key is not retried
    finally:
        refused.close()


def test_file_backend_imports_lists_dicts_and_id_suffixes(tmp_path):
    descs = records(["zero", "one", "two"])
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps([{"index": "0", "label": "related"},
                                   {"feature_index": 2, "label": "Not Related"}]))
    out = import_classification(as_list, descs)
    assert [(r["feature_id"], r["description"], r["label"]) for r in out] == [
        ("s-0", "zero", "related"), ("s-2", "two", "not-related")]
    as_dict = tmp_path / "dict.json"
    as_dict.write_text(json.dumps({"src-1": {"label": "related", "description": "mine"}}))
    out = classify(descs, "c", {"backend": "file", "path": str(as_dict)})
    assert out["records"] == [{"feature_id": "s-1", "feature_index": 1, "description": "mine",
                               "label": "related"}]
    assert out["counts"] == {"related": 1, "not-related": 0, "unknown": 0}


def test_file_backend_bad_input(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps([{"index": 1, "label": "related"}, {"index": 1, "label": "related"}]))
    with pytest.raises(InputError, match=r"feature_index: duplicate rows for features \[1\]"):
        import_classification(path)
    path.write_text(json.dumps([{"index": 1, "label": "maybe"}]))
    with pytest.raises(InputError, match=r"records\[0\].label: unknown label 'maybe'"):
        import_classification(path)
    path.write_text(json.dumps([{"index": 1}]))
    with pytest.raises(InputError, match=r"records\[0\].label: missing"):
        import_classification(path)
    path.write_text('[{"index": 1,')
    with pytest.raises(InputError, match="line 1: malformed JSON"):
        import_classification(path)
    with pytest.raises(InputError, match="c.backend: unknown backend 'magic'"):
        classify(records(["x"]), "c", {"backend": "magic"})


def test_an_imported_classification_beyond_the_saes_width_is_refused(tmp_path):
    from saeflow.labels.classify import classify_stage

    descriptions = tmp_path / "descriptions.json"
    descriptions.write_text(json.dumps({"source": "s", "hook": "blocks.0.hook_resid_post",
                                        "d_sae": 3, "records": records(["a", "b", "c"])}))
    path = tmp_path / "theirs.json"
    path.write_text(json.dumps([{"index": 1, "label": "yes"}, {"index": 7, "label": "no"}]))
    out = tmp_path / "classified.json"
    cats = {"animals": {"backend": "file", "question": "Animals?", "path": str(path)}}
    with pytest.raises(InputError) as err:
        classify_stage(descriptions, "animals", cats, out)
    assert str(err.value) == (f"{path}: feature_index: rows of features beyond the SAE's "
                              "width (d_sae 3 of blocks.0.hook_resid_post, the SAE of "
                              f"{descriptions}): 7")
    assert not out.exists()


def test_config_categories_resolve_and_need_a_question():
    # the toy config spells out the toy world's categories (the library never imports the toy)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    resolved = resolve_categories(config["labels"]["categories"])
    assert {name: {k: v for k, v in cat.items() if k != "backend"}
            for name, cat in resolved.items()} == toy_categories()
    assert set(toy_categories()) == {"digits", "string-literal"}
    with pytest.raises(InputError, match="config: labels.categories.digits.question: missing"):
        resolve_categories({"digits": {"backend": "keyword", "patterns": ["x"]}})
    with pytest.raises(InputError, match="labels.categories: expected a mapping"):
        resolve_categories([])
