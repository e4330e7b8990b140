"""Attribution vs exact patching: time of AtP over every SAE latent and position
(:func:`saeflow.patch.attribution.run_atp`, error term included) vs exact latent patching
(:func:`saeflow.patch.attribution.exact_effects_all`) timed on the top-k latents and extrapolated
per latent to all of them; the speedup, next to the AtP-vs-exact Spearman on the top-k; and
what exhaustive exact patching (``patch_exact``) costs per (pair, node) row against one
forward pass.

The toy row uses the pipeline's trained toy model and SAEs (``results/toy``) when they exist,
since a rank correlation on random weights says little; otherwise a random toy-sized model.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Figure, Result

TOP_K = 20  # config patch.top_k
MAX_BATCH = 256  # config patch.max_batch
L0 = 64
TRAINED = common.REPO / "results" / "toy"


def _pairs_file(records: list[dict[str, Any]], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _trained_toy(n_pairs: int, workdir: Path) -> tuple[Any, list[Any], Path] | None:
    """The pipeline's trained toy model, its SAEs and its first ``n_pairs`` pairs, if present."""
    from saeflow.core.io import read_jsonl
    from saeflow.core.models import load_toy_model
    from saeflow.core.saes import load_sae_dir

    try:
        saes = [load_sae_dir(d) for d in sorted((TRAINED / "sae").iterdir()) if d.is_dir()]
        model = load_toy_model(TRAINED / "model")
        records = read_jsonl(TRAINED / "world" / "prompts" / "pairs.jsonl")[: 2 * n_pairs]
    except Exception:  # noqa: BLE001 - absent or half-written pipeline outputs: use random weights
        return None
    if not saes or not records:
        return None
    return model, saes, _pairs_file(records, workdir / "pairs_trained.jsonl")


def _random(size: str, n_pairs: int, workdir: Path) -> tuple[Any, list[Any], Path]:
    model = common.model(size)
    calib = common.prompts(64)
    saes = [common.random_sae(model.cfg.d_model, common.D_SAE[size], h,
                              common.resid_sample(model, h, calib), L0)
            for h in common.HOOKS[size][1:]]
    return model, saes, _pairs_file(common.pair_records(n_pairs), workdir / f"pairs_{size}.jsonl")


def measure(size: str, n_pairs: int, repeats: int, workdir: Path) -> list[Figure]:
    import numpy as np
    from scipy.stats import spearmanr

    from saeflow.patch.attribution import exact_effects_all, rank_nodes, run_atp
    from saeflow.patch.pairs import load_pairs
    from saeflow.patch.splice import prepare_saes, to_sae_transformer

    loaded = _trained_toy(n_pairs, workdir) if size == "toy" else None
    source = "trained (results/toy)" if loaded else "random init"
    model, saes, pairs = loaded or _random(size, n_pairs, workdir)
    model = to_sae_transformer(model)
    spliced = prepare_saes(model, saes)
    batches = load_pairs(pairs, model.tokenizer)
    n_latents = sum(int(s.cfg.d_sae) for s in saes)
    n = sum(len(b) for b in batches)
    mean_len = float(np.mean([b.length for b in batches for _ in range(len(b))]))

    atp = run_atp(model, spliced, batches, True, MAX_BATCH)
    top = [(node[1], node[2]) for node, _ in rank_nodes(atp) if node[0] == "latent"][:TOP_K]
    k = len(top)
    times = common.interleaved({
        "atp_all_latents": lambda: run_atp(model, spliced, batches, True, MAX_BATCH),
        "exact_top_k": lambda: exact_effects_all(model, spliced, batches, top, True, MAX_BATCH),
    }, repeats)
    exact = exact_effects_all(model, spliced, batches, top, True, MAX_BATCH).mean(0)
    atp_top = [float(atp.latent_effect[h][:, i].mean()) for h, i in top]
    rho = spearmanr(atp_top, exact).statistic if k >= 2 else None
    per_latent = [t / k for t in times["exact_top_k"]]
    exact_all = [t * n_latents for t in per_latent]
    speedup = common.paired_ratio(exact_all, times["atp_all_latents"])
    label = "toy (trained)" if loaded else size
    shared = {"source": source, "n_pairs": n, "mean_tokens": round(mean_len, 1),
              "sae_hooks": list(spliced), "n_latents": n_latents, "top_k": k}
    return [
        Figure("AtP speedup over exact patching, all latents", label, speedup, unit="x",
               detail={**shared,
                       "atp_s": common.median(times["atp_all_latents"]),
                       "exact_per_latent_s": common.median(per_latent),
                       "exact_all_latents_s_extrapolated": common.median(exact_all),
                       "speedup_per_latent_and_position": round(speedup * mean_len, 1),
                       "times_s": {k_: common.rounded(v) for k_, v in times.items()}}),
        Figure(f"AtP vs exact Spearman, top-{k}", label,
               None if rho is None or not np.isfinite(rho) else float(rho), unit="rho",
               detail={**shared, "atp": common.rounded(atp_top, 6),
                       "exact": common.rounded(exact, 6)}),
    ]


