"""A labels file in the hands of several writers, and human labels that do not fit the SAE.

Every writer merges under one lock, so the terminal tool and the page lose no answer
whichever writes last; an answer given twice to one row keeps the last and records the one
it replaced. Rule import_human_labels refuses labels of another SAE, of features beyond its
width or of features the descriptions do not have, naming the file, the field and the ids.
"""

from __future__ import annotations

import io
import json
import threading

import pytest

from saeflow.core.errors import InputError
from saeflow.labels.labelling import import_human_labels_stage, open_session, run_session
from saeflow.labels.serve import LabelService

QUESTION = "Is this feature about digits?"
SAMPLE = {"n": 5, "seed": 1}


@pytest.fixture(autouse=True)
def _fixed_commit(monkeypatch):
    monkeypatch.setenv("SAEFLOW_GIT_COMMIT", "test")


def on_disk(path):
    data = json.loads(path.read_text())
    return {r["_row_id"]: r["label"] for r in data["records"]}, data["replaced"]


def session(out, descriptions, n=5):
    return open_session(out, descriptions, "digits", QUESTION, n, 1)


def test_a_stale_terminal_answer_after_the_page_saved_keeps_every_answer(tmp_path, descriptions):
    out = tmp_path / "labels.json"
    terminal = session(out, descriptions)  # opened before the page wrote anything: stale
    page = LabelService(session(out, descriptions))
    for row in range(5):
        page.answer({"row": row, "label": "related"})
    run_session(terminal, iter("nq"), io.StringIO())  # answers row 0 from its stale copy
    labels, replaced = on_disk(out)
    assert labels == {0: "not-related", 1: "related", 2: "related", 3: "related", 4: "related"}
    first = terminal.sample[0]["feature_id"]
    assert replaced == [{"_row_id": 0, "feature_id": first, "label": "related",
                         "replaced_by": "not-related"}]  # last write wins, the loser kept
    page.answer({"row": 0, "label": "related"})  # and back: both replacements on record
    labels, replaced = on_disk(out)
    assert labels[0] == "related" and [r["label"] for r in replaced] == ["related", "not-related"]


def test_a_stale_session_that_only_saves_or_quits_loses_nothing(tmp_path, descriptions):
    out = tmp_path / "labels.json"
    terminal = session(out, descriptions)
    page = LabelService(session(out, descriptions))
    for row in range(5):
        page.answer({"row": row, "label": "not-related"})
    shown = io.StringIO()
    run_session(terminal, iter("sq"), shown)
    assert on_disk(out) == ({r: "not-related" for r in range(5)}, [])
    assert "saved 5 labels" in shown.getvalue()  # it took in the page's answers


def test_the_page_resumes_a_terminal_answer_given_after_it_opened(tmp_path, descriptions):
    out = tmp_path / "labels.json"
    page = LabelService(session(out, descriptions))
    page.answer({"row": 1, "label": "related"})
    run_session(session(out, descriptions), iter("rq"), io.StringIO())  # row 0
    assert page.answer({"row": 2, "label": "related"})["n_labelled"] == 3
    assert on_disk(out)[0] == {0: "related", 1: "related", 2: "related"}


def test_writers_in_threads_lose_no_answer(tmp_path, descriptions):
    out = tmp_path / "labels.json"
    writers = [session(out, descriptions, n=20) for _ in range(2)]

    def label(s, rows):
        for row in rows:
            s.answer(row, "related")

    threads = [threading.Thread(target=label, args=(s, range(k, 20, 2)))
               for k, s in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert on_disk(out) == ({r: "related" for r in range(20)}, [])


# --- rule import_human_labels: labels that do not fit this run's SAE --------------------------

def describe(path, source="src", d_sae=30, indices=range(20)):
    path.write_text(json.dumps({"source": source, "hook": "blocks.0.hook_resid_post",
                                "d_sae": d_sae, "records": [
                                    {"feature_id": f"{source}-{i}", "feature_index": i,
                                     "description": f"text of feature {i}"} for i in indices]}))
    return path


def saeflow_file(tmp_path, descriptions):
    """A labels file as saeflow label writes it, over ``descriptions``."""
    out = tmp_path / "mine.json"
    run_session(session(out, descriptions), iter("rnrnr"), io.StringIO())
    return out


def foreign_file(tmp_path, indices):
    """Another tool's labels: a list of records, no source."""
    out = tmp_path / "theirs.json"
    out.write_text(json.dumps([{"feature_index": i, "label": "yes"} for i in indices]))
    return out


def run_import(labels, descriptions, tmp_path):
    out = tmp_path / "results" / "human.json"
    import_human_labels_stage(labels, str(labels), descriptions, "digits", QUESTION, SAMPLE, out)
    return out


def test_labels_of_this_sae_are_imported(tmp_path):
    descriptions = describe(tmp_path / "descriptions.json")
    for labels in (saeflow_file(tmp_path, descriptions), foreign_file(tmp_path, [3, 19])):
        out = run_import(labels, descriptions, tmp_path)
        assert json.loads(out.read_text())["n_labelled"] == len(on_disk_records(labels))


def on_disk_records(path):
    data = json.loads(path.read_text())
    return data["records"] if isinstance(data, dict) else data


@pytest.mark.parametrize(("case", "field", "problem"), [
    ("another source", "source",
     "labels made for another SAE: the file's features are of 'other', this run's "
     "({descriptions}) of 'src'; e.g. other-"),
    ("another source, older file", "sample_feature_ids",
     "labels made for another SAE: the file's features are of 'other'"),
    ("beyond the width", "feature_index",
     "labels of features beyond the SAE's width (d_sae 30 of blocks.0.hook_resid_post): "
     "30, 41"),
    ("not described", "feature_index",
     "labels of features {descriptions} does not describe: 25"),
], ids=["another-source", "another-source-older-file", "beyond-width", "not-described"])
def test_labels_that_do_not_fit_the_sae_are_refused(tmp_path, case, field, problem):
    descriptions = describe(tmp_path / "descriptions.json")
    if case.startswith("another source"):
        labels = saeflow_file(tmp_path, describe(tmp_path / "other.json", source="other"))
        if case.endswith("older file"):  # written before the file recorded its source
            data = json.loads(labels.read_text())
            del data["source"]
            labels.write_text(json.dumps(data))
    else:
        labels = foreign_file(tmp_path, [3, 30, 41] if case == "beyond the width" else [3, 25])
    before = labels.read_bytes()
    with pytest.raises(InputError) as err:
        run_import(labels, descriptions, tmp_path)
    assert str(err.value).startswith(f"{labels}: {field}: "
                                     + problem.format(descriptions=descriptions))
    assert "\n" not in str(err.value)
    assert labels.read_bytes() == before and not (tmp_path / "results").exists()
