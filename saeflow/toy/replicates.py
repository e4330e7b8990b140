"""Spread over seeds: the toy world rerun over N seeds, every headline number reported as mean,
standard deviation and range (named target ``snakemake replicates``).

Replicate ``i`` is the study's own config with every ``seed`` in it (the world's, the model's
and SAEs' top-level seed, the samples', folds' and bootstraps' seeds) shifted by ``i``, so
replicate 0 *is* the main run and is read from ``results/{experiment}/`` as it stands. The
others run the whole DAG in a folder of their own, ``results/{experiment}/replicates/rep{i}/``
(a nested Snakemake with that folder as its working directory: its own ``results/``, its own
``.snakemake`` lock), and :func:`headline` reads the same numbers from each.

A number that moves with float reductions or with the seed is not a result on its own: the
table gives its spread, and a claim (which estimator wins at a site, whether a check holds) is
stated with the share of replicates it holds in.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Value = float | str | bool


def shift_seeds(config: Mapping[str, Any], shift: int) -> dict[str, Any]:
    """A deep copy of ``config`` with every integer under a key named ``seed`` increased by
    ``shift`` (0: the config itself)."""
    def walk(node: Any) -> Any:
        if isinstance(node, Mapping):
            return {k: (v + shift if k == "seed" and isinstance(v, int) and not isinstance(v, bool)
                        else walk(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return copy.deepcopy(node)

    return walk(config)


# --------------------------------------------------------------------------- headline numbers

def _read(path: Path) -> Any:
    from saeflow.core.io import read_json

    return read_json(path) if path.is_file() else None


def _put(out: dict[str, Value], name: str, value: Any) -> None:
    """Keep finite numbers, strings and booleans; leave out what a run did not produce."""
    if isinstance(value, bool) or isinstance(value, str):
        out[name] = value
    elif isinstance(value, (int, float)) and math.isfinite(value):
        out[name] = float(value)


def _model(results: Path, out: dict[str, Value]) -> None:
    metrics = _read(results / "model" / "metrics.json") or {}
    for split in ("heldout_seen", "heldout_unseen"):
        _put(out, f"model: answer accuracy, {split}", (metrics.get(split) or {}).get("accuracy"))
    _put(out, "model: next-token loss, heldout_seen",
         (metrics.get("heldout_seen") or {}).get("next_token_loss"))
    for hook, m in ((_read(results / "sae" / "metrics.json") or {}).get("saes") or {}).items():
        _put(out, f"SAE {hook}: explained variance", m.get("explained_variance"))
        _put(out, f"SAE {hook}: L0", m.get("l0"))
        _put(out, f"SAE {hook}: CE loss recovered", m.get("lm_loss_recovered"))
        if "lm_loss_spliced" in m and "lm_loss_model" in m:
            _put(out, f"SAE {hook}: next-token loss added by splicing",
                 m["lm_loss_spliced"] - m["lm_loss_model"])


def _estimators(summary: Mapping[str, Any], out: dict[str, Value]) -> None:
    for key, entry in summary.items():
        if not key.endswith("_vs_exhaustive") or not isinstance(entry, Mapping):
            continue
        name = key[: -len("_vs_exhaustive")]
        for mode, m in entry.items():
            if not isinstance(m, Mapping):
                continue
            where = f"{name} vs exact ({mode.replace('_', ' ')})"
            _put(out, f"{where}: Spearman over moving latents", m.get("spearman_active_latents"))
            _put(out, f"{where}: relative L1 error", m.get("relative_l1_error"))
            _put(out, f"{where}: false negatives", m.get("false_negatives"))
            _put(out, f"{where}: sign agreement over real nodes", m.get("sign_agreement_real"))
            gate = m.get("gate")
            if isinstance(gate, Mapping):
                _put(out, f"{where}: gate verdict", gate.get("verdict"))
    for mode, comparison in (summary.get("estimator_comparison") or {}).items():
        for site, cell in ((comparison or {}).get("by_site") or {}).items():
            best = cell.get("best")
            if best:
                _put(out, f"best estimator at {site} ({mode.replace('_', ' ')})",
                     " = ".join(sorted(best)) if isinstance(best, list) else str(best))


def _patch(results: Path, out: dict[str, Value]) -> None:
    summary = _read(results / "patch" / "summary.json")
    if summary is None:
        return
    _estimators(summary, out)
    top = summary.get("resid_top_cell") or {}
    _put(out, "residual patching: top cell's normalised effect", top.get("normalised_mean"))
    for mode, entry in (_read(results / "patch" / "faithfulness.json") or {}).items():
        if not isinstance(entry, Mapping):
            continue
        for point in entry.get("curve") or ():
            _put(out, f"faithfulness ({mode.replace('_', ' ')}) at n = {point.get('n')}",
                 point.get("faithfulness"))
    circuit = _read(results / "patch" / "circuit.json")
    if circuit:
        _put(out, "circuit: nodes", len(circuit.get("nodes") or ()))
        _put(out, "circuit: edges", len(circuit.get("edges") or ()))
        check = circuit.get("edge_check") or {}
        _put(out, "circuit: edge Spearman against exact", check.get("spearman"))
        _put(out, "circuit: edge sign agreement", check.get("sign_agreement"))
        _put(out, "circuit: faithfulness (pruned by nodes)",
             (circuit.get("faithfulness") or {}).get("faithfulness"))
        _put(out, "circuit: completeness (pruned by nodes)",
             (circuit.get("faithfulness") or {}).get("completeness"))
        _put(out, "circuit: faithfulness (pruned by edges too)",
             (circuit.get("edge_pruned") or {}).get("faithfulness"))


def _probe(results: Path, out: dict[str, Value]) -> None:
    for key, entry in ((_read(results / "probe" / "summary.json") or {}).get("datasets")
                       or {}).items():
        _put(out, f"probe {key}: test {entry.get('metric')}", entry.get("test_mean"))
        _put(out, f"probe {key}: permutation baseline", entry.get("baseline_mean"))
        meta = entry.get("metadata_baseline")
        if isinstance(meta, Mapping):
            _put(out, f"probe {key}: metadata-only baseline", meta.get("mean"))
        readout = entry.get("readout_check")
        if isinstance(readout, Mapping):
            _put(out, f"probe {key}: readout check holds", readout.get("holds"))


def _correction(results: Path, out: dict[str, Value]) -> None:
    summary = _read(results / "correction" / "summary.json") or {}
    for method, entry in (summary.get("methods") or {}).items():
        for cat, row in ((entry or {}).get("categories") or {}).items():
            corrected = row.get("corrected") or {}
            _put(out, f"LPF {method}, {cat}: relative error", corrected.get("rel_error"))
            covers = corrected.get("covers_truth_given_prompts", corrected.get("covers_truth"))
            _put(out, f"LPF {method}, {cat}: interval covers the truth", covers)


def headline(results: str | Path) -> dict[str, Value]:
    """Every headline number of one finished toy run (``results/{experiment}/``), flat and
    named; what the run did not produce is left out."""
    results = Path(results)
    out: dict[str, Value] = {}
    for part in (_model, _patch, _probe, _correction):
        part(results, out)
    return out


# --------------------------------------------------------------------------- spread over seeds

def summarise(headlines: Sequence[Mapping[str, Value]], seeds: Sequence[int]) -> dict[str, Any]:
    """Per headline: numbers as mean, SD (n - 1), min, max and the values by replicate; claims
    (strings, booleans) as counts of each value and whether one value holds in every
    replicate. A headline missing from some replicates says in how many it was found."""
    names = list(dict.fromkeys(k for h in headlines for k in h))
    numbers, claims = {}, {}
    for name in names:
        values = [h.get(name) for h in headlines]
        found = [v for v in values if v is not None]
        if all(isinstance(v, float) for v in found):
            arr = [float(v) for v in found]
            mean = sum(arr) / len(arr)
            sd = (math.sqrt(sum((v - mean) ** 2 for v in arr) / (len(arr) - 1))
                  if len(arr) > 1 else None)
            numbers[name] = {"n": len(arr), "mean": mean, "sd": sd, "min": min(arr),
                             "max": max(arr), "values": values}
        else:
            counts: dict[str, int] = {}
            for v in found:
                counts[str(v)] = counts.get(str(v), 0) + 1
            claims[name] = {"n": len(found), "counts": counts,
                            "holds_in_every_replicate": len(counts) == 1
                            and len(found) == len(values), "values": values}
    return {"n_replicates": len(headlines), "seeds_shift": list(seeds), "numbers": numbers,
            "claims": claims,
            "method": "replicate i reruns the whole toy DAG with every seed in the config "
                      "shifted by i (world, model, SAEs, samples, folds, bootstraps); SD with "
                      "n - 1; a claim holds if one value is found in every replicate"}


def _g(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if abs(x) < 1e-3 and x != 0 else f"{x:.3f}"


def table(summary: Mapping[str, Any]) -> str:
    """The Markdown tables docs/validation.md quotes: per number the main run's value (replicate
    0, the run the page's other numbers come from), mean, SD and range over the replicates;
    per claim how many replicates hold each value."""
    n = summary["n_replicates"]
    lines = [f"| headline ({n} replicates) | this run | mean | SD | range |",
             "|---|---|---|---|---|"]
    for name, s in summary["numbers"].items():
        found = "" if s["n"] == n else f" (in {s['n']})"
        lines.append(f"| {name}{found} | {_g(s['values'][0])} | {_g(s['mean'])} | {_g(s['sd'])} "
                     f"| {_g(s['min'])} to {_g(s['max'])} |")
    lines += ["", f"| claim ({n} replicates) | this run | what the replicates say |",
              "|---|---|---|"]
    for name, c in summary["claims"].items():
        said = ", ".join(f"{k}: {v} of {n}" for k, v in c["counts"].items())
        every = " (every replicate)" if c["holds_in_every_replicate"] else ""
        lines.append(f"| {name} | {c['values'][0]} | {said}{every} |")
    return "\n".join(lines) + "\n"


def parse_table(text: str) -> dict[str, tuple[float | None, float, float]]:
    """``{headline: (this run, min, max)}`` from :func:`table`'s numbers table as quoted on a
    page (for the doc test: a single run lies inside the replicate range)."""
    import re

    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or " to " not in cells[4]:
            continue
        lo, hi = (float(x) for x in cells[4].split(" to "))
        name = re.sub(r" \(in \d+\)$", "", cells[0])
        out[name] = (None if cells[1] == "-" else float(cells[1]), lo, hi)
    return out


# --------------------------------------------------------------------------- the rules

def run_replicate(config: Mapping[str, Any], index: int, snakefile: str | Path,
                  folder: str | Path, cores: int) -> Path:
    """Run the whole DAG of ``config`` with its seeds shifted by ``index`` in ``folder`` (its
    working directory); the replicate's ``results/{experiment}/`` is returned. Snakemake's
    output goes to this process's stderr (the rule's log)."""
    from saeflow.core.io import write_text_atomic

    import yaml

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    cfg = shift_seeds(config, index)
    cfg_path = folder / "config.yaml"
    write_text_atomic(cfg_path, yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(Path(snakefile).resolve()),
           "--directory", str(folder), "--cores", str(max(1, cores)), "--configfile",
           str(cfg_path)]
    log.info("replicate %d: %s", index, " ".join(cmd))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, env=env, check=False)
    if proc.returncode:
        from saeflow.core.errors import InputError

        raise InputError(str(folder), "replicates", f"replicate {index}'s run failed (exit "
                         f"{proc.returncode}); its log is above, its files in {folder}")
    return folder / "results" / str(cfg["experiment"])


def replicate_stage(config: Mapping[str, Any], index: int, snakefile: str, cores: int,
                    out: str | Path) -> None:
    """Rule ``replicate``: the headline numbers of replicate ``index`` into ``out``
    (replicates/rep{index}/headline.json); replicate 0 reads the main run."""
    from saeflow.core.io import write_json

    main = Path("results") / str(config["experiment"])
    results = main if index == 0 else run_replicate(config, index, snakefile,
                                                    Path(out).parent, cores)
    write_json(out, {"replicate": index, "results": str(results), "headline": headline(results)},
               config={"seed_shift": index, "seed": config.get("seed")})


def replicates_summary_stage(headlines: Sequence[str | Path], out_json: str | Path,
                             out_table: str | Path) -> None:
    """Rule ``replicates_summary``: :func:`summarise` the replicates' headline files (in
    replicate order) into ``out_json`` and the Markdown of :func:`table` into ``out_table``."""
    from saeflow.core.io import read_json, write_json, write_text_atomic

    loaded = [read_json(p) for p in headlines]
    summary = summarise([h["headline"] for h in loaded], [h["replicate"] for h in loaded])
    write_json(out_json, summary, config={"replicates": len(loaded)})
    write_text_atomic(out_table, table(summary))


def main(argv: list[str]) -> int:
    """``python -m saeflow.toy.replicates results/toy/replicates/summary.json``: the tables."""
    from saeflow.core.io import read_json

    if len(argv) != 1:
        print(main.__doc__, file=sys.stderr)
        return 2
    sys.stdout.write(table(read_json(argv[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
