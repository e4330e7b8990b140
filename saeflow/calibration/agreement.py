"""Planted data for the agreement intervals (:func:`saeflow.labels.agreement.agreement_metrics`):
human and classifier labels drawn from a known joint distribution, whose precision, recall,
phi and kappa are computed from the distribution itself."""

from __future__ import annotations

from functools import partial

import numpy as np

from saeflow.calibration.check import COVERAGE, Check

# P(tp), P(fp), P(fn), P(tn) of a classifier that finds 80% of a 20% category with 10% of
# what it calls related wrong: a typical keyword classifier against a human
JOINT = np.array([0.16, 0.0178, 0.04, 0.7822])
N_LABELS = 300


def truth(joint: np.ndarray = JOINT) -> dict[str, float]:
    """Precision, recall, phi and kappa of the population ``joint`` (tp, fp, fn, tn)."""
    from saeflow.labels.agreement import cohen_kappa, phi_coefficient

    tp, fp, fn, tn = (float(x) for x in joint)
    return {"precision": tp / (tp + fp), "recall": tp / (tp + fn),
            "phi": phi_coefficient(tp, tn, fp, fn), "kappa": cohen_kappa(tp, tn, fp, fn)}


def labelled_sample(rng: np.random.Generator, n: int = N_LABELS,
                    joint: np.ndarray = JOINT) -> tuple[np.ndarray, np.ndarray]:
    """``human``, ``model`` 0/1 arrays ``[n]`` drawn from ``joint``."""
    cell = rng.choice(4, size=n, p=joint)
    human = np.isin(cell, (0, 2)).astype(int)  # tp, fn: the human says related
    model = np.isin(cell, (0, 1)).astype(int)  # tp, fp: the classifier says related
    return human, model


def _agreement(names: tuple[str, ...], reps: int, seed: int) -> tuple[int, int]:
    from saeflow.labels.agreement import agreement_metrics

    rng = np.random.default_rng([seed, 11])
    true = truth()
    hits = n = 0
    for i in range(reps):
        out = agreement_metrics(*labelled_sample(rng), n_boot=500, seed=i)
        for name in names:
            ci = out[f"{name}_ci95"]
            n += 1
            hits += ci is not None and ci[0] <= true[name] <= ci[1]
    return hits, n


def checks() -> list[Check]:
    design = (f"{N_LABELS} labelled features from a population where the classifier finds 80% of "
              "a 20% category and 10% of what it calls related is wrong")
    return [Check(f"agreement {what} (labels/agreement/<c>.json, {names[0]}_ci95)", COVERAGE,
                  0.95, f"{design}; {how}", reps, partial(_agreement, names))
            for what, names, how, reps in (
                ("precision and recall, Wilson", ("precision", "recall"),
                 "both intervals counted", 400),
                ("phi, bootstrap", ("phi",), "500 resamples of the rows", 300),
                ("kappa, bootstrap", ("kappa",), "500 resamples of the rows", 300))]
