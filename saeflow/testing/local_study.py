"""A complete real study, offline: the inputs a researcher brings, for the local hub's models.

:func:`write_study` writes, into a work folder, what a user of a pretrained model has: two
prompt sets labelled by a string ``label`` column with one-token answers (half of them the
model's own prediction, so failure probes have both classes), clean/corrupted pairs of equal
token length, a Neuronpedia export folder (``.jsonl.gz`` batches) describing every SAE
latent, and a study config naming a keyword category and an ``llm`` category. The model and
SAE are :mod:`saeflow.testing.local_hub`'s ``gpt2`` and ``gpt2-small-res-jb`` in a Hugging Face
cache. :class:`KeywordLLM` is an OpenAI-compatible chat endpoint on 127.0.0.1 for the ``llm``
backend. The human labels come from ``saeflow label`` itself (the test scripts its keys).
"""

from __future__ import annotations

import gzip
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from saeflow.testing import local_hub

EXPERIMENT = "local-gpt2"
SOURCE = "0-res-jb"  # the Neuronpedia source id of the SAE
MODEL_ID = "gpt2-small"  # and its Neuronpedia model id
CLASSES = ("alpha", "beta", "gamma")
ANIMAL, NUMBER = "animal", "number"
N_PER_SET = 48


def send_json(handler: BaseHTTPRequestHandler, payload: Any, status: int = 200) -> None:
    """Answer an HTTP request with ``payload`` as JSON."""
    body = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def chat_reply(text: str) -> dict[str, Any]:
    """A chat-completions response whose one choice says ``text``."""
    return {"choices": [{"message": {"content": text}}]}


class KeywordLLM:
    """Chat completions on 127.0.0.1 answering ``related`` iff the description names
    ``keyword``; counts the calls it answers."""

    def __init__(self, keyword: str):
        self.calls = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["messages"][-1]["content"].split("Feature description:")[1]
                server.calls += 1
                send_json(self, chat_reply("related" if keyword in text else "not-related"))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ExportStore:
    """Neuronpedia's export layout served from a local folder on 127.0.0.1:
    ``/<modelId>/<source>/explanations/batch-<i>.jsonl.gz``; a missing key answers 403 as S3
    does. ``fail_once`` names batches that answer 500 the first time (a broken download)."""

    def __init__(self, root: Path, fail_once: tuple[str, ...] = ()):
        self.requests: list[str] = []
        self.failing = set(fail_once)
        store = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                store.requests.append(self.path)
                name = self.path.rsplit("/", 1)[-1]
                path = root / self.path.lstrip("/")
                if name in store.failing:
                    store.failing.discard(name)
                    self.send_response(500)
                    self.end_headers()
                    return
                if not path.is_file():
                    self.send_response(403)
                    self.end_headers()
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_exports(folder: Path, d_sae: int = local_hub.D_SAE, per_batch: int = 40) -> list[Path]:
    """The SAE's explanations as Neuronpedia export batches (``batch-<i>.jsonl.gz``)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = _descriptions(d_sae)
    paths = []
    for b, start in enumerate(range(0, len(rows), per_batch)):
        text = "".join(json.dumps(r) + "\n" for r in rows[start:start + per_batch])
        paths.append(folder / f"batch-{b}.jsonl.gz")
        paths[-1].write_bytes(gzip.compress(text.encode(), mtime=0))
    return paths


def _single_tokens(tokenizer: Any) -> list[str]:
    """Strings that are exactly one token (a space and letters), in id order."""
    out = []
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        if text.startswith(" ") and text[1:].isalpha() and tokenizer.encode(text) == [i]:
            out.append(text)
    return out


def _predictions(hf_home: Path, texts: list[str]) -> list[int]:
    """The local gpt2's next-token prediction after each text (BOS prepended, as saeflow
    feeds every prompt)."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    snapshot = next((hf_home / "hub" / "models--gpt2" / "snapshots").iterdir())
    tokenizer = AutoTokenizer.from_pretrained(snapshot)
    model = GPT2LMHeadModel.from_pretrained(snapshot).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            ids = [tokenizer.bos_token_id] + tokenizer.encode(text, add_special_tokens=False)
            out.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return out


