"""The toy world's corpus: one-line Python snippets whose error type the model must predict.

Every snippet is followed by ``# When this code is executed, Python will raise a`` and the
answer is one of :data:`ANSWERS`. The label comes from compiling and executing the snippet
(:func:`execute_label`), never from the template, so a template can yield several labels
depending on its random slots (``x / 0`` vs ``x / 3``).

Clean/corrupted pairs flip TypeError into SyntaxError by changing one character at a known
place; :mod:`saeflow.toy.world` keeps only pairs of equal token length.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass

QUESTION = "# When this code is executed, Python will raise a"
LABELS = ("TypeError", "SyntaxError", "NameError", "ZeroDivisionError", "IndexError", "NoError")
ANSWERS = tuple(" " + label for label in LABELS)

NAMES = ("x", "y", "total", "count", "value", "item", "data", "result", "size", "score")
WORDS = ("temperature", "price", "speed", "level", "height", "weight", "label", "color", "city", "name")
FUNCTIONS = ("abs", "len", "str", "compute", "parse", "int", "load")

# Builtins visible to executed snippets: enough for the templates, nothing that touches the
# machine. Names outside this set raise NameError, which is part of the task.
_SAFE_BUILTINS = {"abs": abs, "len": len, "str": str, "int": int, "list": list, "range": range,
                  "print": lambda *args, **kwargs: None}


def execute_label(snippet: str) -> str:
    """Compile and run ``snippet``; return the name of the exception it raises, or NoError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "'int' object is not callable" SyntaxWarning
            code = compile(snippet, "<snippet>", "exec")
    except SyntaxError:
        return "SyntaxError"
    try:
        exec(code, {"__builtins__": dict(_SAFE_BUILTINS)}, {})  # noqa: S102 - our own templates
    except Exception as err:  # noqa: BLE001 - the exception type is the label
        name = type(err).__name__
        if name not in LABELS:
            raise ValueError(f"snippet {snippet!r} raised {name}, outside the label set") from err
        return name
    return "NoError"


@dataclass(frozen=True)
class Slots:
    """Random slot values shared by a template and its corrupted twin."""

    var: str
    var2: str
    word: str
    num: int
    num2: int
    small: int
    small2: int
    func: str
    items: tuple[int, ...]

    @classmethod
    def draw(cls, rng: random.Random) -> Slots:
        var = rng.choice(NAMES)
        return cls(var=var, var2=var if rng.random() < 0.5 else rng.choice(NAMES),
                   word=rng.choice(WORDS), num=rng.randint(0, 999), num2=rng.randint(0, 999),
                   small=rng.randint(0, 4), small2=rng.randint(0, 4), func=rng.choice(FUNCTIONS),
                   items=tuple(rng.randint(0, 99) for _ in range(rng.randint(1, 4))))

    @property
    def list_literal(self) -> str:
        return "[" + ", ".join(map(str, self.items)) + "]"


Template = Callable[[Slots], str]

TEMPLATES: dict[str, Template] = {
    "concat_str_int": lambda s: f'print("{s.word}: " + {s.num})',
    "concat_str_str": lambda s: f'print("{s.word}: " + "{s.num}")',
    "concat_unclosed": lambda s: f'print("{s.word}: " + {s.num}',
    "concat_open_paren": lambda s: f'print("{s.word}: " + {s.num}(',
    "divide": lambda s: f"{s.var} = {s.num} / {s.small}",
    "modulo": lambda s: f"{s.var} = {s.num} % {s.small}",
    "index_list": lambda s: f"{s.var} = {s.list_literal}; print({s.var}[{s.small}])",
    "maybe_undefined": lambda s: f"{s.var} = {s.num}; print({s.var2} + 1)",
    "len_of": lambda s: f"print(len({s.num}))" if s.small % 2 else f'print(len("{s.word}"))',
    "len_bracket": lambda s: f"print(len({s.num})]",
    "assign_literal": lambda s: f'"{s.word}" = {s.num}',
    "assign_chain": lambda s: f'{s.var} = "{s.word}" = {s.num}',
    "missing_colon": lambda s: f"if {s.var} > {s.num} print({s.var})",
    "call_int": lambda s: f"{s.var} = {s.num}({s.small})",
    "append_index": lambda s: f"{s.var} = []; {s.var}.append({s.num}); print({s.var}[{s.small}])",
    "int_plus_str": lambda s: f'{s.var} = {s.num} + "{s.word}"',
    "mixed_quotes": lambda s: f"{s.var} = {s.num} + \"{s.word}'",
    "range_index": lambda s: f"{s.var} = list(range({s.small})); print({s.var}[{s.small2}])",
    "str_minus_int": lambda s: f'{s.var} = "{s.word}" - {s.num}',
    "maybe_function": lambda s: f"{s.var} = {s.func}({s.num})",
    "unclosed_list": lambda s: f"{s.var} = [{s.num}, {s.num2}",
    "str_index": lambda s: f'print("{s.word}"[{s.small + s.small2 * 3}])',
    "floor_divide": lambda s: f"print({s.num} // ({s.small} - {s.small2}))",
}

# Clean (TypeError) -> corrupted (SyntaxError) by one character; the twin keeps every slot.
PAIR_FAMILIES: dict[str, tuple[str, str]] = {
    "close_paren": ("concat_str_int", "concat_open_paren"),
    "assign": ("str_minus_int", "assign_chain"),
    "quote": ("int_plus_str", "mixed_quotes"),
    "bracket": ("len_bracket_clean", "len_bracket"),
}
TEMPLATES["len_bracket_clean"] = lambda s: f"print(len({s.num}))"


@dataclass(frozen=True)
class Example:
    snippet: str
    label: str
    template: str

    @property
    def prompt(self) -> str:
        return f"{self.snippet}\n{QUESTION}"

    @property
    def answer(self) -> str:
        return " " + self.label


def make_example(template: str, slots: Slots) -> Example:
    snippet = TEMPLATES[template](slots)
    return Example(snippet=snippet, label=execute_label(snippet), template=template)


def sample_examples(templates: list[str], n: int, rng: random.Random) -> list[Example]:
    """``n`` examples, templates drawn uniformly, slots drawn fresh for each."""
    return [make_example(rng.choice(templates), Slots.draw(rng)) for _ in range(n)]


def sample_pairs(n: int, rng: random.Random,
                 families: tuple[str, ...] = tuple(PAIR_FAMILIES)) -> list[tuple[str, Example, Example]]:
    """``n`` (family, clean, corrupted) triples; clean raises TypeError, corrupted SyntaxError."""
    pairs = []
    for _ in range(n):
        family = rng.choice(families)
        clean_t, corrupt_t = PAIR_FAMILIES[family]
        slots = Slots.draw(rng)
        clean, corrupted = make_example(clean_t, slots), make_example(corrupt_t, slots)
        if (clean.label, corrupted.label) != ("TypeError", "SyntaxError"):
            raise AssertionError(f"pair family {family} gave {clean.label}/{corrupted.label}")
        pairs.append((family, clean, corrupted))
    return pairs


def training_templates(unseen: tuple[str, ...]) -> list[str]:
    unknown = set(unseen) - set(TEMPLATES)
    if unknown:
        raise KeyError(f"unknown templates: {sorted(unknown)}")
    return [t for t in TEMPLATES if t not in unseen]
