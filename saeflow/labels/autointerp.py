"""Auto-interpretation (``labels.describe.backend: autointerp``): an explanation per latent from
any OpenAI-compatible endpoint, written from the latent's activating contexts and scored by
delphi's detection and fuzzing, for SAEs nobody has described (one the pipeline trained).

Per latent that fires on the described prompt set, the contexts of
:func:`saeflow.latents.contexts.latent_contexts` (its ``top`` prompts, samples from its
activation ``quantiles``, random ``non_activating`` prompts) are split so the scorers test
contexts the explainer never saw: every other quantile sample, in quantile order (so the
held-out set spans the activation range as delphi's ``test`` quantile sample does), is held
out; the explainer sees the strongest ``top`` prompts and the remaining quantile samples
(delphi's ``mix`` train type: top examples plus quantile samples), each prompt once.

1. The explainer (:mod:`saeflow.labels.explainer`, delphi's default prompt) writes one
   explanation per latent; a reply without ``[EXPLANATION]:`` keeps delphi's placeholder text,
   is counted (``n_unparsed``) and is not scored.
2. The scorers (:mod:`saeflow.labels.scorers`) ask detection and fuzzing prompts about the
   held-out activating and the non-activating contexts; each score is a balanced accuracy
   with its confusion counts.

Every request goes through :func:`saeflow.labels.classify.ask_all`, the classification
client: cached per request under ``llm.cache_dir`` (a rerun or an interrupted run pays only
for new requests; every draw is seeded by ``(seed, latent)``, so a rerun asks the same
prompts), at most ``llm.concurrency`` in flight, retried on rate limits and server faults,
the key read from the environment variable ``llm.api_key_env`` and never stored.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from saeflow.core.errors import InputError
from saeflow.labels.classify import LLMConfig, ask_all
from saeflow.labels.explainer import PROMPT_VERSION, UNPARSED, explainer_messages, parse_explanation
from saeflow.labels.scorers import (
    DEFINITIONS, SCORERS, balanced_accuracy, batches, detection_samples, fuzzing_samples,
    parse_predictions, scorer_messages,
)

Context = dict[str, Any]
LATENTS_PER_READ = 2048  # latents whose contexts are gathered per pass over the codes file


@dataclass(frozen=True)
class AutoInterpSettings:
    """The autointerp keys of ``labels.describe`` (config/README.md)."""

    n_top: int
    n_quantiles: int
    per_quantile: int
    n_non_activating: int
    examples_per_prompt: int
    window_left: int
    window_right: int
    seed: int

    @classmethod
    def from_dict(cls, describe: Mapping[str, Any], source: str = "config") -> AutoInterpSettings:
        """From ``labels.describe`` (other backends' keys ignored) over the schema's defaults."""
        from saeflow.core.config import schema_defaults, strict_fields

        names = {f.name for f in fields(cls)}
        given = {k: v for k, v in describe.items() if k in names}
        defaults = {k: v for k, v in schema_defaults("labels.describe").items() if k in names}
        return cls(**strict_fields(cls, given, "labels.describe", source, defaults))

    def context_settings(self) -> Any:
        """The :class:`saeflow.latents.contexts.ContextSettings` to gather with."""
        from saeflow.latents.contexts import ContextSettings

        return ContextSettings(top_k=self.n_top, n_quantiles=self.n_quantiles,
                               per_quantile=self.per_quantile, n_random=self.n_non_activating,
                               left=self.window_left, right=self.window_right, seed=self.seed)


@dataclass(frozen=True)
class LatentExamples:
    """One latent's contexts, split: ``explain`` (shown to the explainer, strongest first),
    ``test`` (held-out activating) and ``non_activating``; ``max_activation`` over the
    corpus (the explainer's 0-10 scale)."""

    latent: int
    max_activation: float
    explain: list[Context]
    test: list[Context]
    non_activating: list[Context]


def split_examples(record: Mapping[str, Any], n_top: int) -> LatentExamples:
    """``record`` (one latent of :func:`~saeflow.latents.contexts.latent_contexts`) split as
    the module says: quantile samples (quantile order, each prompt once) at odd places are
    held out; the explainer gets up to ``n_top`` top prompts and the other quantile samples,
    none of them held out."""
    seen: set[int] = set()
    sampled = []
    for group in record["quantiles"]:
        for context in group["examples"]:
            if context["prompt"] not in seen:
                seen.add(context["prompt"])
                sampled.append(context)
    test = sampled[1::2]
    held = {c["prompt"] for c in test}
    explain, shown = [], set()
    for context in [*record["top"][:n_top], *sampled[0::2]]:
        if context["prompt"] not in held and context["prompt"] not in shown:
            shown.add(context["prompt"])
            explain.append(context)
    return LatentExamples(int(record["latent"]), float(record["max_activation"]), explain, test,
                          list(record["non_activating"]))


def _rng(seed: int, latent: int, what: str) -> random.Random:
    """A draw of its own per (seed, latent, scorer): reruns ask the very same prompts."""
    return random.Random(f"{seed}:{latent}:{what}")


def scorer_requests(examples: LatentExamples, explanation: str, settings: AutoInterpSettings
                    ) -> list[tuple[str, list[Any], list[dict[str, str]]]]:
    """Every scorer prompt of one latent: ``(scorer, samples of the prompt, messages)``."""
    samples = {
        "detection": detection_samples(examples.test, examples.non_activating),
        "fuzzing": fuzzing_samples(examples.test, examples.non_activating,
                                   _rng(settings.seed, examples.latent, "fuzzing-marks")),
    }
    requests = []
    for scorer in SCORERS:
        rng = _rng(settings.seed, examples.latent, scorer)
        for batch in batches(samples[scorer], rng, settings.examples_per_prompt):
            requests.append((scorer, batch, scorer_messages(scorer, explanation, batch)))
    return requests


def explain_and_score(latents: Sequence[LatentExamples], settings: AutoInterpSettings,
                      llm: LLMConfig, source: str = "config"
                      ) -> list[tuple[str | None, dict[str, dict[str, Any]]]]:
    """Per latent, its explanation (None: the reply did not parse) and its scores
    ``{detection: {...}, fuzzing: {...}}`` (:func:`saeflow.labels.scorers.balanced_accuracy`;
    an unparsed explanation's have ``n`` 0 and no score)."""
    replies = ask_all(llm, [explainer_messages(x.explain, x.max_activation) for x in latents],
                      source)
    explanations = [parse_explanation(r) for r in replies]
    requests = [(i, *req) for i, (x, text) in enumerate(zip(latents, explanations))
                if text is not None for req in scorer_requests(x, text, settings)]
    answers = ask_all(llm, [messages for *_, messages in requests], source)
    judged: dict[tuple[int, str], tuple[list[Any], list[bool | None]]] = {
        (i, s): ([], []) for i in range(len(latents)) for s in SCORERS}
    for (i, scorer, batch, _), reply in zip(requests, answers, strict=True):
        predictions = parse_predictions(reply, len(batch))
        samples, said = judged[(i, scorer)]
        samples += batch
        said += predictions if predictions is not None else [None] * len(batch)
    return [(text, {s: balanced_accuracy(*judged[(i, s)]) for s in SCORERS})
            for i, text in enumerate(explanations)]


def autointerp_records(contexts: Mapping[int, Mapping[str, Any]], settings: AutoInterpSettings,
                       llm: LLMConfig, feature_source: str, source: str = "config"
                       ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Description records (``scores`` and ``explainer`` beside each text) of every latent of
    ``contexts`` that fires, and the file's autointerp fields (``explainer``,
    ``score_definitions``, ``n_unparsed``)."""
    latents = [split_examples(contexts[k], settings.n_top) for k in sorted(contexts)]
    latents = [x for x in latents if x.explain]
    results = explain_and_score(latents, settings, llm, source)
    explainer = {"model": llm.model, "prompt_version": PROMPT_VERSION}
    records = [{"feature_id": f"{feature_source}-{x.latent}", "feature_index": x.latent,
                "description": text if text is not None else UNPARSED,
                "explainer": {**explainer, "parsed": text is not None}, "scores": scores}
               for x, (text, scores) in zip(latents, results)]
    stats = {"explainer": {**explainer, "base_url": llm.base_url},
             "score_definitions": DEFINITIONS,
             "n_unparsed": sum(1 for text, _ in results if text is None)}
    return records, stats


def model_tokenizer(model_cfg: Mapping[str, Any], model_dir: str | Path | None) -> Any:
    """The tokenizer of the config's model, without its weights: the toy's ``tokenizer/``
    beside them; a local checkpoint's own (``model.path``); a pretrained model's from the
    Hugging Face hub (or its local cache), as TransformerLens loads it (``AutoTokenizer`` of
    the official model name); else the loaded model's."""
    if model_cfg.get("source") == "toy" and model_dir is not None:
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(Path(model_dir) / "tokenizer"))
    if model_cfg.get("source") == "local" and model_cfg.get("path"):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(model_cfg["path"]), local_files_only=True)
    if model_cfg.get("source") == "pretrained":
        from transformer_lens.loading_from_pretrained import get_official_model_name
        from transformers import AutoTokenizer

        from saeflow.core.hub import hub_access

        with hub_access(model_cfg["name"], "model.name"):
            return AutoTokenizer.from_pretrained(get_official_model_name(model_cfg["name"]))
    from saeflow.core.models import load_model

    return load_model(dict(model_cfg), model_dir).tokenizer


