"""`saeflow label --serve` over plain HTTP (no browser): token, file format, bad requests,
two tabs on one file, descriptions changing under the server, the disagreements page."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from saeflow.cli import main
from saeflow.core.errors import InputError
from saeflow.labels.labelling import label_interactively, open_session
from saeflow.labels.serve import (LabelService, disagreement_routes, label_routes, read_disagreements,
                                  start_server)

QUESTION = "Is this feature about digits?"
ARGS = ("digits", QUESTION, 5, 1)  # category, question, n, seed


@pytest.fixture(autouse=True)
def _fixed_commit(monkeypatch):
    monkeypatch.setenv("SAEFLOW_GIT_COMMIT", "test")


class Page:
    """A server in this process, and requests to it as the page makes them."""

    def __init__(self, routes):
        self.server, self.url = start_server(routes, 0)
        self.base, self.token = self.url.split("/?token=")
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def request(self, method, path, body=None, token=None, raw=None):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"X-Saeflow-Token": self.token if token is None else token})
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            status, text = err.code, err.read().decode()
        return status, (json.loads(text) if text.startswith("{") else text)

    def answer(self, row, label):
        return self.request("POST", "/api/answer", {"row": row, "label": label})

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve(tmp_path, descriptions):
    pages = []

    def start(out=tmp_path / "labels.json"):
        page = Page(label_routes(LabelService(open_session(out, descriptions, *ARGS))))
        pages.append(page)
        return page
    yield start
    for page in pages:
        page.close()


def saved(out):
    return {r["_row_id"]: r["label"] for r in json.loads(Path(out).read_text())["records"]}


def test_a_request_without_the_token_is_refused_and_changes_nothing(tmp_path, serve):
    page = serve()
    out = tmp_path / "labels.json"
    assert len(page.token) >= 24 and page.base.startswith("http://127.0.0.1:")
    for token in ("", "wrong", page.token[:-1]):
        for method, path, body in (("GET", "/", None), ("GET", "/api/state", None),
                                   ("POST", "/api/answer", {"row": 0, "label": "related"}),
                                   ("POST", "/api/save", {})):
            status, reply = page.request(method, path, body, token=token)
            assert status == 403 and "wrong or missing token" in reply["error"], (token, path)
    assert not out.exists()
    with urllib.request.urlopen(page.url, timeout=10) as response:  # the printed URL works as is
        assert "<title>saeflow label</title>" in response.read().decode()


def test_answers_make_the_terminal_tools_file_and_it_resumes_there(tmp_path, serve, descriptions):
    out = tmp_path / "labels.json"
    page = serve()
    status, state = page.request("GET", "/api/state")
    assert status == 200 and state["question"] == QUESTION and state["n"] == 5
    assert set(state) == {"n", "n_labelled", "question", "item", "done", "refused", "path"}
    assert set(state["item"]) == {"row", "description", "answer"}  # nothing but the description
    sample = open_session(out, descriptions, *ARGS).sample
    assert state["item"] == {"row": 0, "description": sample[0]["description"], "answer": None}
    assert page.answer(0, "related")[1]["item"]["row"] == 1
    assert page.answer(1, "not-related")[1]["item"]["row"] == 2
    status, back = page.request("GET", "/api/state?row=0")
    assert back["item"]["answer"] == "related"
    assert page.answer(0, "not-related")[1]["item"]["row"] == 2  # next unlabelled after row 0
    assert saved(out) == {0: "not-related", 1: "not-related"}
    data = json.loads(out.read_text())
    assert data["records"][0] == {"_row_id": 0, "feature_index": sample[0]["feature_index"],
                                  "feature_id": sample[0]["feature_id"],
                                  "description": sample[0]["description"], "label": "not-related"}
    assert data["n_labelled"] == 2 and data["labeller"] == "human" and data["seed"] == 1
    shown = io.StringIO()
    label_interactively(out, descriptions, *ARGS, stdin=io.StringIO("rq"), stdout=shown)
    assert "item 3/5 · 2 labelled" in shown.getvalue()  # the terminal tool resumes the page's file
    assert serve().request("GET", "/api/state")[1]["item"]["row"] == 3  # and the page resumes it
    assert page.request("POST", "/api/save", {})[0] == 200
    assert saved(out) == {0: "not-related", 1: "not-related", 2: "related"}


@pytest.mark.parametrize(("body", "message"), [
    ({"row": 0, "label": "perhaps"}, "unknown label 'perhaps'"),
    ({"row": 0, "label": "r"}, "unknown label 'r'"),
    ({"row": 5, "label": "related"}, "row 5 is not in the sample (0..4)"),
    ({"row": -1, "label": "related"}, "row -1 is not in the sample"),
    ({"row": True, "label": "related"}, "row True is not in the sample"),
    ({"row": "0", "label": "related"}, "row '0' is not in the sample"),
    ({"row": 0}, 'an answer is {"row"'),
    ({"row": 0, "label": "related", "feature_id": "x"}, 'an answer is {"row"'),
    ([0, "related"], 'an answer is {"row"'),
    (b"row=0&label=related", "the request body is not JSON"),
    (b"\xff\xfe", "the request body is not JSON")])
def test_a_malformed_answer_is_a_400_and_loses_nothing(tmp_path, serve, body, message):
    out = tmp_path / "labels.json"
    page = serve()
    page.answer(0, "related")
    before = out.read_bytes()
    raw = body if isinstance(body, bytes) else None
    status, reply = page.request("POST", "/api/answer", None if raw else body, raw=raw)
    assert status == 400 and message in reply["error"] and "\n" not in reply["error"]
    assert out.read_bytes() == before


def test_bad_paths_and_rows_in_a_get_are_4xx(serve):
    page = serve()
    assert page.request("GET", "/api/state?row=x")[0] == 400
    assert page.request("GET", "/api/state?row=9")[0] == 400
    assert page.request("GET", "/nowhere")[0] == 404
    assert page.request("GET", "/api/answer")[0] == 405


def test_two_tabs_on_one_file_lose_no_answer(tmp_path, serve):
    out = tmp_path / "labels.json"
    first, second = serve(), serve()  # two servers opened before any answer: the worst case
    first.answer(0, "related")
    second.answer(1, "not-related")  # second never saw row 0: it must re-read, not clobber
    first.answer(2, "related")
    assert saved(out) == {0: "related", 1: "not-related", 2: "related"}
    second.answer(0, "not-related")  # the same item twice: the last write wins, for that item
    assert saved(out) == {0: "not-related", 1: "not-related", 2: "related"}
    assert first.request("GET", "/api/state?row=0")[1]["item"]["answer"] == "not-related"

    threads = [threading.Thread(target=page.answer, args=(row, "related"))
               for row, page in ((3, first), (4, second), (1, first), (2, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert saved(out) == {0: "not-related", 1: "related", 2: "related", 3: "related", 4: "related"}
    assert first.request("GET", "/api/state")[1]["done"] is True


def test_descriptions_changing_under_the_server_refuse_answers_and_keep_the_labels(
        tmp_path, serve, descriptions):
    out = tmp_path / "labels.json"
    page = serve()
    page.answer(0, "related")
    page.answer(1, "related")
    before = out.read_bytes()
    data = json.loads(descriptions.read_text())
    data["records"][0]["description"] = "edited"
    descriptions.write_text(json.dumps(data))
    for _ in range(2):  # refused from then on
        status, reply = page.answer(2, "not-related")
        assert status == 409
        assert f"{descriptions} changed since this session started" in reply["error"]
        assert "2 labels are saved in" in reply["error"]
    assert page.request("POST", "/api/save", {})[0] == 409
    status, state = page.request("GET", "/api/state")
    assert status == 200 and "changed since this session started" in state["refused"]
    assert out.read_bytes() == before


def test_a_labels_file_spoilt_under_the_server_is_never_overwritten(tmp_path, serve):
    out = tmp_path / "labels.json"
    page = serve()
    page.answer(0, "related")
    out.write_text("my notes, not JSON")
    status, reply = page.answer(1, "related")
    assert status == 409 and "the labels file changed under the server" in reply["error"]
    assert out.read_text() == "my notes, not JSON"


def cli(out, descriptions, *extra):
    return ["label", "--descriptions", str(descriptions), "--category", "digits", "--question",
            QUESTION, "--out", str(out), "--n", "5", *extra]


def test_serve_refuses_what_the_terminal_tool_refuses_before_listening(tmp_path, descriptions, capsys):
    out = tmp_path / "labels.json"
    label_interactively(out, descriptions, *ARGS, stdin=io.StringIO("rn"), stdout=io.StringIO())
    before = out.read_bytes()
    for extra in (["--seed", "2"], ["--seed", "1", "--n", "6"], ["--seed", "1", "--category", "x"]):
        assert main(cli(out, descriptions, "--serve", "--port", "0", *extra)) == 2  # last --n wins
    assert "file was made with" in capsys.readouterr().err
    assert out.read_bytes() == before
    notes = tmp_path / "notes.json"
    notes.write_text("my notes, not JSON")
    assert main(cli(notes, descriptions, "--serve", "--port", "0")) == 2
    assert notes.read_text() == "my notes, not JSON"
    assert main(cli(out, descriptions, "--port", "0")) == 2  # --port belongs to --serve
    assert "--port: only with --serve" in capsys.readouterr().err


def test_the_command_prints_a_localhost_url_and_a_kill_loses_nothing(tmp_path, descriptions):
    out = tmp_path / "labels.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from saeflow.cli import main; sys.exit(main())",
         *cli(out, descriptions, "--seed", "1", "--serve", "--port", "0")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "SAEFLOW_GIT_COMMIT": "test"})
    try:
        line = proc.stdout.readline()
        match = re.fullmatch(r"Labelling page: (http://127\.0\.0\.1:(\d+)/\?token=([\w-]{32}))\n", line)
        assert match, line
        port = match.group(2)
        assert f"ssh -N -L {port}:127.0.0.1:{port}" in proc.stdout.readline()
        base, token = match.group(1).split("/?token=")
        for row, label in ((0, "related"), (1, "not-related"), (2, "related")):
            req = urllib.request.Request(f"{base}/api/answer", method="POST",
                                         data=json.dumps({"row": row, "label": label}).encode(),
                                         headers={"X-Saeflow-Token": token})
            with urllib.request.urlopen(req, timeout=10) as response:
                assert response.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert saved(out) == {0: "related", 1: "not-related", 2: "related"}


def test_disagreements_page_lists_only_disagreements(tmp_path, descriptions, capsys):
    human = tmp_path / "human.json"
    label_interactively(human, descriptions, *ARGS, stdin=io.StringIO("rrnnr"), stdout=io.StringIO())
    records = json.loads(human.read_text())["records"]
    flip = {records[1]["feature_id"], records[2]["feature_id"]}
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"records": [
        {"feature_id": r["feature_id"], "feature_index": r["feature_index"],
         "description": r["description"],
         "label": ({"related": "not-related", "not-related": "related"}[r["label"]]
                   if r["feature_id"] in flip else r["label"])} for r in records]}))
    merged = tmp_path / "agreement.csv"
    assert main(["agreement", "--human", str(human), "--model", str(model), "--json",
                 str(tmp_path / "agreement.json"), "--merged", str(merged), "--n-boot", "10"]) == 0
    table = read_disagreements(merged)
    assert (table["n_compared"], len(table["disagreements"])) == (5, 2)
    page = Page(disagreement_routes(table))
    try:
        status, text = page.request("GET", "/disagreements")
        assert status == 200 and "2 of 5 compared features disagree" in text
        for r in records:
            assert (f"{r['description']}<" in text) == (r["feature_id"] in flip)
        assert page.request("GET", "/disagreements", token="nope")[0] == 403
    finally:
        page.close()
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match=r"bad.csv: <header>: missing columns"):
        read_disagreements(bad)


def test_the_disagreements_command_serves_the_page_and_refuses_a_bad_csv(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert main(["disagreements", str(bad), "--port", "0"]) == 2
    assert "bad.csv: <header>: missing columns" in capsys.readouterr().err
    merged = tmp_path / "merged.csv"
    merged.write_text("feature_index,feature_id,description,human_label,model_label,human,model\n"
                      "1,toy-1,<b>digits</b>,related,not-related,1,0\n"
                      "2,toy-2,quotes,related,related,1,1\n")
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from saeflow.cli import main; sys.exit(main())",
         "disagreements", str(merged), "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        match = re.fullmatch(r"Disagreements page: (http://127\.0\.0\.1:\d+/\?token=\S+)\n",
                             proc.stdout.readline())
        assert match
        with urllib.request.urlopen(match.group(1), timeout=10) as response:
            page = response.read().decode()
        assert "1 of 2 compared features disagree" in page
        assert "&lt;b&gt;digits&lt;/b&gt;" in page and "quotes" not in page.split("</p>", 1)[1]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
