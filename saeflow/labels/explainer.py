"""The autointerp explainer: an LLM reads a latent's activating contexts and writes one
explanation. The prompt is delphi's default explainer (EleutherAI/delphi at commit 3c2e139,
``delphi/explainers/default/prompts.py`` SYSTEM without chain of thought, the three few-shot
examples with their activation lists, ``prompt_builder.build_prompt``), copied verbatim so
an explanation here is one delphi would ask for.

A context is the dashboard dict ``{"prompt": int, "tokens": [str], "activations": [float],
"max_activation": float}`` (:mod:`saeflow.latents.contexts`). Each shown context is one line
with the tokens whose activation exceeds ``THRESHOLD`` x the context's maximum between
``<<`` and ``>>`` (delphi ``Explainer._highlight``), then a line listing those tokens with
their activation on a 0-10 scale of the latent's maximum (delphi
``Explainer._join_activations`` and ``latents/samplers.normalize_activations``:
``ceil(10 * a / max)``, clamped to 0..10; at most 11 tokens listed per context).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from itertools import groupby
from typing import Any

THRESHOLD = 0.3  # delphi Explainer.threshold and the scorers' marking threshold
PROMPT_VERSION = "delphi-default-explainer@3c2e139/saeflow-1"
UNPARSED = "Explanation could not be parsed."  # delphi's text for a reply without [EXPLANATION]:

SYSTEM = """You are a meticulous AI researcher conducting an important investigation into patterns found in language. Your task is to analyze text and provide an explanation that thoroughly encapsulates possible patterns found in it.
Guidelines:

You will be given a list of text examples on which special words are selected and between delimiters like <<this>>. If a sequence of consecutive tokens all are important, the entire sequence of tokens will be contained between delimiters <<just like this>>. How important each token is for the behavior is listed after each example in parentheses.

- Try to produce a concise final description. Simply describe the text latents that are common in the examples, and what patterns you found.
- If the examples are uninformative, you don't need to mention them. Don't focus on giving examples of important tokens, but try to summarize the patterns found in the examples.
- Do not mention the marker tokens (<< >>) in your explanation.
- Do not make lists of possible explanations. Keep your explanations short and concise.
- The last line of your response must be the formatted explanation, using [EXPLANATION]:


"""  # noqa: E501 - delphi's text, verbatim

FEW_SHOT = (
    ("""
Example 1:  and he was <<over the moon>> to find
Activations: ("over", 5), (" the", 6), (" moon", 9)
Example 2:  we'll be laughing <<till the cows come home>>! Pro
Activations: ("till", 5), (" the", 5), (" cows", 8), (" come", 8), (" home", 8)
Example 3:  thought Scotland was boring, but really there's more <<than meets the eye>>! I'd
Activations: ("than", 5), (" meets", 7), (" the", 6), (" eye", 8)
""", """
[EXPLANATION]: Common idioms in text conveying positive sentiment.
"""),
    ("""
Example 1:  a river is wide but the ocean is wid<<er>>. The ocean
Activations: ("er", 8)
Example 2:  every year you get tall<<er>>," she
Activations: ("er", 2)
Example 3:  the hole was small<<er>> but deep<<er>> than the
Activations: ("er", 9), ("er", 9)
""", """
[EXPLANATION]: The token "er" at the end of a comparative adjective describing size.
"""),
    ("""
Example 1:  something happening inside my <<house>>", he
Activations: ("house", 7)
Example 2:  presumably was always contained in <<a box>>", according
Activations: ("a", 5), ("box", 9)
Example 3:  people were coming into the <<smoking area>>".

However he
Activations: ("smoking", 2), ("area", 4)
Example 4:  Patrick: "why are you getting in the << way?>>" Later,
Activations: ("way", 4), ("?", 2)
""", """
[EXPLANATION]: Nouns representing a distinct objects that contains something, sometimes preciding a quotation mark.
"""),  # noqa: E501 - delphi's text, verbatim
)


def mark(tokens: Sequence[str], marked: Callable[[int], bool]) -> str:
    """The tokens joined, each run of consecutive ``marked`` positions between ``<<`` and
    ``>>`` (delphi ``scorers/classifier/sample._highlight``)."""
    out = []
    for is_marked, group in groupby(range(len(tokens)), key=marked):
        text = "".join(tokens[i] for i in group)
        out.append(f"<<{text}>>" if is_marked else text)
    return "".join(out)


def highlight(context: Mapping[str, Any]) -> str:
    """``context``'s text with the tokens above ``THRESHOLD`` x its maximum activation
    marked (delphi ``Explainer._highlight``: strictly above)."""
    acts = context["activations"]
    cut = max(acts) * THRESHOLD
    return mark(context["tokens"], lambda i: acts[i] > cut)


def activation_list(context: Mapping[str, Any], latent_max: float) -> str:
    """``Activations: ("tok" : n), ...`` for the marked tokens, ``n`` = ceil(10 a / max)
    clamped to 0..10 with ``max`` the latent's largest activation; at most 11 tokens
    (delphi ``Explainer._join_activations``, ``normalize_activations``)."""
    acts, tokens = context["activations"], context["tokens"]
    cut = max(acts) * THRESHOLD
    scale = max(latent_max, 1e-6)
    parts = []
    for token, a in zip(tokens, acts):
        if a > cut:
            if len(parts) > 10:
                break
            parts.append(f'("{token}" : {min(10, max(0, math.ceil(a * 10 / scale)))}), ')
    return "Activations: " + "".join(parts)


def explainer_messages(contexts: Sequence[Mapping[str, Any]], latent_max: float
                       ) -> list[dict[str, str]]:
    """The chat messages asking for one latent's explanation from ``contexts`` (its
    activating contexts, strongest first; ``latent_max`` its largest activation, delphi's
    ``LatentRecord.max_activation``): system prompt, three few-shot exchanges, then each
    context highlighted with its activation list (delphi ``DefaultExplainer`` with
    ``activations=True, cot=False``)."""
    lines = []
    for context in contexts:
        lines += [highlight(context), activation_list(context, latent_max)]
    messages = [{"role": "system", "content": SYSTEM}]
    for prompt, reply in FEW_SHOT:
        messages += [{"role": "user", "content": prompt},
                     {"role": "assistant", "content": reply}]
    messages.append({"role": "user", "content": "\n" + "\n".join(lines) + "\n"})
    return messages


def parse_explanation(reply: str) -> str | None:
    """The text after ``[EXPLANATION]:`` (delphi ``Explainer.parse_explanation``), None when
    the reply has none."""
    match = re.search(r"\[EXPLANATION\]:\s*(.*)", reply, re.DOTALL)
    return match.group(1).strip() if match and match.group(1).strip() else None
