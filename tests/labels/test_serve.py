"""`saeflow label --serve` in a real browser (headless chromium under Selenium): clicks and keys,
back and change, reload and resume, a killed server loses no answer, errors shown on the page."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from saeflow.labels.labelling import open_session
from tests.browser.chrome import assert_not_blank, wait_until

QUESTION = "Is this feature about digits?"
N = 6


@pytest.fixture
def server(tmp_path, descriptions):
    """``saeflow label --serve --port 0`` as a process; yields (process, URL); always stopped."""
    procs = []

    def start():
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from saeflow.cli import main; sys.exit(main())",
             "label", "--descriptions", str(descriptions), "--category", "digits", "--question",
             QUESTION, "--out", str(tmp_path / "labels.json"), "--n", str(N), "--seed", "1",
             "--serve", "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "SAEFLOW_GIT_COMMIT": "test"})
        procs.append(proc)
        line = proc.stdout.readline()
        match = re.match(r"Labelling page: (http://127\.0\.0\.1:\d+/\?token=\S+)$", line)
        assert match, f"{line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        return proc, match.group(1)
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=20)


def body(browser, name):
    return browser.find_element("tag name", "body").get_attribute(f"data-{name}")


def at(browser, row, labelled):
    """Wait until the page has settled on ``row`` (or "done") with ``labelled`` answers."""
    want = ("done" if row == "done" else str(row), str(labelled), "0")
    wait_until(browser, lambda d: (body(d, "row"), body(d, "labelled"), body(d, "busy")) == want,
               f"page never showed row {row} with {labelled} labelled "
               f"(at {body(browser, 'row')}, {body(browser, 'labelled')})")


def text(browser, element_id):
    return browser.find_element("id", element_id).text


def press(browser, keys):
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).send_keys(keys).perform()


def saved(out):
    return {r["_row_id"]: r["label"] for r in json.loads(Path(out).read_text())["records"]}


def test_label_by_clicks_and_keys_back_reload_and_kill(browser, server, tmp_path, descriptions):
    out = tmp_path / "labels.json"
    sample = open_session(out, descriptions, "digits", QUESTION, N, 1).sample
    proc, url = server()
    browser.get(url)
    at(browser, 0, 0)
    assert text(browser, "position") == f"item 1 / {N}"
    assert text(browser, "question") == QUESTION
    assert text(browser, "description") == sample[0]["description"]
    page = browser.find_element("tag name", "body").text
    assert not any(r["feature_id"] in page for r in sample)  # the description and question only
    progress = browser.find_element("id", "progress")
    assert (progress.get_attribute("value"), progress.get_attribute("max")) == ("0", str(N))

    browser.find_element("id", "related").click()
    at(browser, 1, 1)
    press(browser, "n")
    at(browser, 2, 2)
    browser.find_element("id", "not-related").click()
    at(browser, 3, 3)
    assert saved(out) == {0: "related", 1: "not-related", 2: "not-related"}

    press(browser, "b")  # back to item 3 and change it
    at(browser, 2, 3)
    assert text(browser, "answer") == "your answer so far: not-related"
    press(browser, "r")
    at(browser, 3, 3)
    browser.find_element("id", "back").click()
    press(browser, "b")  # keys are queued behind the click: two items back
    at(browser, 1, 3)
    assert saved(out) == {0: "related", 1: "not-related", 2: "related"}

    browser.refresh()  # a reopened page resumes at the first unlabelled item
    at(browser, 3, 3)
    assert browser.find_element("id", "progress").get_attribute("value") == "3"
    press(browser, "s")
    wait_until(browser, lambda d: text(d, "status").startswith("saved 3 labels to"), "no save")
    press(browser, "nr")  # typed ahead: each key answers the item shown after the last
    at(browser, 5, 5)
    assert saved(out) == {0: "related", 1: "not-related", 2: "related", 3: "not-related",
                          4: "related"}
    shot = tmp_path / "label-page.png"
    browser.save_screenshot(str(shot))
    assert_not_blank(shot.read_bytes())

    proc.terminate()  # killed mid-session: every answered item is in the file
    proc.wait(timeout=20)
    press(browser, "n")
    wait_until(browser, lambda d: text(d, "error"), "a dead server shows no error on the page")
    assert saved(out) == {0: "related", 1: "not-related", 2: "related", 3: "not-related",
                          4: "related"}
    assert json.loads(out.read_text())["n_labelled"] == 5

    _, url = server()  # a new server resumes at the one item left, then is done
    browser.get(url)
    at(browser, 5, 5)
    press(browser, "n")
    at(browser, "done", N)
    assert text(browser, "position") == f"done: all {N} items labelled"
    press(browser, "b")
    at(browser, N - 1, N)
    assert len(saved(out)) == N


def test_errors_are_one_json_line_on_the_page_and_lose_nothing(browser, server, tmp_path,
                                                               descriptions):
    out = tmp_path / "labels.json"
    _, url = server()
    base = url.split("/?token=")[0]
    browser.get(f"{base}/?token=wrong")
    assert "wrong or missing token" in browser.find_element("tag name", "body").text
    browser.get(url)
    at(browser, 0, 0)
    press(browser, "r")
    at(browser, 1, 1)
    before = out.read_bytes()
    data = json.loads(descriptions.read_text())
    data["records"][3]["description"] = "edited while labelling"
    descriptions.write_text(json.dumps(data))
    press(browser, "n")
    wait_until(browser, lambda d: text(d, "error"), "the refusal is not shown")
    error = json.loads(text(browser, "error"))
    assert "changed since this session started" in error["error"]
    assert "1 labels are saved in" in error["error"]
    at(browser, 1, 1)  # still on the item, nothing applied
    assert out.read_bytes() == before
    browser.refresh()  # a reload shows the refusal too, and keeps everything
    at(browser, 1, 1)
    assert "changed since this session started" in text(browser, "error")
    assert out.read_bytes() == before