def exhaustive_cost(size: str, n_pairs: int, workdir: Path) -> Figure:
    """What exhaustive exact patching (``patch_exact``, with the error term) costs per (pair,
    node) row against one spliced forward pass of a prompt, as the stage logs it and stores it
    in exact.h5 (:func:`saeflow.patch.exhaustive.exhaustive_patching`'s ``cost``)."""
    from saeflow.patch.exhaustive import exhaustive_patching
    from saeflow.patch.pairs import load_pairs
    from saeflow.patch.splice import prepare_saes, to_sae_transformer

    loaded = _trained_toy(n_pairs, workdir) if size == "toy" else None
    model, saes, pairs = loaded or _random(size, n_pairs, workdir)
    model = to_sae_transformer(model)
    spliced = prepare_saes(model, saes)
    batches = load_pairs(pairs, model.tokenizer)
    cost = exhaustive_patching(model, spliced, batches, True, MAX_BATCH).cost
    return Figure("exhaustive exact patching: s per (pair, node) row / one forward of a prompt",
                  "toy (trained)" if loaded else size, cost["row_cost_forwards"], unit="forwards",
                  detail={
                      **cost, "n_pairs": sum(len(b) for b in batches),
                      "n_latents": sum(int(s.cfg.d_sae) for s in saes),
                      "seconds_per_pair": cost["rows_per_pair"] * cost["seconds_per_row"]})


def run(smoke: bool = False) -> Result:
    plan = [("tiny", 4, 1)] if smoke else [("toy", 64, 5), ("mid", 8, 3)]
    exhaustive = [("tiny", 2)] if smoke else [("toy", 8), ("mid", 2)]
    with tempfile.TemporaryDirectory() as tmp:
        figures = [f for size, n, reps in plan for f in measure(size, n, reps, Path(tmp))]
        figures += [exhaustive_cost(size, n, Path(tmp)) for size, n in exhaustive]
    return Result("attribution", "AtP vs exact latent patching", figures,
                  params={"plan": [{"model": s, "n_pairs": n, "repeats": r} for s, n, r in plan],
                          "exhaustive_plan": [{"model": s, "n_pairs": n} for s, n in exhaustive],
                          "top_k": TOP_K, "max_batch": MAX_BATCH, "with_error": True,
                          "random_sae_l0": L0},
                  notes=["Exact time per latent = exact patching of the top-k latents / k (each "
                         "latent patched at all positions at once, k latents stacked per forward "
                         "pass, as verify_atp runs it), times the number of latents.",
                         "speedup_per_latent_and_position multiplies by the mean prompt length: "
                         "exact patching of each (latent, position) on its own.",
                         "exhaustive exact patching (patch_exact, with the error term): its "
                         "time per (pair, node) row run over one spliced forward pass of one "
                         "prompt (the corrupted batch's, timed in the same call); the reference "
                         "costs about rows x that many forwards at another size (rows: the "
                         "nodes whose value differs between a pair's runs; rows_per_pair "
                         "here)."])
