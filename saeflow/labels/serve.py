"""``saeflow label --serve``: the labelling tool as one local web page, and the disagreements page.

The page labels the same sample into the same file as the terminal tool (a
:class:`~saeflow.labels.labelling.LabelSession` and its atomic ``save``): the same refusals
hold before the server starts, and every answer is on disk before the page moves on. The
server binds 127.0.0.1 only (reach it from elsewhere through an SSH port-forward) and answers
only requests carrying the random token printed in its URL.

Several tabs, servers and terminal sessions on one file lose no answer: an answer names its
row, and the server re-reads the file under the lock every writer of a labels file takes
(:func:`~saeflow.labels.labelling.labels_lock`), sets that one row and writes the file back
(last write wins per item, the replaced answer kept). A descriptions file that changes under
a running session would make the rows mean other features, so from then on answers are
refused (everything already labelled stays).

Routes: ``GET /`` (the page), ``GET /api/state?row=i``, ``POST /api/answer`` (``{"row": i,
"label": "related" | "not-related"}``), ``POST /api/save``; ``GET /disagreements`` on the
``saeflow disagreements`` server. Errors are HTTP 4xx with ``{"error": "<one line>"}``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import secrets
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

from saeflow.core.errors import InputError
from saeflow.core.io import read_text
from saeflow.formats.labels import NOT_RELATED, RELATED, normalise_label
from saeflow.labels.labelling import LabelSession, open_session
from saeflow.labels.serve_page import disagreements_page, label_page

HOST = "127.0.0.1"
TOKEN_HEADER = "X-Saeflow-Token"
MAX_BODY = 64 * 1024


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` and a one-line message for the page."""

    def __init__(self, status: int, message: str):
        self.status, self.message = status, message
        super().__init__(message)


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class LabelService:
    """What the page talks to: one labels file, its fixed sample, the descriptions' digest."""

    def __init__(self, session: LabelSession):
        self.session = session
        self.digest = file_digest(session.descriptions)
        self.refused: str | None = None
        self._lock = threading.Lock()  # this server's threads share one session

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One request at a time on the session; a file another writer made unreadable is a
        409 and nothing is written (the session takes the file's own lock to merge)."""
        with self._lock:
            try:
                yield
            except InputError as err:
                raise RequestError(409, f"the labels file changed under the server: {err}; "
                                        "nothing written") from None

    def _check_descriptions(self) -> None:
        if self.refused is None:
            try:
                same = file_digest(self.session.descriptions) == self.digest
            except OSError:
                same = False
            if not same:
                self.refused = (f"{self.session.descriptions} changed since this session started, "
                                "so the rows may now be other features; answers are refused. "
                                f"{len(self.session.labels)} labels are saved in "
                                f"{self.session.path}; restart saeflow label --serve")
        if self.refused:
            raise RequestError(409, self.refused)

    def state(self, row: int | None = None) -> dict[str, Any]:
        """Item ``row`` (default: the first unlabelled) and the progress, for the page."""
        with self._locked():
            self.session.sync()  # the answers on disk now, another tab's included
        s = self.session
        if row is None:
            row = s.next_unlabelled()
        elif not 0 <= row < len(s.sample):
            raise RequestError(400, f"row {row} is not in the sample (0..{len(s.sample) - 1})")
        with contextlib.suppress(RequestError):  # the page still shows where it stands
            self._check_descriptions()
        return self._after(row)

    def answer(self, body: Any) -> dict[str, Any]:
        """Set one row's label in the file; the state of the next unlabelled row after it."""
        if not isinstance(body, dict) or set(body) != {"row", "label"}:
            raise RequestError(400, 'an answer is {"row": <int>, "label": "related" | "not-related"}')
        row, label = body["row"], body["label"]
        n = len(self.session.sample)
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < n:
            raise RequestError(400, f"row {row!r} is not in the sample (0..{n - 1})")
        if label not in (RELATED, NOT_RELATED):
            raise RequestError(400, f"unknown label {label!r} (expected {RELATED} or {NOT_RELATED})")
        with self._locked():
            self._check_descriptions()
            self.session.answer(row, label)
            nxt = self.session.next_unlabelled(row + 1)
        return self._after(nxt)

    def save(self) -> dict[str, Any]:
        """The ``s`` key: write the file again (only once it holds an answer)."""
        with self._locked():
            self._check_descriptions()
            if self.session.labels or self.session.path.exists():
                self.session.save()
        return self._after(self.session.next_unlabelled())

    def _after(self, row: int | None) -> dict[str, Any]:
        s = self.session
        item = None if row is None else {"row": row, "description": s.sample[row]["description"],
                                         "answer": s.labels.get(row)}
        return {"n": len(s.sample), "n_labelled": len(s.labels), "question": s.question,
                "item": item, "done": len(s.labels) == len(s.sample), "refused": self.refused,
                "path": str(s.path)}


def read_disagreements(path: str | Path) -> dict[str, Any]:
    """Rows of an agreement's merged CSV where human and classifier give different answers."""
    rows = list(csv.DictReader(io.StringIO(read_text(path))))
    need = {"feature_id", "description", "human_label", "model_label"}
    if not rows:
        raise InputError(path, "<file>", "no rows (is this saeflow agreement --merged output?)")
    missing = need - set(rows[0])
    if missing:
        raise InputError(path, "<header>", f"missing columns {sorted(missing)} (is this saeflow "
                                           "agreement --merged output?)")
    compared, unknown, differ = 0, 0, []
    for row in rows:
        human, model = normalise_label(row["human_label"]), normalise_label(row["model_label"])
        if human not in (RELATED, NOT_RELATED) or model not in (RELATED, NOT_RELATED):
            unknown += 1
            continue
        compared += 1
        if human != model:
            differ.append({"feature_id": row["feature_id"], "description": row["description"],
                           "human_label": human, "model_label": model})
    return {"path": str(path), "n_rows": len(rows), "n_compared": compared,
            "n_not_compared": unknown, "disagreements": differ}


Route = Callable[[str, dict[str, list[str]], Any], tuple[int, str, bytes]]


def _json(status: int, data: Any) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(data).encode()


def label_routes(service: LabelService) -> dict[tuple[str, str], Route]:
    def row_of(query: dict[str, list[str]]) -> int | None:
        if "row" not in query:
            return None
        try:
            return int(query["row"][0])
        except ValueError:
            raise RequestError(400, f"row {query['row'][0]!r} is not an integer") from None

    return {("GET", "/"): lambda _p, _q, _b: (200, "text/html; charset=utf-8", label_page()),
            ("GET", "/api/state"): lambda _p, q, _b: _json(200, service.state(row_of(q))),
            ("POST", "/api/answer"): lambda _p, _q, b: _json(200, service.answer(b)),
            ("POST", "/api/save"): lambda _p, _q, _b: _json(200, service.save())}


def disagreement_routes(table: dict[str, Any]) -> dict[tuple[str, str], Route]:
    page = disagreements_page(table)
    return {("GET", "/"): lambda _p, _q, _b: (200, "text/html; charset=utf-8", page),
            ("GET", "/disagreements"): lambda _p, _q, _b: (200, "text/html; charset=utf-8", page)}


def make_handler(routes: dict[tuple[str, str], Route], token: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "saeflow"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
            pass  # the URL carries the token: keep it out of logs

        def _send(self, status: int, ctype: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _handle(self, method: str) -> None:
            try:
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                given = self.headers.get(TOKEN_HEADER) or (query.get("token") or [""])[0]
                if not secrets.compare_digest(given.encode(), token.encode()):
                    raise RequestError(403, "wrong or missing token: open the URL the server printed")
                route = routes.get((method, url.path))
                if route is None:
                    known = {p for _, p in routes}
                    raise RequestError(405 if url.path in known else 404,
                                       f"no {method} {url.path} here")
                self._send(*route(url.path, query, self._body() if method == "POST" else None))
            except RequestError as err:
                self._send(*_json(err.status, {"error": err.message}))

        def _body(self) -> Any:
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                raise RequestError(411, "a POST needs a Content-Length") from None
            if not 0 <= length <= MAX_BODY:
                raise RequestError(413, f"request body over {MAX_BODY} bytes")
            raw = self.rfile.read(length)
            try:
                return json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise RequestError(400, "the request body is not JSON") from None

        def do_GET(self) -> None:  # noqa: N802 - http.server's names
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

    return Handler


def start_server(routes: dict[tuple[str, str], Route], port: int,
                 token: str | None = None) -> tuple[ThreadingHTTPServer, str]:
    """A server on 127.0.0.1:``port`` (0: any free port), not yet serving; and its URL."""
    token = token or secrets.token_urlsafe(24)
    try:
        server = ThreadingHTTPServer((HOST, port), make_handler(routes, token))
    except OSError as err:
        raise InputError("arguments", "--port", f"cannot listen on {HOST}:{port} ({err.strerror}); "
                                                "choose another --port (0 picks a free one)") from None
    server.daemon_threads = True
    return server, f"http://{HOST}:{server.server_address[1]}/?token={token}"


def serve_forever(server: ThreadingHTTPServer, url: str, what: str, stdout: TextIO) -> None:
    port = server.server_address[1]
    stdout.write(f"{what}: {url}\n(from another machine: ssh -N -L {port}:{HOST}:{port} "
                 "<this host>, then open the same URL there; Ctrl-C stops)\n")
    stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


def serve_labels(out: str | Path, descriptions_path: str | Path, category: str, question: str,
                 n: int = 300, seed: int = 42, port: int = 8765,
                 stdout: TextIO | None = None) -> LabelService:
    """``saeflow label --serve``: the refusals of the terminal tool, then the page until Ctrl-C."""
    from saeflow.labels.labelling import Interrupted

    service = LabelService(open_session(out, descriptions_path, category, question, n, seed))
    server, url = start_server(label_routes(service), port)
    try:
        serve_forever(server, url, "Labelling page", stdout or sys.stdout)
    except KeyboardInterrupt:
        s = service.session
        raise Interrupted(f"stopped: {len(s.labels)}/{len(s.sample)} labels saved in {s.path}; "
                          "run the same command again to resume") from None
    return service


def serve_disagreements(merged: str | Path, port: int = 8765, stdout: TextIO | None = None) -> None:
    """``saeflow disagreements``: the human/classifier disagreements page until Ctrl-C."""
    server, url = start_server(disagreement_routes(read_disagreements(merged)), port)
    with contextlib.suppress(KeyboardInterrupt):
        serve_forever(server, url, "Disagreements page", stdout or sys.stdout)
