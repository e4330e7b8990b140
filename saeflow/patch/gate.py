"""Gates on measures that a wrong estimator fails: is an estimator's estimate of every node's
effect close enough to exhaustive exact patching to be used? And can the sampled
false-negative check of ``patch_verify`` tell anything at all?

Why not false negatives. Where few nodes are real (the toy: 3 to 7 of 2,048 latents), any
ranker that puts those few in its top k has 0 false negatives, and a sampled miss rate of 0 is
inside every interval that starts at 0: on the toy, activation change without the gradient,
sign-flipped AtP and AtP with another pair's signs all had 0 false negatives and "covered".
A ranking by ``|effect|`` cannot see a sign at all: sign-flipped AtP has AtP's false negatives
and recall exactly (``tests/patch/test_gate.py``). The gate judges instead (:data:`MEASURES`,
each from :func:`saeflow.patch.exhaustive.compare_with_exact` and
:func:`saeflow.patch.summary.exhaustive_comparison`):

* ``spearman_active_latents``: the order of the latents that move (a flipped sign reverses
  it, a gradient-free change scrambles it);
* ``sign_agreement_real``: over the nodes whose exact effect is clearly non-zero (``|mean
  exact| >=`` the false-negative threshold), the share with exact's sign (what another pair's
  signs or a flipped sign gets wrong, and what a ranking by ``|effect|`` never sees);
* ``relative_l1_error``: ``sum |estimate - exact| / sum |exact|`` over the node means (the
  scale: a gradient-free change is in activation units, not logit-difference units).

Thresholds are ``patch.gate`` (config/README.md gives each one's reason: halfway between
what an estimator with no information scores and what exact patching scores); a measure over
fewer than ``patch.gate.min_nodes`` nodes is not judged ("too few to judge"). Magnitude-only
estimators are gated on the measures that apply to them (:func:`gate`'s ``not_applicable``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Measure:
    """One gate measure: the ``patch.gate`` key of its threshold, whether the value must be at
    least (``>=``) or at most (``<=``) it, the record key counting the nodes it is over, and
    what those nodes are."""

    threshold_key: str
    rule: str
    count_key: str
    over: str


MEASURES = {
    "spearman_active_latents": Measure("min_spearman", ">=", "n_active_latents",
                                       "latents whose value differs in some pair"),
    "sign_agreement_real": Measure("min_sign_agreement", ">=", "n_real",
                                   "real nodes (|mean exact| >= the false-negative threshold)"),
    "relative_l1_error": Measure("max_relative_l1", "<=", "n_nodes", "every node's mean"),
}
# why a measure does not apply to a kind of estimate
NOT_APPLICABLE = {
    "magnitude_sign": "magnitudes: estimate and reference (mean |exact|) are both >= 0, so "
                      "their signs agree by construction",
    "rank_only": "off by a scale of its own (GradDrop's 1 / (L - 1)): only ranks compare",
}


def judge(value: float | None, n: int, measure: Measure, opts: Mapping[str, Any]
          ) -> dict[str, Any]:
    """One measure's record: value, threshold, rule, node count and ``pass`` (None with a
    ``note`` when it cannot be judged: no value, or fewer than ``opts["min_nodes"]`` nodes)."""
    threshold = float(opts[measure.threshold_key])
    out: dict[str, Any] = {"value": value, "threshold": threshold, "rule": measure.rule,
                           "n": int(n), "over": measure.over}
    if value is None:
        out.update({"pass": None, "note": "no value: nothing to compare"})
    elif n < int(opts["min_nodes"]):
        out.update({"pass": None, "note": f"{n} nodes, fewer than patch.gate.min_nodes = "
                                          f"{opts['min_nodes']}: too few to judge"})
    else:
        out["pass"] = bool(value >= threshold if measure.rule == ">=" else value <= threshold)
    return out


def gate(record: Mapping[str, Any], opts: Mapping[str, Any],
         not_applicable: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The gate block of one estimator in one mode (``record``: its comparison with exact,
    holding each measure of :data:`MEASURES` and its count). ``not_applicable``: measure ->
    why it does not apply to this estimator (left out of the verdict). ``verdict``: ``fail``
    when a judged measure fails, ``pass`` when every applicable measure was judged and passed,
    else ``incomplete`` (``not_judged`` names the measures that could not be)."""
    skip = dict(not_applicable or {})
    measures = {name: judge(record.get(name), record.get(m.count_key) or 0, m, opts)
                for name, m in MEASURES.items() if name not in skip}
    failed = [k for k, m in measures.items() if m["pass"] is False]
    not_judged = [k for k, m in measures.items() if m["pass"] is None]
    verdict = "fail" if failed else "incomplete" if not_judged or not measures else "pass"
    return {"verdict": verdict, "measures": measures, "failed": failed,
            "not_judged": not_judged, "not_applicable": skip}


def miss_rate_judgement(n_real_top: int, missed_upper95: float | None, n_pool: int
                        ) -> dict[str, Any]:
    """Can ``patch_verify``'s sampled check tell AtP's misses? Only when its miss-rate interval
    rules out that AtP misses as many real latents as its top k holds (``missed_upper95 <
    n_real_top``: recall above one half at 95%); with no real latent in the top k, or an
    interval that allows more misses than that, it cannot tell, however few misses it saw."""
    if n_pool == 0:
        return {"can_tell": True, "why": "every candidate latent was patched exactly: nothing "
                                         "outside the top k to miss"}
    if n_real_top == 0:
        return {"can_tell": False, "why": "no real latent in the top k: a miss rate has "
                                          "nothing to be compared with"}
    assert missed_upper95 is not None
    if missed_upper95 >= n_real_top:
        return {"can_tell": False,
                "why": f"the interval allows up to {missed_upper95:.1f} real latents outside "
                       f"the top k, against {n_real_top} real in it: too few samples for "
                       "a pool this size (raise patch.n_random)"}
    return {"can_tell": True,
            "why": f"at most {missed_upper95:.1f} real latents outside the top k (95%), fewer "
                   f"than the {n_real_top} real in it"}


def coverage_judgement(n_real_pool: int) -> dict[str, Any]:
    """Does "the sampled interval covers the pool's true miss rate" say anything? Not when the
    pool holds no real latent: every sample then has 0 misses, its interval starts at 0, and a
    true rate of 0 is inside it whatever the ranker."""
    if n_real_pool == 0:
        return {"can_tell": False, "why": "the pool holds no real latent: a true miss rate of "
                                          "0 is inside every interval from 0 misses"}
    return {"can_tell": True, "why": f"the pool holds {n_real_pool} real latents"}


def verdicts(blocks: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """``{estimator: verdict}`` from ``{estimator: record with a "gate" block}``."""
    return {name: rec["gate"]["verdict"] for name, rec in blocks.items() if "gate" in rec}
