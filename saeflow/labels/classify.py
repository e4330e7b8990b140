"""Sort feature descriptions into a category: ``related`` / ``not-related`` (/ ``unknown``).

Three backends, one output shape (``{feature_id, feature_index, description, label}`` per
feature): ``keyword`` (regular expressions, the toy default), ``llm`` (any OpenAI-compatible
chat-completions endpoint, :func:`llm_classify`) and ``file`` (import someone else's
classification). An answer the LLM gives that we cannot parse becomes
``unknown`` and is counted: silently dropping it would bias every later rate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from saeflow.formats.labels import LABELS, NOT_RELATED, RELATED, UNKNOWN, read_labelled
from saeflow.core.errors import InputError
from saeflow.core.io import write_text_atomic

log = logging.getLogger(__name__)


def resolve_categories(raw: Any, source: str = "config") -> dict[str, dict[str, Any]]:
    """The categories a config names: a mapping of name to backend options (each needs a
    ``question`` for the human labeller)."""
    cats = raw
    if not isinstance(cats, Mapping) or not cats:
        raise InputError(source, "labels.categories", "expected a mapping of categories")
    for name, cat in cats.items():
        if not isinstance(cat, Mapping) or not cat.get("question"):
            raise InputError(source, f"labels.categories.{name}.question", "missing")
    return {str(k): dict(v) for k, v in cats.items()}


def related_features(path: str | Path) -> list[int]:
    """Indices of the features a classification file labels ``related``."""
    return sorted(r["feature_index"] for r in read_labelled(path) if r["label"] == RELATED)


def _labelled(records: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> list[dict[str, Any]]:
    return [{"feature_id": r["feature_id"], "feature_index": r["feature_index"],
             "description": r["description"], "label": label} for r, label in zip(records, labels)]


# --- keyword ----------------------------------------------------------------------------------

def keyword_classify(records: Sequence[Mapping[str, Any]], patterns: Sequence[str],
                     source: str = "config", field: str = "patterns") -> list[dict[str, Any]]:
    """``related`` when any pattern (case-insensitive regex) is found in the description."""
    if not patterns:
        raise InputError(source, field, "no patterns")
    compiled = []
    for i, pattern in enumerate(patterns):
        try:
            compiled.append(re.compile(pattern, re.IGNORECASE))
        except re.error as err:
            raise InputError(source, f"{field}[{i}]", f"invalid regex {pattern!r}: {err}") from None
    return _labelled(records, [RELATED if any(p.search(r["description"]) for p in compiled)
                               else NOT_RELATED for r in records])


# --- llm --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LLMConfig:
    """Where and how to ask. The key itself is never stored: only the variable's name."""

    base_url: str
    model: str
    api_key_env: str | None
    cache_dir: str
    concurrency: int
    max_retries: int
    backoff_s: float
    timeout_s: float
    temperature: float
    max_tokens: int

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config",
                  section: str = "labels.categories.<name>.llm") -> LLMConfig:
        """Options given (config or command line) over the schema's defaults of ``section``
        (their one home; ``labels.describe.llm`` for the autointerp describer)."""
        from saeflow.core.config import schema_defaults, strict_fields

        for key in ("base_url", "model"):
            if not raw.get(key):
                raise InputError(source, key, "required for the llm backend")
        cfg = cls(**strict_fields(cls, raw, "", source, schema_defaults(section)))
        if cfg.concurrency < 1 or cfg.max_retries < 0:
            raise InputError(source, "concurrency", "concurrency must be >= 1, max_retries >= 0")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROMPT_SYSTEM = ("You sort features of a sparse autoencoder into categories by reading each "
                 "feature's description. Answer with exactly one word: related or not-related.")


def llm_messages(category: str, question: str, description: str) -> list[dict[str, str]]:
    """The chat messages for one feature; the cache key covers them, so edit with care."""
    user = (f"Category: {category}\nQuestion: {question}\n"
            f"Feature description: {description}\nAnswer related or not-related.")
    return [{"role": "system", "content": PROMPT_SYSTEM}, {"role": "user", "content": user}]


def parse_answer(text: str) -> str:
    """``related`` / ``not-related`` from a model's reply, ``unknown`` when it is neither."""
    text = re.sub(r"^\W*(answer|label)\W*", "", text.strip().lower())
    words = re.findall(r"[a-z]+(?:[-_ ]related)?", text)
    if not words:
        return UNKNOWN
    return {"related": RELATED, "yes": RELATED, "no": NOT_RELATED, "unrelated": NOT_RELATED,
            "not-related": NOT_RELATED, "not related": NOT_RELATED,
            "not_related": NOT_RELATED}.get(words[0], UNKNOWN)


