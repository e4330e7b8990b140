"""Auto-interpretation against a loopback OpenAI-compatible server with canned answers: the
prompts carry the contexts (the server is asked about their text), the held-out contexts are
never shown to the explainer, and each score equals the balanced accuracy computed here by
hand from what the server was asked and what it answered."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from saeflow.core.errors import InputError
from saeflow.labels import explainer, scorers
from saeflow.labels.autointerp import AutoInterpSettings, autointerp_records, split_examples
from saeflow.labels.classify import LLMConfig
from saeflow.testing.local_study import chat_reply, send_json

MARK = re.compile(r"<<(.*?)>>", re.DOTALL)  # a marked token may be a line break


def canned_reply(messages):
    """What the canned model says. Explainer: ``mentions of X`` with X the span marked most
    often, "line breaks" when only white space is marked (no [EXPLANATION] line when a
    context says "zebra"). Scorers: per example, detection
    1 iff X is in the text, fuzzing 1 iff every marked span holds X (a prose reply when an
    example says "quokka")."""
    system, user = messages[0]["content"], messages[-1]["content"]
    if system == explainer.SYSTEM:
        if "zebra" in user:
            return "These look like animals to me."
        spans = [s.strip() for s in MARK.findall(user) if s.strip()] or ["line breaks"]
        return f"Step 1. ...\n[EXPLANATION]: mentions of {max(sorted(set(spans)), key=spans.count)}"
    keyword = re.search(r"Latent explanation: mentions of (.*)", user).group(1).strip()
    texts = re.findall(r"^Example \d+: (.*)$", user, re.MULTILINE)
    if any("quokka" in t for t in texts):
        return "I would rather not say."
    if system == scorers.SYSTEM["detection"]:
        said = [int(keyword in t) for t in texts]
    else:
        said = [int(bool(MARK.findall(t)) and all(keyword in s for s in MARK.findall(t)))
                for t in texts]
    return json.dumps(said)


class CannedLLM:
    """Chat completions on 127.0.0.1 answering :func:`canned_reply`; keeps every request's
    messages and the reply it got, in ``log``."""

    def __init__(self):
        self.log, self.lock = [], threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                reply = canned_reply(body["messages"])
                with server.lock:
                    server.log.append((body["messages"], reply))
                send_json(self, chat_reply(reply))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def requests(self, system):
        return [(m[-1]["content"], r) for m, r in self.log if m[0]["content"] == system]


@pytest.fixture
def llm(tmp_path):
    server = CannedLLM()
    yield server, LLMConfig.from_dict({"base_url": server.url, "model": "canned-1",
                                       "cache_dir": str(tmp_path / "cache"), "concurrency": 2,
                                       "backoff_s": 0.0}, "test", "labels.describe.llm")
    server.close()


def ctx(prompt, words, acts):
    return {"prompt": prompt, "tokens": [f" {w}" for w in words], "activations": acts,
            "max_activation": max(acts)}


def cat_latent():
    """Latent 3: ' cat' strongly, ' kitten' weakly. Quantile samples a..f: b, d, f held out
    (d and f fire on ' kitten' only, so detection misses them); one non-activating context
    mentions a cat."""
    top = [ctx(p, ["the", "cat", "sat", f"w{p}"], [0.0, 5.0 - p / 10, 0.0, 0.0]) for p in range(4)]
    q0 = [ctx(10, ["a", "cat", "ran", "w10"], [0.0, 3.0, 0.0, 0.0]),
          ctx(11, ["big", "cat", "naps", "w11"], [0.0, 2.9, 1.0, 0.0]),
          ctx(12, ["my", "cat", "purrs", "w12"], [0.0, 2.8, 0.0, 0.0])]
    q1 = [ctx(13, ["one", "kitten", "mews", "w13"], [0.0, 0.8, 0.0, 0.0]),
          ctx(14, ["old", "cat", "dozes", "w14"], [0.0, 0.7, 0.0, 0.0]),
          ctx(15, ["tiny", "kitten", "hops", "w15"], [0.0, 0.6, 0.1, 0.0])]
    silent = [ctx(20, ["a", "cat", "photo", "w20"], [0.0] * 4),
              ctx(21, ["the", "dog", "barks", "w21"], [0.0] * 4),
              ctx(22, ["some", "bird", "sings", "w22"], [0.0] * 4),
              ctx(23, ["a", "fish", "swims", "w23"], [0.0] * 4)]
    return {"latent": 3, "max_activation": 5.0, "top": top,
            "quantiles": [{"quantile": 0, "examples": q0}, {"quantile": 1, "examples": q1}],
            "non_activating": silent}


def other_latents():
    """Latent 7: its contexts say "zebra" (the explanation does not parse). Latent 9: one of
    its seven non-activating contexts says "quokka" (the scorer prompt showing it is answered
    in prose; the other is answered)."""
    zebra = {"latent": 7, "max_activation": 2.0,
             "top": [ctx(30, ["zebra", "stripes", "w30"], [2.0, 0.5, 0.0])],
             "quantiles": [{"quantile": 0, "examples": [
                 ctx(31, ["zebra", "herd", "w31"], [1.0, 0.0, 0.0]),
                 ctx(32, ["zebra", "foal", "w32"], [0.9, 0.0, 0.0])]}],
             "non_activating": [ctx(33, ["plain", "text", "w33"], [0.0] * 3)]}
    dog = {"latent": 9, "max_activation": 4.0,
           "top": [ctx(40, ["a", "dog", "w40"], [0.0, 4.0, 0.0])],
           "quantiles": [{"quantile": 0, "examples": [
               ctx(41, ["the", "dog", "w41"], [0.0, 2.0, 0.0]),
               ctx(42, ["good", "dog", "w42"], [0.0, 1.5, 0.0]),
               ctx(43, ["wet", "dog", "w43"], [0.0, 1.0, 1.0])]}],
           "non_activating": [ctx(44, ["a", "quokka", "w44"], [0.0] * 3),
                              *(ctx(p, ["some", "cat", f"w{p}"], [0.0] * 3) for p in range(45, 51))]}
    return zebra, dog


SETTINGS = AutoInterpSettings(n_top=10, n_quantiles=2, per_quantile=3, n_non_activating=4,
                              examples_per_prompt=5, window_left=8, window_right=2, seed=0)


def plain(text):
    return text.replace("<<", "").replace(">>", "")


def hand_scores(server, record, scorer):
    """Balanced accuracy of what the server answered about this latent's contexts, with the
    truth from the fixture: activating = the text of one of its activating contexts."""
    texts = lambda cs: {"".join(c["tokens"]) for c in cs}  # noqa: E731
    activating = texts(record["top"]) | texts(c for q in record["quantiles"] for c in q["examples"])
    silent = texts(record["non_activating"])
    tp = tn = fp = fn = unanswered = 0
    for user, reply in server.requests(scorers.SYSTEM[scorer]):
        examples = [plain(t) for t in re.findall(r"^Example \d+: (.*)$", user, re.MULTILINE)]
        if not set(examples) <= activating | silent:
            continue  # another latent's prompt
        said = json.loads(reply) if reply.startswith("[") else None
        if said is None:
            unanswered += len(examples)
            continue
        for text, answer in zip(examples, said, strict=True):
            truth = text in activating
            tp, fn = tp + (truth and answer == 1), fn + (truth and answer == 0)
            tn, fp = tn + (not truth and answer == 0), fp + (not truth and answer == 1)
    ba = (tp / (tp + fn) + tn / (tn + fp)) / 2 if tp + fn and tn + fp else None
    return {"balanced_accuracy": ba, "n": tp + tn + fp + fn, "n_activating": tp + fn,
            "n_non_activating": tn + fp, "tp": tp, "tn": tn, "fp": fp, "fn": fn,
            "n_unanswered": unanswered}


def test_scores_equal_the_balanced_accuracy_of_the_canned_answers(llm):
    server, cfg = llm
    cat, (zebra, dog) = cat_latent(), other_latents()
    records, stats = autointerp_records({3: cat, 7: zebra, 9: dog}, SETTINGS, cfg, "blocks.0")
    by_latent = {r["feature_index"]: r for r in records}
    assert sorted(by_latent) == [3, 7, 9]
    assert by_latent[3]["feature_id"] == "blocks.0-3"
    assert by_latent[3]["description"] == "mentions of cat"
    assert by_latent[3]["explainer"] == {"model": "canned-1", "prompt_version":
                                         explainer.PROMPT_VERSION, "parsed": True}
    for latent, record in ((3, cat), (9, dog)):
        for scorer in scorers.SCORERS:
            assert by_latent[latent]["scores"][scorer] == pytest.approx(
                hand_scores(server, record, scorer)), (latent, scorer)
    detection = by_latent[3]["scores"]["detection"]
    # held out: b (cat), d and f (kitten only); negatives: one says cat
    assert (detection["tp"], detection["fn"], detection["tn"], detection["fp"]) == (1, 2, 3, 1)
    assert detection["balanced_accuracy"] == pytest.approx((1 / 3 + 3 / 4) / 2)
    # the fixture tells methods apart: answering yes to all gives 0.5, ignoring the answers 1.0
    assert detection["balanced_accuracy"] not in (0.5, 1.0)
    assert by_latent[9]["scores"]["detection"]["n_unanswered"] > 0  # the prose reply
    # an explanation that does not parse keeps delphi's text and is never scored
    assert by_latent[7]["description"] == explainer.UNPARSED
    assert by_latent[7]["explainer"]["parsed"] is False and stats["n_unparsed"] == 1
    assert all(s["n"] == 0 and s["balanced_accuracy"] is None
               for s in by_latent[7]["scores"].values())
    assert not any("zebra" in u for s in scorers.SCORERS
                   for u, _ in server.requests(scorers.SYSTEM[s]))
    assert stats["score_definitions"] == scorers.DEFINITIONS
    assert stats["explainer"]["base_url"] == server.url


def test_prompts_carry_the_contexts_and_hold_out_the_scored_ones(llm):
    server, cfg = llm
    cat = cat_latent()
    autointerp_records({3: cat}, SETTINGS, cfg, "blocks.0")
    (explain_user, _), = server.requests(explainer.SYSTEM)
    split = split_examples(cat, SETTINGS.n_top)
    assert [c["prompt"] for c in split.test] == [11, 13, 15]
    assert [c["prompt"] for c in split.explain] == [0, 1, 2, 3, 10, 12, 14]
    # delphi's format, by hand: the marked tokens, then their activations on a 0-10 scale
    assert explain_user.startswith('\n the<< cat>> sat w0\nActivations: (" cat" : 10), \n'
                                   ' the<< cat>> sat w1\nActivations: (" cat" : 10), \n')
    assert ' big<< cat>><< naps>> w11' not in explain_user  # held out
    assert ' old<< cat>> dozes w14\nActivations: (" cat" : 2), ' in explain_user
    for c in split.explain:
        assert "".join(c["tokens"]) in plain(explain_user)
    for c in split.test:
        assert "".join(c["tokens"]) not in plain(explain_user)
    detection = " ".join(u for u, _ in server.requests(scorers.SYSTEM["detection"]))
    fuzzing = " ".join(u for u, _ in server.requests(scorers.SYSTEM["fuzzing"]))
    for c in [*split.test, *cat["non_activating"]]:
        assert "".join(c["tokens"]) in detection
    # fuzzing marks the held-out tokens >= 0.3 x the context's max, and in each
    # non-activating context ceil(mean non-zero tokens per held-out context) = ceil(5 / 3) = 2
    # tokens drawn at random
    assert " big<< cat naps>> w11" in fuzzing and " tiny<< kitten>> hops w15" in fuzzing
    silent = {"".join(c["tokens"]) for c in cat["non_activating"]}
    shown = [t for u, _ in server.requests(scorers.SYSTEM["fuzzing"])
             for t in re.findall(r"^Example \d+: (.*)$", u, re.MULTILINE) if plain(t) in silent]
    assert len(shown) == 4
    assert all(sum(len(span.split()) for span in MARK.findall(t)) == 2 for t in shown)


def test_a_rerun_is_answered_from_the_cache(llm):
    server, cfg = llm
    first, _ = autointerp_records({3: cat_latent()}, SETTINGS, cfg, "blocks.0")
    asked = len(server.log)
    again, _ = autointerp_records({3: cat_latent()}, SETTINGS, cfg, "blocks.0")
    assert len(server.log) == asked and again == first


def test_parse_predictions_follows_delphi():
    assert scorers.parse_predictions("Sure: [1, 0, 1]", 3) == [True, False, True]
    assert scorers.parse_predictions("[true, false]", 2) == [True, False]
    assert scorers.parse_predictions("[1, 0]", 3) is None
    assert scorers.parse_predictions("[1, 2, 0]", 3) is None
    assert scorers.parse_predictions("yes, no, yes", 3) is None
    assert explainer.parse_explanation("x\n[EXPLANATION]:  digits \n") == "digits"
    assert explainer.parse_explanation("digits") is None


def test_balanced_accuracy_is_undefined_without_both_classes():
    samples = [scorers.Sample("a", True, 0), scorers.Sample("b", True, 1)]
    out = scorers.balanced_accuracy(samples, [True, None])
    assert out["balanced_accuracy"] is None and out["n"] == 1 and out["n_unanswered"] == 1


def test_autointerp_needs_an_endpoint(tmp_path):
    from saeflow.core.config import check_schema

    config = {"experiment": "x", "model": {"source": "toy"},
              "sae": {"source": "train", "hooks": ["blocks.0.hook_resid_post"]},
              "extraction": {"prompt_sets": {"a": "a.jsonl"}, "hooks": ["blocks.0.hook_resid_post"]},
              "labels": {"prompt_set": "a", "hook": "blocks.0.hook_resid_post",
                         "describe": {"backend": "autointerp"},
                         "categories": {"c": {"question": "q?", "patterns": ["x"]}}}}
    with pytest.raises(InputError, match=r"^study.yaml: labels.describe: 'llm' is a required"):
        check_schema(config, "workflow/schemas/config.schema.yaml", "study.yaml")
