"""The benchmarks (``python -m bench``) in their smoke mode: every one runs and writes JSON of
the documented shape. Figures are checked for shape and type only, never for a time."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from bench import BENCHMARKS
from bench.common import Figure, paired_ratio, table
from saeflow.testing.workspace import REPO


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """``python -m bench --smoke`` once: (output folder, printed table)."""
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    return out, proc.stdout


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_benchmark_writes_figures_machine_and_provenance(smoke, name):
    record = json.loads((smoke[0] / f"{name}.json").read_text())
    assert record["benchmark"] == name and record["smoke"] is True
    assert isinstance(record["title"], str) and isinstance(record["params"], dict)
    assert record["figures"], "a benchmark reports at least one figure"
    for fig in record["figures"]:
        assert set(fig) >= {"name", "model", "value", "unit", "target", "op", "met", "detail"}
        assert isinstance(fig["name"], str) and isinstance(fig["model"], str)
        assert isinstance(fig["detail"], dict)
        if fig["unit"] != "rho":  # a rank correlation may be undefined (ties); nothing else
            assert isinstance(fig["value"], float) and math.isfinite(fig["value"])
        if fig["target"] is None:
            assert fig["op"] is None and fig["met"] is None
        else:
            assert fig["op"] in (">=", "<=") and isinstance(fig["met"], bool)
            above = fig["value"] >= fig["target"]
            below = fig["value"] <= fig["target"]
            assert fig["met"] == (above if fig["op"] == ">=" else below)
    machine = record["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch_threads"] >= 1 and machine["platform"]
    prov = record["provenance"]
    assert prov["versions"]["torch"] and prov["versions"]["snakemake"] and prov["git_commit"]
    assert prov["config"]["benchmark"] == name


def test_the_table_lists_every_benchmark(smoke):
    for name in BENCHMARKS:
        assert f"| {name} " in smoke[1]


def test_patching_results_equal_transformer_lens(smoke):
    figs = json.loads((smoke[0] / "patching.json").read_text())["figures"]
    assert all(f["met"] for f in figs if f["target"] is not None)


def test_unknown_benchmark_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "bench", "nope"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "unknown benchmark 'nope'" in proc.stderr


def test_figures_and_table():
    assert paired_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == 3.0  # median of 2, 4, 3
    hit = Figure("f", "toy", 0.9, target=0.8, op=">=")
    miss = Figure("g", "toy", 2.5, unit="bytes", target=2.2, op="<=")
    assert hit.met is True and miss.met is False and Figure("h", "toy", 7.0, unit="x").met is None
    text = table([{"benchmark": "b", "figures": [f.record() for f in (hit, miss)]}])
    assert "| b " in text and ">= 0.8" in text and "2.50 B" in text and "NO" in text


def test_scale_smoke_measures_every_stage_and_the_sparse_probe(tmp_path):
    """``python -m bench scale --smoke``: a ratio and per-prompt times for every stage, and a
    CSR probe dataset that is smaller than its dense copy and fits and scores like it."""
    proc = subprocess.run([sys.executable, "-m", "bench", "scale", "--smoke", "--out",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    record = json.loads((tmp_path / "scale.json").read_text())
    figures = {f["name"]: f for f in record["figures"]}
    for stage in ("extraction", "encoding", "probe dataset", "probe fit", "effect sizes",
                  "category ablation", "AtP"):
        timed = [f for name, f in figures.items() if name.startswith(stage)]
        assert timed, stage
        for fig in timed:
            assert fig["value"] > 0
            assert all(v > 0 for v in fig["detail"]["s_per_prompt"].values())
            assert set(fig["detail"]["peak_rss_increment_mib"]) == set(fig["detail"]["times_s"])
    # extraction of prompts with answers against the bare forward with and without the
    # predictions it stores, and of the same prompts without answers against the bare; AtP against TransformerLens's forward + backward and against the answer logits'
    assert len([n for n in figures if n.startswith("extraction")]) == 3
    atp = [f for n, f in figures.items() if n.startswith("AtP")]
    assert len(atp) == 3 and atp[0]["target"] == 1.5
    # the fast AtP equals AtP as first written (full logits, the default splice's graph)
    diff = atp[0]["detail"]["difference_from_reference"]
    assert all(diff[kind]["max_rel"] < 1e-4 for kind in ("act", "res", "delta"))
    assert diff["metric"]["max_abs"] < 1e-3
    x = figures["probe X bytes, dense / CSR"]["detail"]
    d_sae = record["params"]["dims"]["d_sae"]
    assert x["shape"][1] == d_sae * len(record["params"]["probe_positions"]) * 2  # 2 layers
    assert x["csr_x_mib"] < x["dense_x_mib"]
    assert figures["probe fit time, CSR / dense copy"]["detail"]["max_abs_difference"] < 1e-3
    assert figures["effect sizes time, CSR / dense copy"]["detail"]["max_abs_difference"] < 1e-9


def test_report_regenerates_the_readme_tables_from_the_json(smoke, tmp_path):
    """``python -m bench.report``: the README's marked blocks come from the records (every
    benchmark, the load at its start, the machine and versions); the text around them is
    kept, a second run changes nothing, ``--check`` tells a stale README."""
    from bench.report import load_records, main, render, replace_blocks

    records = load_records(smoke[0], include_smoke=True)
    assert {r["benchmark"] for r in records} == set(BENCHMARKS)
    blocks = render(records)
    for name in BENCHMARKS:
        assert f"| {name} |" in blocks["figures"]
    first = records[0]
    load = " / ".join(f"{v:.1f}" for v in first["machine"]["load_average_before"])
    assert load in blocks["figures"] and first["date"][:10] in blocks["figures"]
    assert "torch " in blocks["figures"] and first["machine"]["processor"] in blocks["figures"]
    assert "| AtP time / one forward + backward |" in blocks["scale"]
    assert not load_records(smoke[0])  # smoke records measure nothing: left out by default
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:figures -->\nold\n<!-- /bench:figures -->\nmiddle\n"
                      "<!-- bench:scale -->\n<!-- /bench:scale -->\nend\n")
    args = ["--results", str(smoke[0]), "--readme", str(readme), "--include-smoke"]
    assert main([*args, "--check"]) == 1
    assert main(args) == 0 and main([*args, "--check"]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and "\nmiddle\n" in text and text.endswith("\nend\n")
    assert "old" not in text and blocks["figures"] in text and blocks["scale"] in text
    assert replace_blocks(text, blocks) == text
    with pytest.raises(ValueError, match="bench:scale"):
        replace_blocks("no markers", {"scale": "x"})


def test_exhaustive_patching_reports_its_cost_per_row(smoke):
    figs = json.loads((smoke[0] / "attribution.json").read_text())["figures"]
    (cost,) = [f for f in figs if f["name"].startswith("exhaustive exact patching")]
    assert cost["unit"] == "forwards" and cost["value"] > 0
    assert cost["detail"]["rows_per_pair"] > 0 and cost["detail"]["seconds_per_row"] > 0
