"""Scoring an explanation, delphi's detection and fuzzing (EleutherAI/delphi at commit 3c2e139,
``delphi/scorers/classifier/``): an LLM given only the explanation classifies held-out
contexts, and the score is its balanced accuracy.

- **Detection** (``detection.py``): the held-out activating contexts and the non-activating
  contexts, as plain text, shuffled; for each the LLM answers 1 (the latent is present) or 0.
  An activating context is a positive.
- **Fuzzing** (``fuzz.py``, ``fuzz_type="default"``, ``sample._prepare_text``): the same
  contexts with tokens marked ``<<so>>``: in each held-out activating context the tokens
  whose activation reaches ``THRESHOLD`` x that context's maximum (correctly marked, a
  positive); in each non-activating context ``n_incorrect`` tokens drawn at random, where
  ``n_incorrect`` is the ceiling of the mean count of non-zero tokens per held-out activating
  context (wrongly marked, a negative). The LLM answers 1 when every marked token fits the
  explanation. (delphi always marks the token at ``len - len // 4``, where its centred
  windows put the activating token; our contexts are not centred, so every marked position is
  drawn.)

Both shuffle their samples (``random.Random(seed)``), ask ``examples_per_prompt`` at a time
(delphi ``num_examples_per_scorer_prompt``, default 5) with delphi's system prompt, three
few-shot exchanges and ``Latent explanation: ...`` / ``Text examples:`` / ``Example i: ...``,
and read the first ``[...]`` of the reply as a JSON list of 0/1 (``Classifier._parse``). A
reply that does not parse, or lists a different number of answers, leaves that prompt's
samples unanswered: counted in ``n_unanswered``, left out of the confusion (delphi
``log/result_analysis.compute_confusion`` drops them too).

Balanced accuracy (delphi ``compute_classification_metrics``) = (TP / P + TN / N) / 2 over the
answered samples, P activating and N non-activating. Where P or N is 0 delphi counts that
term as 0; here the score is then undefined (None), so an unscorable latent never looks half
right.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from saeflow.labels.explainer import THRESHOLD, mark

SCORERS = ("detection", "fuzzing")
DEFINITIONS = {
    "detection": "delphi detection (EleutherAI/delphi@3c2e139 scorers/classifier/detection.py): "
                 "the LLM, given the explanation, says which of the held-out activating and the "
                 "non-activating contexts (plain text) have the latent; balanced accuracy "
                 "(TP/P + TN/N)/2 over answered contexts, None when P or N is 0",
    "fuzzing": "delphi fuzzing (EleutherAI/delphi@3c2e139 scorers/classifier/fuzz.py, "
               "fuzz_type default): held-out activating contexts with their tokens >= 0.3 x "
               "the context's max marked (correct) and non-activating contexts with "
               "ceil(mean non-zero tokens per activating context) random tokens marked "
               "(incorrect); the LLM says whether each marking is correct; balanced accuracy "
               "(TP/P + TN/N)/2 over answered contexts, None when P or N is 0",
}

SYSTEM = {
    "detection": """You are an intelligent and meticulous linguistics researcher.

You will be given a certain latent of text, such as "male pronouns" or "text with negative sentiment".

You will then be given several text examples. Your task is to determine which examples possess the latent.

For each example in turn, return 1 if the sentence is correctly labeled or 0 if the tokens are mislabeled. You must return your response in a valid Python list. Do not return anything else besides a Python list.
""",  # noqa: E501 - delphi's text, verbatim
    "fuzzing": """You are an intelligent and meticulous linguistics researcher.

You will be given a certain latent of text, such as "male pronouns" or "text with negative sentiment". You will be given a few examples of text that contain this latent. Portions of the sentence which strongly represent this latent are between tokens << and >>.

Some examples might be mislabeled. Your task is to determine if every single token within << and >> is correctly labeled. Consider that all provided examples could be correct, none of the examples could be correct, or a mix. An example is only correct if every marked token is representative of the latent

For each example in turn, return 1 if the sentence is correctly labeled or 0 if the tokens are mislabeled. You must return your response in a valid Python list. Do not return anything else besides a Python list.
""",  # noqa: E501 - delphi's text, verbatim
}

FEW_SHOT = {
    "detection": (
        ("""Latent explanation: Words related to American football positions, specifically the tight end position.

Test examples:

