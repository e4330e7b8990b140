"""The human-labelling tool: sampling, scripted sessions, resume, refusal, kill-safety, oracle."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saeflow.cli import main
from saeflow.core.errors import InputError
from saeflow.labels.labelling import label_interactively, open_session, oracle_labels, run_session, sample_features
from saeflow.testing.workspace import as_from_a_terminal

QUESTION = "Is this feature about digits?"


def label(out, descriptions, keys, n=5, seed=1, category="digits", question=QUESTION):
    shown = io.StringIO()
    session = label_interactively(out, descriptions, category, question, n, seed,
                                  stdin=io.StringIO(keys), stdout=shown)
    return session, shown.getvalue()


def label_process(out, descriptions):
    """``saeflow label`` in a child process whose stdin stays open: it waits for keys."""
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; from saeflow.cli import main; sys.exit(main())",
         "label", "--descriptions", str(descriptions), "--category", "digits",
         "--question", QUESTION, "--out", str(out), "--n", "5"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "SAEFLOW_GIT_COMMIT": "test"}, preexec_fn=as_from_a_terminal)


def saved(out):
    return json.loads(Path(out).read_text())


def test_sample_is_seeded_and_independent_of_row_order():
    recs = [{"feature_id": f"s-{i}", "feature_index": i, "description": ""} for i in range(50)]
    a = sample_features(recs, 10, seed=3)
    assert a == sample_features(list(reversed(recs)), 10, seed=3)
    assert a != sample_features(recs, 10, seed=4)
    assert len({r["feature_id"] for r in a}) == 10
    assert len(sample_features(recs, 50, seed=3)) == 50
    with pytest.raises(InputError, match="n: sample of 500 is larger than the 50 described"):
        sample_features(recs, 500, seed=3)
    with pytest.raises(InputError, match="n: sample size must be a positive integer"):
        sample_features(recs, 0, seed=3)


def test_scripted_session_writes_records_and_shows_only_description_and_question(tmp_path, descriptions):
    out = tmp_path / "labels.json"
    session, shown = label(out, descriptions, "r n\nrq")
    data = saved(out)
    assert [r["label"] for r in data["records"]] == ["related", "not-related", "related"]
    first = session.sample[0]
    assert data["records"][0] == {"_row_id": 0, "feature_index": first["feature_index"],
                                  "feature_id": first["feature_id"],
                                  "description": first["description"], "label": "related"}
    assert data["labeller"] == "human" and data["seed"] == 1 and "provenance" in data
    assert QUESTION in shown and first["description"] in shown
    assert first["feature_id"] not in shown  # nothing but description and question
    assert "item 4/5 · 3 labelled" in shown


def test_every_answer_is_on_disk_before_the_next_key(tmp_path, descriptions):
    out = tmp_path / "labels.json"
    session = open_session(out, descriptions, "digits", QUESTION, 4, 1)
    on_disk = []

    def keys():
        for key in "rnr":
            yield key
            on_disk.append(saved(out)["n_labelled"])
    run_session(session, keys(), io.StringIO())
    assert on_disk == [1, 2, 3]


def test_resume_back_and_finish(tmp_path, descriptions):
    out = tmp_path / "labels.json"
    label(out, descriptions, "rr")  # end of input saves and stops
    session, shown = label(out, descriptions, "bnnnn")
    assert "item 3/5 · 2 labelled" in shown  # resumed at the first unlabelled item
    assert "(your answer so far: related)" in shown  # 'b' went back to item 2
    labels = [r["label"] for r in saved(out)["records"]]
    assert labels == ["related", "not-related", "not-related", "not-related", "not-related"]
    assert "Done: all 5 items labelled" in shown
    _, again = label(out, descriptions, "r")
    assert "All 5 items are labelled" in again
    assert [r["label"] for r in saved(out)["records"]] == labels


@pytest.mark.parametrize(("change", "field"), [
    ({"seed": 2}, "seed"), ({"n": 6}, "n"), ({"category": "quotes"}, "category"),
    ({"question": "Other?"}, "question")])
def test_refuses_a_file_from_another_sample(tmp_path, descriptions, change, field):
    out = tmp_path / "labels.json"
    label(out, descriptions, "rn")
    before = out.read_bytes()
    args = {"n": 5, "seed": 1, "category": "digits", "question": QUESTION, **change}
    with pytest.raises(InputError, match=f"labels.json: {field}: file was made with"):
        label(out, descriptions, "r", **args)
    assert out.read_bytes() == before


def test_refuses_when_descriptions_changed_the_sample(tmp_path, descriptions):
    out = tmp_path / "labels.json"
    label(out, descriptions, "r")
    data = json.loads(descriptions.read_text())
    data["records"] = data["records"][:10]
    descriptions.write_text(json.dumps(data))
    with pytest.raises(InputError, match="sample_feature_ids: file was made from a different sample"):
        label(out, descriptions, "r")


def test_never_overwrites_a_file_it_cannot_read(tmp_path, descriptions):
    out = tmp_path / "labels.json"
    out.write_text("my notes, not JSON")
    assert main(["label", "--descriptions", str(descriptions), "--category", "digits",
                 "--question", QUESTION, "--out", str(out), "--n", "5"]) == 2
    assert out.read_text() == "my notes, not JSON"
    label(tmp_path / "ok.json", descriptions, "r")
    data = saved(tmp_path / "ok.json")
    data["records"][0]["label"] = "perhaps"
    (tmp_path / "ok.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"records\[0\].label: unknown label 'perhaps'"):
        label(tmp_path / "ok.json", descriptions, "r")


def test_killing_the_tool_loses_no_answer(tmp_path, descriptions):
    out = tmp_path / "labels.json"
    proc = label_process(out, descriptions)
    proc.stdin.write(b"rn")
    proc.stdin.flush()  # stdin stays open: the tool is waiting for the next key
    deadline = time.time() + 25
    while time.time() < deadline:
        if out.exists() and saved(out)["n_labelled"] == 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [r["label"] for r in saved(out)["records"]] == ["related", "not-related"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_sample_larger_than_the_descriptions_is_refused(tmp_path, descriptions, capsys):
    out = tmp_path / "labels.json"
    code = main(["label", "--descriptions", str(descriptions), "--category", "digits",
                 "--question", QUESTION, "--out", str(out), "--n", "50"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert err == ("saeflow: error: arguments: n: sample of 50 is larger than the 20 described "
                   "features; ask for at most that many")


def test_no_answer_writes_no_file(tmp_path, descriptions):
    out = tmp_path / "labels.json"
    _, shown = label(out, descriptions, "")  # stdin from /dev/null: end of input at once
    assert not out.exists() and "nothing written" in shown


def test_ctrl_c_says_what_is_saved_and_exits_130(tmp_path, descriptions):
    out = tmp_path / "labels.json"
    proc = label_process(out, descriptions)
    proc.stdin.write(b"rnr")
    proc.stdin.flush()
    deadline = time.time() + 25
    while time.time() < deadline and not (out.exists() and saved(out)["n_labelled"] == 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert f"3/5 labels saved in {out}; run the same command again to resume" in err.decode()
    assert saved(out)["n_labelled"] == 3


def test_oracle_labels_the_same_sample_from_truth(tmp_path, descriptions):
    human, _ = label(tmp_path / "human.json", descriptions, "q", n=8, seed=5)
    oracle = oracle_labels(tmp_path / "oracle.json", descriptions, "digits", QUESTION,
                           members={3, 4, 5, 11}, n=8, seed=5)
    data = saved(tmp_path / "oracle.json")
    assert data["labeller"] == "oracle"
    assert data["sample_feature_ids"] == [r["feature_id"] for r in human.sample]
    assert all((r["label"] == "related") == (r["feature_index"] in {3, 4, 5, 11})
               for r in data["records"])
    assert len(oracle.labels) == 8


def test_terminal_mode_reads_single_keys(tmp_path, descriptions):
    import pty

    out = tmp_path / "labels.json"
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from saeflow.cli import main; sys.exit(main())",
         "label", "--descriptions", str(descriptions), "--category", "digits",
         "--question", QUESTION, "--out", str(out), "--n", "5"],
        stdin=slave, stdout=slave, stderr=subprocess.PIPE,
        env={**os.environ, "SAEFLOW_GIT_COMMIT": "test"})
    os.close(slave)
    shown = b""

    def read_until(marker: bytes) -> None:
        nonlocal shown
        deadline = time.time() + 25
        while marker not in shown and time.time() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                shown += os.read(master, 4096)

    read_until(b"item 1/5")
    os.write(master, b"nr")  # no Enter: cbreak mode hands over each key at once
    read_until(b"item 3/5")
    os.write(master, b"q")
    read_until(b"saved 2/5")
    assert proc.wait(timeout=25) == 0
    os.close(master)
    assert [r["label"] for r in saved(out)["records"]] == ["not-related", "related"]
