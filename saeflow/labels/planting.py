"""Planted label noise: classifiers with known errors, drawn from the toy world's truth.

Every feature's true category is known (truth_membership.json), so a classifier can be
*planted*: each category's bucket keeps a share ``1 - false_negative_rate`` of its true
members (:func:`kept_members`) and takes contaminants making up a share ``contamination`` of
it, drawn from the other categories' members (source ``category``) or from features in no
category (source ``other``; :func:`plant_classifier`). :func:`plan` draws every replicate of
every :class:`Condition`, and :func:`oracle_validation` labels the validation sample from the
truth, as the oracle labels a human's sample. Measuring and scoring them:
:mod:`saeflow.labels.validation`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from saeflow.core.errors import InputError
from saeflow.labels.ablation import category_feature_sets

SOURCES = ("category", "other")
MEMBERS = "members:"  # prefix of the set of a bucket's true members


@dataclass(frozen=True)
class ValidationConfig:
    """``labels.validation``, typed (keys, defaults and meaning: the schema,
    workflow/schemas/config.schema.yaml): the planted ``contamination`` levels and their
    ``sources``, the ``false_negative_rate``, ``replicates`` per condition, ``other_draws`` per
    replicate, ablations stacked per forward (``sets_per_pass``), bootstrap resamples of each
    interval (``n_boot``) and the ``seed``."""

    contamination: tuple[float, ...]
    sources: tuple[str, ...]
    false_negative_rate: float
    replicates: int
    other_draws: int
    sets_per_pass: int
    n_boot: int
    seed: int

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, source: str = "config") -> ValidationConfig:
        """From ``labels.validation`` as validated; an unknown or missing key is an InputError."""
        from saeflow.core.config import strict_fields

        values = strict_fields(cls, values, "labels.validation", source)
        return cls(**{**values, "contamination": tuple(values["contamination"]),
                      "sources": tuple(values["sources"])})


@dataclass(frozen=True)
class Condition:
    """One planted noise level: ``contamination`` share of each bucket from ``source``."""

    contamination: float
    source: str  # "category" or "other"; "none" when nothing is planted (contamination 0)

    @property
    def key(self) -> str:
        return f"{self.source}@{self.contamination:g}"


def conditions(levels: Sequence[float], sources: Sequence[str]) -> list[Condition]:
    """Level 0 once (nothing planted, so no source), every other level once per source."""
    if set(sources) - set(SOURCES):
        raise InputError("config", "labels.validation.sources", f"unknown sources in {list(sources)}")
    out = [Condition(0.0, "none")] if any(level == 0 for level in levels) else []
    return out + [Condition(float(level), s) for level in sorted(levels) if level > 0 for s in sources]


def kept_members(truth: Mapping[str, Sequence[int]], false_negative_rate: float,
                 rng: np.random.Generator) -> dict[str, list[int]]:
    """The true members each category's bucket keeps: a random ``1 - false_negative_rate``
    of them (at least one); the rest are the planted false negatives."""
    kept = {}
    for name, own in truth.items():
        own = sorted(set(map(int, own)))
        if not own:
            raise InputError("truth_membership", f"members.{name}", "no true member to plant")
        picked = rng.choice(own, max(1, round((1 - false_negative_rate) * len(own))), replace=False)
        kept[name] = sorted(int(f) for f in picked)
    return kept


def plant_classifier(truth: Mapping[str, Sequence[int]], features: Sequence[int],
                     condition: Condition, kept: Mapping[str, Sequence[int]],
                     rng: np.random.Generator) -> dict[str, list[int]]:
    """Each category's predicted bucket: its ``kept`` members plus ``round(r * kept / (1 -
    r))`` contaminants from ``condition.source``, so that they are a share ``r`` of the bucket
    (fewer where the pool is smaller)."""
    members = {name: set(map(int, m)) for name, m in truth.items()}
    nowhere = sorted(set(map(int, features)) - set().union(*members.values()))
    r = condition.contamination
    buckets = {}
    for name, own in kept.items():
        n_fp = round(r * len(own) / (1 - r))
        pool = nowhere if condition.source == "other" else sorted(
            set().union(*(m for o, m in members.items() if o != name)) - members[name])
        fp = rng.choice(pool, min(n_fp, len(pool)), replace=False) if n_fp and pool else []
        buckets[name] = sorted(int(f) for f in [*own, *fp])
    return buckets


def oracle_validation(buckets: Mapping[str, Sequence[int]], truth: Mapping[str, Sequence[int]],
                      records: Sequence[Mapping[str, Any]], n: int, seed: int
                      ) -> tuple[dict[str, dict[str, int]], list[dict[str, Any]]]:
    """The sample a human would label (``saeflow label``'s draw of ``n`` described features),
    labelled from the truth: each category's confusion of the planted classifier against it,
    and the joint rows the general method reads."""
    from saeflow.formats.labels import NOT_RELATED, RELATED
    from saeflow.labels.agreement import confusion, joint_validation
    from saeflow.labels.labelling import sample_features

    sample = [r["feature_index"] for r in sample_features(records, min(n, len(records)), seed)]

    def labelled(sets: Mapping[str, Sequence[int]]) -> dict[str, list[dict[str, Any]]]:
        return {c: [{"feature_index": f, "label": RELATED if f in members else NOT_RELATED}
                    for f in sample] for c, s in sets.items() for members in [set(s)]}

    model, human = labelled(buckets), labelled(truth)
    agreements = {c: confusion(np.array([r["label"] == RELATED for r in human[c]], dtype=int),
                               np.array([r["label"] == RELATED for r in model[c]], dtype=int))
                  for c in buckets}
    return agreements, joint_validation(model, human)


@dataclass
class Replicate:
    """One planted classifier: its buckets, `other` draws (other@i), kept members (members:<c>)
    and the realised share of each bucket that is not its category."""

    condition: Condition
    index: int
    seed: int
    sets: dict[str, list[int]]
    realised: dict[str, float]


def plan(truth: Mapping[str, Sequence[int]], features: Sequence[int], cfg: ValidationConfig,
         other_size: int | None) -> list[Replicate]:
    """Every replicate's planted buckets and ``other`` draws. Replicate i keeps the same true
    members in every condition (common random numbers: conditions differ only in their
    contaminants, so their contrasts are sharper, and the kept members are measured once);
    contaminants and draws are seeded by ``cfg.seed``, the replicate and the condition."""
    out = []
    kept = [kept_members(truth, cfg.false_negative_rate, np.random.default_rng([cfg.seed, i]))
            for i in range(cfg.replicates)]
    for condition in conditions(cfg.contamination, cfg.sources):
        source = SOURCES.index(condition.source) + 1 if condition.source in SOURCES else 0
        for i in range(cfg.replicates):
            rng = np.random.default_rng([cfg.seed, i, source, round(condition.contamination * 1000)])
            buckets = plant_classifier(truth, features, condition, kept[i], rng)
            seed = int(rng.integers(2**31))
            sets = category_feature_sets(buckets, features, seed, None, other_size, cfg.other_draws)
            # The true members a bucket holds, measured alone: what its LPF is made of before
            # any method's error (a random part of the category, so not its exact mean).
            sets.update({f"{MEMBERS}{c}": m for c, m in kept[i].items()})
            realised = {c: len(set(b) - set(truth[c])) / len(b) for c, b in buckets.items()}
            out.append(Replicate(condition, i, seed, sets, realised))
    return out
