"""One calibration check: what saeflow reports, the kind of rate counted on null or planted
data, its nominal level, the design, and the run that counts it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

FPR, COVERAGE = "false-positive rate", "coverage"


@dataclass(frozen=True)
class Check:
    """One calibration: ``run(reps, seed)`` returns ``(hits, n)``, the p-values at or below
    ``nominal`` (``kind`` FPR) or the intervals covering the truth (COVERAGE) among ``n``
    replicates; ``reps`` is the full run's replicate count (a scale multiplies it)."""

    quantity: str  # what saeflow reports, as a reader finds it in an output
    kind: str
    nominal: float
    design: str  # the null or planted data, in a sentence
    reps: int
    run: Callable[[int, int], tuple[int, int]]
