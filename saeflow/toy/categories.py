"""The toy world's label categories, defined by the token classes of its ground truth."""

from __future__ import annotations

from typing import Any

from saeflow.toy.corpus import WORDS


def toy_categories() -> dict[str, dict[str, Any]]:
    """The toy world's default categories, ready for a config: keyword ``patterns`` that read
    :func:`saeflow.labels.describe.describe_features` texts (top token first, JSON-quoted), the
    ``token_classes`` of ``truth.json`` that define each category's ground truth, and the
    ``question`` a human (or the oracle) answers."""
    return {
        "digits": {"patterns": [r'^Top tokens: " ?\d"'], "token_classes": ["digit"],
                   "question": "Does this feature respond to numbers or digits?"},
        "string-literal": {
            "patterns": [r"""^Top tokens: " ?(\\"|')""", rf'^Top tokens: " ?({"|".join(WORDS)})"'],
            "token_classes": ["quote", "string_word"],
            "question": "Does this feature respond to string literals: quote marks or the "
                        "words inside them?"},
    }