def firing_latents(codes: str | Path, hook: str) -> list[int]:
    """Latents of ``hook`` that fire at least once in ``codes`` (its firing frequencies)."""
    import numpy as np

    from saeflow.formats.codes import read_feature_stat
    from saeflow.formats.hdf5 import open_h5

    with open_h5(codes) as h5:
        return np.flatnonzero(read_feature_stat(h5, hook, "firing_frequency", codes) > 0).tolist()


def autointerp_from_files(codes: str | Path, activations: str | Path, tokenizer: Any, hook: str,
                          describe: Mapping[str, Any], feature_source: str
                          ) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """:func:`autointerp_records` of every firing latent of ``hook`` in ``codes`` (contexts
    from ``activations``' tokens, decoded by ``tokenizer``), with ``describe`` the
    ``labels.describe`` section; and the SAE's width ``d_sae``."""
    from saeflow.formats.codes import code_shape
    from saeflow.latents.contexts import latent_contexts

    settings = AutoInterpSettings.from_dict(describe)
    if not describe.get("llm"):
        raise InputError("config", "labels.describe.llm", "required for the autointerp backend")
    llm = LLMConfig.from_dict(describe["llm"], "config", "labels.describe.llm")
    d_sae = code_shape(codes, hook)[2]
    wanted = firing_latents(codes, hook)
    contexts = latent_contexts(codes, activations, tokenizer, hook, wanted,
                               settings.context_settings(), per_read=LATENTS_PER_READ)
    records, stats = autointerp_records(contexts, settings, llm, feature_source)
    return records, d_sae, stats
