"""Build the toy world: tokenizer, prompt sets and the ground truth every method is checked on.

The tokenizer is a byte-level BPE from the ``tokenizers`` library whose pre-tokenizer keeps
every digit and punctuation character apart, so one-character edits keep token lengths equal
(the clean/corrupted pairs need that) and every answer becomes a single token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saeflow.core.prompts import encode_prompt
from saeflow.toy.corpus import (
    ANSWERS, LABELS, NAMES, QUESTION, TEMPLATES, WORDS, Example,
    sample_examples, sample_pairs, training_templates,
)

BOS, PAD = "<|bos|>", "<|pad|>"
# One pre-token per word, digit, punctuation character or whitespace run (optional leading space).
_PRETOKEN_PATTERN = r" ?[A-Za-z_]+| ?[0-9]| ?[^\sA-Za-z0-9_]|\s+"
TOKEN_CLASSES = ("special", "digit", "quote", "string_word", "name", "builtin", "operator",
                 "bracket", "question", "answer", "other")


@dataclass(frozen=True)
class WorldConfig:
    """``config["world"]`` plus the top-level ``seed``, as validated; the defaults live in
    workflow/schemas/config.schema.yaml only (:meth:`defaults` reads them from there)."""

    seed: int
    n_train: int
    n_heldout: int
    n_pairs: int
    vocab_size: int
    unseen_templates: tuple[str, ...]  # snippet templates kept out of training

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> WorldConfig:
        """From the validated ``world`` section with ``seed``; a missing key is an error."""
        from saeflow.core.config import strict_fields

        values = strict_fields(cls, raw, "world")
        values["unseen_templates"] = tuple(values["unseen_templates"])
        return cls(**values)

    @classmethod
    def defaults(cls, **overrides: Any) -> WorldConfig:
        """The schema's defaults (``world`` and the top-level ``seed``), then ``overrides``:
        for callers with no validated config (tests, benchmarks)."""
        from saeflow.core.config import schema_defaults

        return cls.from_dict({"seed": schema_defaults("")["seed"], **schema_defaults("world"),
                              **overrides})


@dataclass
class World:
    """All prompt sets as plain records, plus the texts the tokenizer is trained on."""

    prompt_sets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _record(example: Example, seen: bool, **extra: Any) -> dict[str, Any]:
    return {"text": example.prompt, "answer": example.answer, "label": example.label,
            "label_id": LABELS.index(example.label), "template": example.template,
            "seen_template": seen, "snippet": example.snippet, **extra}


def build_prompt_sets(cfg: WorldConfig) -> World:
    """Sample train / held-out (seen and unseen templates) / pair prompt sets from ``cfg.seed``."""
    rng = random.Random(cfg.seed)
    seen = training_templates(cfg.unseen_templates)
    world = World()
    world.prompt_sets["train"] = [_record(e, True) for e in sample_examples(seen, cfg.n_train, rng)]
    world.prompt_sets["heldout_seen"] = [
        _record(e, True) for e in sample_examples(seen, cfg.n_heldout, rng)]
    world.prompt_sets["heldout_unseen"] = [
        _record(e, False) for e in sample_examples(list(cfg.unseen_templates), cfg.n_heldout, rng)]
    pairs = []
    for k, (family, clean, corrupted) in enumerate(sample_pairs(cfg.n_pairs, rng)):
        pairs.append(_record(clean, clean.template in seen, pair_id=k, role="clean", family=family))
        pairs.append(_record(corrupted, corrupted.template in seen, pair_id=k, role="corrupted",
                             family=family))
    world.prompt_sets["pairs"] = pairs
    return world


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE fast tokenizer with BOS/PAD specials; every answer must be one token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PRETOKEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, pad_token=PAD,
                                   eos_token=BOS, clean_up_tokenization_spaces=False)
    for answer in ANSWERS:
        ids = fast.encode(answer, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"answer {answer!r} is {len(ids)} tokens; raise world.vocab_size")
    return fast


def add_token_positions(tokenizer, records: list[dict[str, Any]]) -> None:
    """Record named token positions (``pos_final``, ``pos_snippet_end``) in each record."""
    for record in records:
        n_snippet = len(encode_prompt(tokenizer, record["snippet"]))
        record["n_tokens"] = len(encode_prompt(tokenizer, record["text"]))
        record["pos_final"] = record["n_tokens"] - 1
        record["pos_snippet_end"] = n_snippet - 1


def pair_difference_positions(tokenizer, pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per pair, the token positions where clean and corrupted differ; lengths must match."""
    out = []
    for clean, corrupted in zip(pairs[0::2], pairs[1::2], strict=True):
        a, b = encode_prompt(tokenizer, clean["text"]), encode_prompt(tokenizer, corrupted["text"])
        if len(a) != len(b):
            raise ValueError(f"pair {clean['pair_id']}: token lengths differ ({len(a)} vs {len(b)})")
        diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        out.append({"pair_id": clean["pair_id"], "family": clean["family"], "length": len(a),
                    "diff_positions": diff})
    return out


