"""`snakemake --report` opened in a real browser: every figure of a tiny two-rule workflow
renders (the same check the slow test runs on the toy run's report)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.browser.chrome import assert_not_blank, check_report_figures

SNAKEFILE = '''
rule all:
    input:
        "fig/line.png",
        "fig/bars.png",


rule data:
    output:
        "data/values.txt",
    shell:
        "echo 3 1 2 > {output}"


rule plot:
    input:
        "data/values.txt",
    output:
        line=report("fig/line.png", caption="caption.rst", category="Lines"),
        bars=report("fig/bars.png", caption="caption.rst", category="Bars",
                    subcategory="Counts", labels={"figure": "bars"}),
    shell:
        "{python} plot.py {input} {output.line} {output.bars}"
'''

PLOT = '''
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

values = [float(v) for v in open(sys.argv[1]).read().split()]
plt.plot(values)
plt.savefig(sys.argv[2], dpi=40)
plt.clf()
plt.bar(range(len(values)), values)
plt.savefig(sys.argv[3], dpi=40)
'''


def snakemake(workdir: Path, *args: str) -> None:
    exe = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"
    proc = subprocess.run([exe, "--cores", "1", "--quiet", "all", *args], cwd=workdir,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_every_figure_of_a_tiny_report_renders(browser, tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE.replace("{python}", sys.executable))
    (tmp_path / "plot.py").write_text(PLOT)
    (tmp_path / "caption.rst").write_text("A tiny figure.\n")
    snakemake(tmp_path)
    snakemake(tmp_path, "--report", "report.html")
    widths = check_report_figures(browser, tmp_path / "report.html")
    assert set(widths) == {"fig/line.png", "fig/bars.png"} and min(widths.values()) > 100
    shot = tmp_path / "report.png"
    browser.save_screenshot(str(shot))
    assert_not_blank(shot.read_bytes())