def _prompt_set(rng: random.Random, words: list[str], n: int) -> list[dict[str, Any]]:
    records = []
    for i in range(n):
        label = CLASSES[i % len(CLASSES)]
        # the class decides the first word, so a probe has something to find
        first = words[CLASSES.index(label)]
        text = first + "".join(rng.choice(words[3:9]) for _ in range(5))
        records.append({"text": text.strip(), "label": label, "index": i})
    return records


def _pairs(rng: random.Random, words: list[str], tokenizer: Any, n: int) -> list[dict[str, Any]]:
    """Pairs differing in their first word; a stem that changes the token count is redrawn."""
    rows: list[dict[str, Any]] = []
    while len(rows) < 2 * n:
        stem = "".join(rng.choice(words[3:9]) for _ in range(4))
        clean, corrupted = (words[0] + stem).strip(), (words[1] + stem).strip()
        if len(tokenizer.encode(clean)) != len(tokenizer.encode(corrupted)):
            continue
        k = len(rows) // 2
        rows.append({"text": clean, "answer": words[9], "pair_id": k, "role": "clean"})
        rows.append({"text": corrupted, "answer": words[10], "pair_id": k, "role": "corrupted"})
    return rows


def _descriptions(d_sae: int) -> list[dict[str, Any]]:
    """One explanation per latent; about a third name animals, a third numbers."""
    rows = []
    for i in range(d_sae):
        kind = (ANIMAL, NUMBER, "punctuation")[i % 3]
        rows.append({"modelId": "gpt2-small", "layer": SOURCE, "index": str(i),
                     "description": f"{kind} words, variant {i}",
                     "explanationModelName": "local-explainer", "typeName": "oai_token-act-pair"})
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_study(workdir: Path, hf_home: Path, llm_url: str, exports_url: str | None = None
                ) -> Path:
    """Write the study's inputs and config into ``workdir``; returns the config's path.
    With ``exports_url`` (an :class:`ExportStore` over :func:`write_exports`) the
    descriptions are downloaded by the DAG; without, read from a local export folder."""
    from transformers import AutoTokenizer

    rng = random.Random(0)
    snapshot = next((hf_home / "hub" / "models--gpt2" / "snapshots").iterdir())
    tokenizer = AutoTokenizer.from_pretrained(snapshot)
    words = _single_tokens(tokenizer)
    assert len(words) >= 11, words
    sets = {"study_a": _prompt_set(rng, words, N_PER_SET),
            "study_b": _prompt_set(rng, words, N_PER_SET)}
    for name, records in sets.items():
        predicted = _predictions(hf_home, [r["text"] for r in records])
        for i, (record, token) in enumerate(zip(records, predicted, strict=True)):
            right = tokenizer.decode([token])
            own = tokenizer.encode(right, add_special_tokens=False) == [token]
            # half answered as the model does (model_correct), half with another word
            record["answer"] = right if i % 2 == 0 and own else (
                words[9] if right != words[9] else words[10])
        _write_jsonl(workdir / "inputs" / f"{name}.jsonl", records)
    _write_jsonl(workdir / "inputs" / "pairs.jsonl", _pairs(rng, words, tokenizer, 12))
    if exports_url is None:
        write_exports(workdir / "inputs" / "neuronpedia")
        describe = {"backend": "neuronpedia", "folder": "inputs/neuronpedia", "source": SOURCE}
    else:
        describe = {"backend": "neuronpedia", "exports_url": exports_url, "model_id": MODEL_ID,
                    "source": SOURCE, "cache_dir": "inputs/neuronpedia-cache"}
    hook = local_hub.HOOK
    config = {
        "experiment": EXPERIMENT,
        "model": {"source": "pretrained", "name": local_hub.MODEL_NAME},
        "sae": {"source": "pretrained", "release": local_hub.SAE_RELEASE, "hooks": [hook],
                "ids": {hook: hook}},
        "extraction": {"prompt_sets": {n: f"inputs/{n}.jsonl" for n in sets},
                       "hooks": [hook, "blocks.1.hook_resid_pre"], "batch_size": 16},
        "stages": ["labels", "probe", "patch"],
        "labels": {
            "prompt_set": "study_a", "hook": hook,
            "describe": describe,
            "categories": {
                "animals": {"backend": "keyword", "patterns": [ANIMAL],
                            "question": "Is this feature about animals?"},
                "numbers": {"backend": "llm", "question": "Is this feature about numbers?",
                            "llm": {"base_url": llm_url, "model": "local-llm",
                                    "cache_dir": "inputs/llm-cache"}},
            },
            "labeller": "human",
            "human": {"animals": "labels/animals.json", "numbers": "labels/numbers.json"},
            "sample": {"n": 48, "seed": 42},
            "agreement": {"n_boot": 200},
            "ablation": {"eval": "answer", "batch_size": 16},
            "correction": {"n_boot": 200},
        },
        "probe": {
            "prompt_sets": ["study_a", "study_b"],
            "hook_template": "blocks.{layer}.hook_resid_pre",
            "cv": {"n_folds": 3, "inner_folds": 2, "Cs": [0.1, 1.0], "alphas": [1.0],
                   "n_permutations": 2},
            "effects": {"n_permutations": 50, "top_k": 5},
            "descriptions": None,
            "datasets": [
                {"name": "hid_concept", "strategy": "hidden-to-concept", "layers": "0-1",
                 "per_layer": True},
                {"name": "sae_concept", "strategy": "sae-to-concept", "layers": "0",
                 "positive_class": "alpha"},
                {"name": "sae_failure", "strategy": "sae-to-failure", "layers": "0"},
            ],
        },
        "patch": {"pairs": "inputs/pairs.jsonl", "n_bootstrap": 100, "top_k": 5, "n_random": 5,
                  "faithfulness_n": [1, 2, 5]},
    }
    import yaml

    path = workdir / "study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ---------------------------------------------------------------- a study of its own model

