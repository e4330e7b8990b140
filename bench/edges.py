"""Circuit edges: time and peak memory of the direct-edge estimates
(:func:`saeflow.patch.edges.edge_attribution`, one vector-Jacobian product per selected
downstream node) against AtP over every node (the baseline, same process, interleaved) and
against exact edge patching (:func:`saeflow.patch.edges.exact_edge`, timed on a few edges and
extrapolated per edge to every edge estimated); peak memory at ``d_sae`` and at 4x ``d_sae``
with the same nodes selected, next to AtP's at the same two widths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Figure, Result

MAX_PER_SITE = 10  # config patch.circuit.max_nodes_per_site
MAX_BATCH = 256
L0 = 64
N_EXACT = 4  # edges patched exactly for the time per edge
WIDTH_SCALE = 4


def _setup(size: str, d_sae: int, n_pairs: int, workdir: Path) -> tuple[Any, Any, Any]:
    from saeflow.patch.pairs import load_pairs
    from saeflow.patch.splice import prepare_saes, to_sae_transformer

    model = to_sae_transformer(common.model(size))
    calib = common.prompts(32)
    saes = [common.random_sae(model.cfg.d_model, d_sae, h, common.resid_sample(model, h, calib), L0)
            for h in common.HOOKS[size][1:]]
    path = workdir / f"pairs_{size}_{d_sae}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in common.pair_records(n_pairs)))
    return model, prepare_saes(model, saes), load_pairs(path, model.tokenizer)


def _peak_increment_mib(fn: Any) -> float | None:
    """Peak RSS during ``fn()`` above the RSS before it (None where the kernel keeps no
    resettable high-water mark)."""
    common.trim_heap()  # freed setup memory would otherwise absorb the call's first allocations
    before = common.rss_kib()["VmRSS"]
    if not common.reset_peak_rss():
        return None
    fn()
    return (common.rss_kib()["VmHWM"] - before) / 1024.0


def child(size: str, d_sae: int, n_pairs: int) -> dict[str, Any]:
    """In a fresh process (no freed memory to reuse, no earlier high-water mark): the peak RSS
    increments of AtP and of the edges, each measured in its own child."""
    from saeflow.patch.attribution import run_atp
    from saeflow.patch.edges import edge_attribution, select_nodes, site_order

    with tempfile.TemporaryDirectory() as tmp:
        model, spliced, batches = _setup(size, d_sae, n_pairs, Path(tmp))
        sites = site_order(list(spliced))
        if os.environ.get("SAEFLOW_BENCH_EDGES_PART") == "atp":
            return {"atp_mib": _peak_increment_mib(
                lambda: run_atp(model, spliced, batches, True, MAX_BATCH))}
        import torch

        with torch.no_grad():  # the node ranking, without keeping its graph
            atp = run_atp(model, spliced, batches, True, MAX_BATCH)
        selected = select_nodes(atp, sites, 0.0, MAX_PER_SITE)
        del atp
        return {"edges_mib": _peak_increment_mib(
            lambda: edge_attribution(model, spliced, batches, sites, selected, MAX_BATCH))}


def _spawn(size: str, d_sae: int, n_pairs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in ("atp", "edges"):
        proc = subprocess.run([sys.executable, "-m", "bench.edges", size, str(d_sae), str(n_pairs)],
                              cwd=common.REPO, capture_output=True, text=True, timeout=1200,
                              env={**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore",
                                   "SAEFLOW_BENCH_EDGES_PART": part})
        if proc.returncode != 0:
            raise RuntimeError(f"edges memory child {size} d_sae {d_sae} failed:\n"
                               f"{proc.stderr[-3000:]}")
        out.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def measure(size: str, n_pairs: int, repeats: int, memory_pairs: int, workdir: Path
            ) -> list[Figure]:
    from saeflow.patch.attribution import run_atp
    from saeflow.patch.edges import (METRIC, edge_attribution, exact_edge, select_nodes,
                                     site_order)

    d_sae = common.D_SAE[size]
    model, spliced, batches = _setup(size, d_sae, n_pairs, workdir)
    sites = site_order(list(spliced))
    atp = run_atp(model, spliced, batches, True, MAX_BATCH)
    selected = select_nodes(atp, sites, 0.0, MAX_PER_SITE)
    edges = edge_attribution(model, spliced, batches, sites, selected, MAX_BATCH)
    between = sorted((e for e in edges if e[1] != METRIC), key=lambda e: -abs(edges[e]))
    sample = between[:N_EXACT]
    times = common.interleaved({
        "atp_all_nodes": lambda: run_atp(model, spliced, batches, True, MAX_BATCH),
        "edges": lambda: edge_attribution(model, spliced, batches, sites, selected, MAX_BATCH),
        "exact_sample": lambda: [exact_edge(model, spliced, batches, a, b, MAX_BATCH)
                                 for a, b in sample],
    }, repeats)
    per_edge = [t / max(len(sample), 1) for t in times["exact_sample"]]
    exact_all = [t * len(edges) for t in per_edge]
    memory = {w: _spawn(size, w, memory_pairs) for w in (d_sae, WIDTH_SCALE * d_sae)}
    small, large = memory[d_sae], memory[WIDTH_SCALE * d_sae]
    shared = {"n_pairs": sum(len(b) for b in batches), "sites": sites,
              "nodes_per_site": MAX_PER_SITE, "n_edges": len(edges), "d_sae": d_sae,
              "times_s": {k: common.rounded(v) for k, v in times.items()}}
    ratio = (None if small["edges_mib"] in (None, 0) or large["edges_mib"] is None
             else large["edges_mib"] / small["edges_mib"])
    atp_ratio = (None if small["atp_mib"] in (None, 0) or large["atp_mib"] is None
                 else large["atp_mib"] / small["atp_mib"])
    return [
        Figure("edge estimates: speedup over exact edge patching", size,
               common.paired_ratio(exact_all, times["edges"]), unit="x",
               detail={**shared, "exact_per_edge_s": common.median(per_edge)}),
        Figure("edge estimates time / AtP over every node", size,
               common.paired_ratio(times["edges"], times["atp_all_nodes"]), unit="ratio",
               detail=shared),
        Figure(f"edge peak memory increment, d_sae {WIDTH_SCALE}x / 1x", size, ratio,
               unit="ratio",
               detail={"widths": [d_sae, WIDTH_SCALE * d_sae], "n_pairs": memory_pairs,
                       "edges_peak_increment_mib": [small["edges_mib"], large["edges_mib"]],
                       "atp_peak_increment_mib": [small["atp_mib"], large["atp_mib"]],
                       "atp_ratio": atp_ratio}),
    ]


def run(smoke: bool = False) -> Result:
    # Memory runs on more pairs in the smoke: the tiny model's edges at 4 pairs take ~0.2 MiB,
    # within the allocator's page reuse, so the 1x increment can read as zero.
    plan = [("tiny", 4, 1, 32)] if smoke else [("mid", 8, 3, 8)]
    with tempfile.TemporaryDirectory() as tmp:
        figures = [f for size, n, reps, mem_n in plan
                   for f in measure(size, n, reps, mem_n, Path(tmp))]
    return Result("edges", "Circuit edges: VJP estimates vs AtP and exact edge patching", figures,
                  params={"plan": [{"model": s, "n_pairs": n, "repeats": r, "memory_pairs": m}
                                   for s, n, r, m in plan],
                          "max_nodes_per_site": MAX_PER_SITE, "max_batch": MAX_BATCH,
                          "random_sae_l0": L0, "n_exact_edges": N_EXACT,
                          "width_scale": WIDTH_SCALE},
                  notes=["Exact time per edge = exact mediated patching of the strongest "
                         f"{N_EXACT} edges / {N_EXACT}, times the edges estimated.",
                         "Memory: peak RSS during the call above the RSS before it, each call in "
                         "a fresh process (VmHWM reset first). The forward pass holds every site's "
                         "dense latents [n, T, d_sae] (AtP's too); the edges' own gradients "
                         "are [n, T, d_in], independent of d_sae."])


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    print(json.dumps(child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