def classify_token(piece: str) -> str:
    """The ground-truth class of one decoded token (used as the toy world's feature truth)."""
    text = piece.strip()
    if piece in (BOS, PAD):
        return "special"
    if " " + text in ANSWERS or text in LABELS:
        return "answer"
    if text.isdigit():
        return "digit"
    if text in ('"', "'", '"[', '":'):
        return "quote"
    if text in WORDS:
        return "string_word"
    if text in NAMES:
        return "name"
    if text in ("print", "len", "list", "range", "abs", "str", "int", "append", "if",
                "compute", "parse", "load"):
        return "builtin"
    if text in ("+", "-", "/", "%", "=", ">", "*", ";", ".", ","):
        return "operator"
    if text in ("(", ")", "[", "]"):
        return "bracket"
    if text in ("#", "When", "this", "code", "is", "executed", "Python", "will", "raise", "a"):
        return "question"
    return "other"


def ground_truth(tokenizer, pairs_diff: list[dict[str, Any]]) -> dict[str, Any]:
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    pieces = [tokenizer.convert_tokens_to_string([tok]) for tok in vocab]
    return {
        "labels": list(LABELS),
        "answer_token_ids": {a.strip(): tokenizer.encode(a, add_special_tokens=False)[0]
                             for a in ANSWERS},
        "token_classes": list(TOKEN_CLASSES),
        "token_class_of_id": [classify_token(p) if t not in (BOS, PAD) else "special"
                              for t, p in zip(vocab, pieces)],
        "pairs": pairs_diff,
        "templates": sorted(TEMPLATES),
        "question": QUESTION,
    }


def save_tokenizer(tokenizer, directory: str | Path) -> None:
    tokenizer.save_pretrained(str(directory))


def load_tokenizer(directory: str | Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(directory))


def toy_world_stage(world_cfg: dict[str, Any], seed: int, prompt_paths: list[str | Path],
                tokenizer_dir: str | Path, truth_path: str | Path) -> None:
    """Rule ``toy_world``: sample the prompt sets from ``world_cfg`` (``config["world"]``) and
    ``seed``, train the tokenizer on them (saved to ``tokenizer_dir``), add token positions and
    write each prompt set to the path of ``prompt_paths`` whose stem names it, and the ground
    truth (``truth.json``) to ``truth_path``."""
    from saeflow.core.io import write_json, write_jsonl

    cfg = WorldConfig.from_dict({**world_cfg, "seed": seed})
    prompt_sets = build_prompt_sets(cfg).prompt_sets
    texts = [r["text"] + r["answer"] for records in prompt_sets.values() for r in records]
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    save_tokenizer(tokenizer, tokenizer_dir)
    for records in prompt_sets.values():
        add_token_positions(tokenizer, records)
    for path in prompt_paths:
        write_jsonl(path, prompt_sets[Path(path).stem])
    truth = ground_truth(tokenizer, pair_difference_positions(tokenizer, prompt_sets["pairs"]))
    write_json(truth_path, truth, config={"world": world_cfg})
