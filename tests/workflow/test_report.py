"""`snakemake --report report.html` on a completed toy run: every figure, by category, captioned,
and rendered in a real browser."""

import json
import re

import pytest

from saeflow.testing.workspace import TEST_CONFIGS, e2e_config, run_snakemake
from tests.browser.chrome import check_report_figures

pytestmark = pytest.mark.slow

CATEGORIES = {"labels": "Labels", "patch": "Patching", "probe": "Probing"}


def report_data(html: str, name: str) -> dict:
    """The JSON the report page embeds as ``var <name> = {...};``."""
    match = re.search(rf"^\s*var {name} = (\{{.*\}});\s*$", html, flags=re.MULTILINE)
    assert match, f"report has no `var {name}`"
    return json.loads(match.group(1))


def test_report_has_every_figure_by_category(toy_run):
    run_snakemake(toy_run, "--report", "report.html", "--configfile", *TEST_CONFIGS)
    html = (toy_run / "report.html").read_text()
    results = report_data(html, "results")
    categories = report_data(html, "categories")

    figures = {str(p.relative_to(toy_run)) for p in (toy_run / "results").rglob("*.png")}
    assert figures, "the toy run made no figures"
    assert figures <= set(results), f"figures missing from the report: {sorted(figures - set(results))}"
    for path in figures:
        entry = results[path]
        assert entry["mime_type"] == "image/png" and entry["data_uri"], path
        assert entry["caption"] and entry["caption"].strip(), f"{path} has no caption"
        assert entry["job_properties"]["rule"].startswith("plot_"), path

    expected = {CATEGORIES[s] for s in e2e_config().get("stages", []) if s in CATEGORIES}
    assert expected <= set(categories), f"categories: {sorted(categories)}"
    listed = {p for subcats in categories.values() for paths in subcats.values() for p in paths}
    assert figures <= listed, f"figures in no category: {sorted(figures - listed)}"


def test_every_report_figure_renders_in_a_browser(toy_run, browser):
    """Headless chromium shows each figure through the report's own menus; each decodes."""
    report = toy_run / "report.html"
    if not report.exists():
        run_snakemake(toy_run, "--report", "report.html", "--configfile", *TEST_CONFIGS)
    figures = {str(p.relative_to(toy_run)) for p in (toy_run / "results").rglob("*.png")}
    widths = check_report_figures(browser, report)
    assert figures and figures <= set(widths), f"not shown: {sorted(figures - set(widths))}"