FAILURE_POSITIONS = ("r1", "r2", "r3", "r4", "r5", "r6")
FAILURE_CONFIG = "config/llama-3.2-1b-failures-test.yaml"


def failure_records(tokenizer: Any, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` prompts of ten one-token words with six named reasoning positions ``pos_r1`` ..
    ``pos_r6`` (the tokens of words 2 to 7; every 9th prompt lacks ``r6``: null, absent by
    design) and a ``correct`` label that the third word decides (so a probe has something to
    find) -- the shape of config/llama-3.2-1b-failures.yaml's prompt files."""
    rng = random.Random(seed)
    words = _single_tokens(tokenizer)
    records = []
    for i in range(n):
        chosen = [rng.choice(words[:12]) for _ in range(10)]
        text = "".join(chosen)  # each word a token, its leading space included
        assert len(tokenizer.encode(text, add_special_tokens=False)) == 10, chosen
        positions = {f"pos_{name}": 2 + j for j, name in enumerate(FAILURE_POSITIONS)}
        if i % 9 == 4:
            positions["pos_r6"] = None
        records.append({"text": text, "correct": words.index(chosen[2]) % 2 == 0,
                        "id": i, **positions})
    return records


def write_failure_study(workdir: Path, hf_home: Path, n_train: int = 2000, n_prompts: int = 60
                        ) -> Path:
    """The inputs config/llama-3.2-1b-failures-test.yaml names, in ``workdir/inputs``: the
    local hub's gpt2 fine-tuned and saved as a checkpoint folder (``finetuned/``), a training
    corpus and a prompt set with six named positions and a correctness label. Returns the
    config's path (in ``workdir``, as :func:`saeflow.testing.workspace.sync_workflow` copies
    it)."""
    from transformers import AutoTokenizer

    checkpoint = local_hub.fine_tune(hf_home, workdir / "inputs" / "finetuned")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    _write_jsonl(workdir / "inputs" / "failures_train.jsonl",
                 failure_records(tokenizer, n_train, seed=1))
    _write_jsonl(workdir / "inputs" / "failures.jsonl", failure_records(tokenizer, n_prompts, seed=2))
    return workdir / FAILURE_CONFIG