def cache_key(model: str, messages: list[dict[str, str]], temperature: float) -> str:
    blob = json.dumps({"model": model, "messages": messages, "temperature": temperature},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _api_key(cfg: LLMConfig, source: str) -> str | None:
    if not cfg.api_key_env:
        return None
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise InputError(source, "api_key_env", f"environment variable {cfg.api_key_env} is not set")
    return key


def _post_chat(cfg: LLMConfig, key: str | None, messages: list[dict[str, str]]) -> str:
    """One chat-completions call with retries; returns the reply text."""
    url = cfg.base_url.rstrip("/") + "/chat/completions"
    body = json.dumps({"model": cfg.model, "messages": messages, "temperature": cfg.temperature,
                       "max_tokens": cfg.max_tokens}).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    problem = ""
    for attempt in range(cfg.max_retries + 1):
        if attempt:
            time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=cfg.timeout_s) as response:
                reply = json.loads(response.read())
            return str(reply["choices"][0]["message"]["content"])
        except urllib.error.HTTPError as err:
            problem = f"HTTP {err.code}"
            # Rate limits and server faults pass; a bad key or request will not.
            if err.code != 429 and err.code < 500:
                raise InputError(url, "response", f"{problem}: {err.reason}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            problem = f"unreachable: {getattr(err, 'reason', err)}"
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            problem = "reply is not a chat completion"
        log.warning("%s: attempt %d failed (%s)", url, attempt + 1, problem)
    raise InputError(url, "response", f"{problem} after {cfg.max_retries + 1} attempts")


def ask_all(cfg: LLMConfig, conversations: Sequence[list[dict[str, str]]],
            source: str = "config") -> list[str]:
    """The endpoint's reply to each conversation (chat messages), at most ``cfg.concurrency``
    in flight. Replies are cached in ``cfg.cache_dir`` under a hash of (model, messages,
    temperature) as soon as each arrives, so an interrupted or repeated run pays only for
    what is new. The key comes from the environment (``cfg.api_key_env``), never stored."""
    key = _api_key(cfg, source)
    cache = Path(cfg.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)

    def answer(messages: list[dict[str, str]]) -> str:
        path = cache / f"{cache_key(cfg.model, messages, cfg.temperature)}.json"
        if path.exists():
            return json.loads(path.read_text())["reply"]
        reply = _post_chat(cfg, key, messages)
        write_text_atomic(path, json.dumps({"model": cfg.model, "messages": messages,
                                            "reply": reply}) + "\n")
        return reply

    pool = ThreadPoolExecutor(max_workers=cfg.concurrency)
    try:
        return list(pool.map(answer, conversations))
    finally:
        # On failure, stop queued requests; finished ones are already cached.
        pool.shutdown(wait=True, cancel_futures=True)


def llm_classify(records: Sequence[Mapping[str, Any]], category: str, question: str,
                 cfg: LLMConfig, source: str = "config") -> list[dict[str, Any]]:
    """Ask the endpoint about every description through :func:`ask_all` (cached, resumable,
    at most ``cfg.concurrency`` at a time)."""
    replies = ask_all(cfg, [llm_messages(category, question, r["description"]) for r in records],
                      source)
    labels = [parse_answer(r) for r in replies]
    n_unknown = labels.count(UNKNOWN)
    if n_unknown:
        log.warning("%s: %d of %d replies unparseable, recorded as unknown", category, n_unknown,
                    len(labels))
    return _labelled(records, labels)


# --- file -------------------------------------------------------------------------------------

def import_classification(path: str | Path,
                          descriptions: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """Records of an existing classification file; ids and texts filled from ``descriptions``.

    A feature listed twice is an error naming the features.
    """
    by_index = {d["feature_index"]: d for d in descriptions}
    records = read_labelled(path, strict=True)
    counts = Counter(r["feature_index"] for r in records)
    dupes = sorted(i for i, c in counts.items() if c > 1)
    if dupes:
        raise InputError(path, "feature_index", f"duplicate rows for features {dupes[:10]}")
    for r in records:
        known = by_index.get(r["feature_index"])
        if known is not None:
            r["feature_id"] = known["feature_id"]
            r["description"] = r["description"] or known["description"]
    return records


# --- one category, any backend ----------------------------------------------------------------

def classify(descriptions: Sequence[Mapping[str, Any]], category: str,
             backend_config: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """Classify every description for ``category``; returns the output file's payload.

    ``backend_config`` has ``backend`` (keyword / llm / file) and its options: ``patterns``;
    ``question`` plus an ``llm`` mapping (:class:`LLMConfig`); or ``path``.
    """
    from saeflow.core.config import schema_defaults

    backend = backend_config.get("backend") or \
        schema_defaults("labels.categories.<name>")["backend"]
    if backend == "keyword":
        records = keyword_classify(descriptions, backend_config.get("patterns") or [], source,
                                   f"{category}.patterns")
    elif backend == "llm":
        question = backend_config.get("question")
        if not question:
            raise InputError(source, f"{category}.question", "required for the llm backend")
        cfg = LLMConfig.from_dict(backend_config.get("llm") or {}, source)
        records = llm_classify(descriptions, category, question, cfg, source)
    elif backend == "file":
        if not backend_config.get("path"):
            raise InputError(source, f"{category}.path", "required for the file backend")
        records = import_classification(backend_config["path"], descriptions)
    else:
        raise InputError(source, f"{category}.backend", f"unknown backend {backend!r} "
                                                        "(expected keyword, llm or file)")
    counts = Counter(r["label"] for r in records)
    return {"category": category, "backend": backend,
            "counts": {label: counts.get(label, 0) for label in LABELS},
            "n_unknown": counts.get(UNKNOWN, 0), "records": records}


# --- descriptions filtered by their scores (labels.describe.min_score) ------------------------

FILTERED_NOTE = ("left unlabelled (label unknown): its description scores below "
                 "labels.describe.min_score, so it is never in the category's ablated set and "
                 "its human label is left out of the agreement and the LPF confusion")


def score_shortfall(scores: Mapping[str, Any] | None, min_score: Mapping[str, float]) -> str | None:
    """Why a description's ``scores`` fail ``min_score`` (scorer -> least balanced accuracy;
    every scorer named must reach its least; an unscored or undefined score fails), None
    when they pass."""
    for name, least in sorted(min_score.items()):
        value = ((scores or {}).get(name) or {}).get("balanced_accuracy")
        if value is None:
            return f"no {name} score"
        if value < least:
            return f"{name} {value:.3f} < {least}"
    return None


def apply_min_score(payload: dict[str, Any], records: Sequence[Mapping[str, Any]],
                    scores: Mapping[int, Mapping[str, Any]], min_score: Mapping[str, float]
                    ) -> dict[str, Any]:
    """``payload`` (of :func:`classify`) with every description that fails ``min_score``
    labelled ``unknown`` and its reason in ``filtered``, in ``records``' order (rows of an
    imported file beyond them kept), counts recomputed, and ``min_score``, ``n_filtered``
    and ``filtered_note`` added."""
    reasons = {r["feature_index"]: score_shortfall(scores.get(r["feature_index"]), min_score)
               for r in records}
    by_index = {r["feature_index"]: r for r in payload["records"]}
    rows = []
    for record in records:
        row = dict(by_index.pop(record["feature_index"], None) or _labelled([record], [UNKNOWN])[0])
        if reasons[record["feature_index"]] is not None:
            row.update(label=UNKNOWN, filtered=reasons[record["feature_index"]])
        rows.append(row)
    rows += by_index.values()
    counts = Counter(r["label"] for r in rows)
    return {**payload, "counts": {label: counts.get(label, 0) for label in LABELS},
            "n_unknown": counts.get(UNKNOWN, 0), "min_score": dict(min_score),
            "n_filtered": sum(1 for r in rows if "filtered" in r), "filtered_note": FILTERED_NOTE,
            "records": rows}


def classify_stage(descriptions: str | Path, category: str, categories: Any,
                   out: str | Path, min_score: Mapping[str, float] | None = None) -> None:
    """Rule ``classify``: :func:`classify` every description of ``descriptions``
    (descriptions.json) for ``category`` of ``categories`` (``config["labels"]["categories"]``
    see :func:`resolve_categories`); the payload to ``out``
    (classified/{category}.json). With ``min_score`` (``labels.describe.min_score``) only
    descriptions whose scores reach it are classified; the rest are left unlabelled
    (:func:`apply_min_score`)."""
    from saeflow.core.io import write_json
    from saeflow.formats.descriptions import (read_description_meta, read_description_scores,
                                              read_descriptions)

    options = resolve_categories(categories)[category]
    records = read_descriptions(descriptions)
    if min_score:
        scores = read_description_scores(descriptions)
        if not scores:
            raise InputError(descriptions, "scores", "no description is scored; "
                             "labels.describe.min_score needs labels.describe.backend autointerp")
        kept = [r for r in records
                if score_shortfall(scores.get(r["feature_index"]), min_score) is None]
        payload = apply_min_score(classify(kept, category, options), records, scores, min_score)
    else:
        payload = classify(records, category, options)
    meta = read_description_meta(descriptions)
    beyond = [r["feature_id"] for r in payload["records"]
              if meta["d_sae"] is not None and r["feature_index"] >= meta["d_sae"]]
    if beyond:  # an imported file's features must be the SAE's (labels.categories.<c>.path)
        raise InputError(options["path"], "feature_index", f"rows of features beyond the "
                         f"SAE's width (d_sae {meta['d_sae']} of {meta['hook']}, the SAE of "
                         f"{descriptions}): {', '.join(beyond[:5])}"
                         + (f" and {len(beyond) - 5} more" if len(beyond) > 5 else ""))
    write_json(out, payload, {**options, "min_score": dict(min_score)} if min_score else options)