Example 0:<|endoftext|>Getty ImagesĊĊPatriots tight end Rob Gronkowski had his bossâĢĻ
Example 1: names of months used in The Lord of the Rings:ĊĊâĢľâĢ¦the
Example 2: Media Day 2015ĊĊLSU defensive end Isaiah Washington (94) speaks to the
Example 3: shown, is generally not eligible for ads. For example, videos about recent tragedies,
Example 4: line, with the left side âĢĶ namely tackle Byron Bell at tackle and guard Amini
""", "[1,0,0,0,1]"),
        ("""Latent explanation: The word "guys" in the phrase "you guys".

Test examples:

Example 0: enact an individual health insurance mandate?âĢĿ, Pelosi's response was to dismiss both
Example 1: birth control access<|endoftext|> but I assure you women in Kentucky aren't laughing as they struggle
Example 2: du Soleil Fall Protection Program with construction requirements that do not apply to theater settings because
Example 3:Ċ<|endoftext|> distasteful. Amidst the slime lurk bits of Schadenfre
Example 4: the<|endoftext|>ľI want to remind you all that 10 days ago (director Massimil
""", "[0,0,0,0,0]"),
        ("""Latent explanation: "of" before words that start with a capital letter.

Test examples:

Example 0: climate, TomblinâĢĻs Chief of Staff Charlie Lorensen said.Ċ
Example 1: no wonderworking relics, no true Body and Blood of Christ, no true Baptism
Example 2:ĊĊDeborah Sathe, Head of Talent Development and Production at Film London,
Example 3:ĊĊIt has been devised by Director of Public Prosecutions (DPP)
Example 4: and fair investigation not even include the Director of Athletics? Â· Finally, we believe the
""", "[1,1,1,1,1]"),
    ),  # noqa: E501 - delphi's text, verbatim
    "fuzzing": (
        ("""Latent explanation: Words related to American football positions, specifically the tight end position.

Test examples:

Example 0:<|endoftext|>Getty ImagesĊĊPatriots<< tight end>> Rob Gronkowski had his bossâĢĻ
Example 1: posted<|endoftext|>You should know this<< about>> offensive line coaches: they are large, demanding<< men>>
Example 2: Media Day 2015ĊĊLSU<< defensive>> end Isaiah Washington (94) speaks<< to the>>
Example 3:<< running backs>>," he said. .. Defensive<< end>> Carroll Phillips is improving and his injury is
Example 4:<< line>>, with the left side âĢĶ namely<< tackle>> Byron Bell at<< tackle>> and<< guard>> Amini
""", "[1,0,0,1,1]"),
        ("""Latent explanation: The word "guys" in the phrase "you guys".

Test examples:

Example 0: if you are<< comfortable>> with it. You<< guys>> support me in many other ways already and
Example 1: birth control access<|endoftext|> but I assure you<< women>> in Kentucky aren't laughing as they struggle
Example 2:âĢĻs gig! I hope you guys<< LOVE>> her, and<< please>> be nice,
Example 3:American, told<< Hannity>> that âĢľyou<< guys>> are playing the race card.âĢĿ
Example 4:<< the>><|endoftext|>ľI want to<< remind>> you all that 10 days ago (director Massimil
""", "[0,0,0,0,0]"),
        ("""Latent explanation: "of" before words that start with a capital letter.

Test examples:

Example 0: climate, TomblinâĢĻs Chief<< of>> Staff Charlie Lorensen said.Ċ
Example 1: no wonderworking relics, no true Body and Blood<< of>> Christ, no true Baptism
Example 2:ĊĊDeborah Sathe, Head<< of>> Talent Development and Production at Film London,
Example 3:ĊĊIt has been devised by Director<< of>> Public Prosecutions (DPP)
Example 4: and fair investigation not even include the Director<< of>> Athletics? Â· Finally, we believe the
""", "[1,1,1,1,1]"),
    ),  # noqa: E501 - delphi's text, verbatim
}


@dataclass(frozen=True)
class Sample:
    """One context as a scorer shows it: its text (marked for fuzzing) and the truth."""

    text: str
    activating: bool
    prompt: int


def detection_samples(test: Sequence[Mapping[str, Any]],
                      non_activating: Sequence[Mapping[str, Any]]) -> list[Sample]:
    """Detection's samples: every context as plain text, activating ones positive."""
    return ([Sample("".join(c["tokens"]), False, int(c["prompt"])) for c in non_activating]
            + [Sample("".join(c["tokens"]), True, int(c["prompt"])) for c in test])


def n_incorrect(test: Sequence[Mapping[str, Any]]) -> int:
    """Tokens marked in a wrongly marked context: the ceiling of the mean count of non-zero
    activations per held-out activating context (delphi ``mean_n_activations_ceil``)."""
    counts = [sum(1 for a in c["activations"] if a != 0) for c in test]
    return math.ceil(sum(counts) / len(counts)) if counts else 0


def fuzzing_samples(test: Sequence[Mapping[str, Any]], non_activating: Sequence[Mapping[str, Any]],
                    rng: random.Random) -> list[Sample]:
    """Fuzzing's samples: each activating context with its tokens at or above ``THRESHOLD``
    x its maximum marked (positive); each non-activating context with :func:`n_incorrect`
    of its tokens (at most all) marked at random (negative)."""
    k = n_incorrect(test)
    samples = []
    for c in non_activating:
        drawn = set(rng.sample(range(len(c["tokens"])), min(k, len(c["tokens"]))))
        samples.append(Sample(mark(c["tokens"], drawn.__contains__), False, int(c["prompt"])))
    for c in test:
        acts = c["activations"]
        cut = THRESHOLD * max(acts)
        samples.append(Sample(mark(c["tokens"], lambda i: acts[i] >= cut), True, int(c["prompt"])))
    return samples


def batches(samples: Sequence[Sample], rng: random.Random, size: int) -> list[list[Sample]]:
    """``samples`` shuffled by ``rng``, then cut into prompts of ``size`` (delphi
    ``Classifier.__call__`` and ``_batch``)."""
    shuffled = list(samples)
    rng.shuffle(shuffled)
    return [shuffled[i:i + size] for i in range(0, len(shuffled), size)]


def scorer_messages(scorer: str, explanation: str, batch: Sequence[Sample]) -> list[dict[str, str]]:
    """The chat messages of one scorer prompt (delphi ``prompts/detection_prompt.prompt``,
    ``fuzz_prompt.prompt`` and ``Classifier._build_prompt``)."""
    examples = "\n".join(f"Example {i}: {s.text}" for i, s in enumerate(batch))
    messages = [{"role": "system", "content": SYSTEM[scorer]}]
    for prompt, reply in FEW_SHOT[scorer]:
        messages += [{"role": "user", "content": prompt},
                     {"role": "assistant", "content": reply}]
    messages.append({"role": "user", "content": f"Latent explanation: {explanation}\n\n"
                                                f"Text examples:\n\n{examples}\n"})
    return messages


def parse_predictions(reply: str, n: int) -> list[bool] | None:
    """The first ``[...]`` of ``reply`` as ``n`` answers (1/0 or true/false), None when it
    is missing, not a JSON list of such, or of another length (delphi ``Classifier._parse``)."""
    match = re.search(r"\[.*?\]", reply, re.DOTALL)
    if match is None:
        return None
    try:
        values = json.loads(match.group(0).lower())
    except json.JSONDecodeError:
        return None
    if len(values) != n or any(v not in (0, 1) for v in values):
        return None
    return [bool(v) for v in values]


def balanced_accuracy(samples: Sequence[Sample], predictions: Sequence[bool | None]
                      ) -> dict[str, Any]:
    """``{balanced_accuracy, n, n_activating, n_non_activating, tp, tn, fp, fn, n_unanswered}``
    of ``predictions`` (None = unanswered) against each sample's truth; see the module."""
    answered = [(s.activating, p) for s, p in zip(samples, predictions, strict=True)
                if p is not None]
    tp = sum(1 for truth, p in answered if truth and p)
    fn = sum(1 for truth, p in answered if truth and not p)
    tn = sum(1 for truth, p in answered if not truth and not p)
    fp = sum(1 for truth, p in answered if not truth and p)
    pos, neg = tp + fn, tn + fp
    score = (tp / pos + tn / neg) / 2 if pos and neg else None
    return {"balanced_accuracy": score, "n": len(answered), "n_activating": pos,
            "n_non_activating": neg, "tp": tp, "tn": tn, "fp": fp, "fn": fn,
            "n_unanswered": len(samples) - len(answered)}
