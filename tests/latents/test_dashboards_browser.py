"""The dashboards in headless Chromium, as a reader goes: the front page's circuit node opens
its latent's page, the SAE's index opens another; every page loads with no console error, its
examples are visible and shaded; a screenshot of a latent page is kept (its path printed)."""

from __future__ import annotations

import json

from tests.browser.chrome import assert_not_blank, console_errors, wait_until
from tests.latents.conftest import HOOK


def _shown_examples(driver) -> dict:
    """What the latent page shows: visible contexts per section, shaded tokens, the histogram."""
    return driver.execute_script("""
        const seen = el => el.getBoundingClientRect().height > 0
                           && getComputedStyle(el).visibility !== 'hidden';
        const count = sel => Array.from(document.querySelectorAll(sel)).filter(seen).length;
        const shaded = Array.from(document.querySelectorAll('#top .tok')).filter(
            t => getComputedStyle(t).backgroundColor !== 'rgba(0, 0, 0, 0)').length;
        return {top: count('#top .ctx'), quantiles: count('#quantiles .ctx'),
                silent: count('#silent .ctx'), shaded: shaded,
                bars: count('figure.hist rect'), logits: count('table.logits tr'),
                title: document.title};""")


def test_dashboards_render_in_chromium(browser, built, tmp_path):
    console_errors(browser)  # drop what earlier tests left
    browser.get((built / "index.html").resolve().as_uri())
    wait_until(browser, lambda d: d.execute_script(
        "return document.querySelector('#circuit svg') !== null"), "no circuit on the front page")
    assert not console_errors(browser)
    node = browser.find_element(  # the circuit's latent node is a link to its page
        "xpath", "//*[@id='circuit']//*[local-name()='a'][contains(@*[local-name()='href'], "
        "'latent_7.html')]//*[local-name()='text']")
    node.click()
    wait_until(browser, lambda d: d.current_url.endswith(f"{HOOK}/latent_7.html"),
               "the circuit node did not open latent 7's page")
    wait_until(browser, lambda d: d.execute_script("return document.readyState") == "complete",
               "latent 7's page did not load")
    data = json.loads((built / HOOK / "latent_7.json").read_text())
    shown = _shown_examples(browser)
    assert shown["top"] == len(data["top_examples"]) > 0
    assert shown["quantiles"] == sum(len(g["examples"]) for g in data["quantile_examples"])
    assert shown["silent"] == len(data["non_activating_examples"])
    assert shown["shaded"] > 0 and shown["bars"] > 0 and shown["logits"] == 11
    assert not console_errors(browser)

    browser.get((built / HOOK / "index.html").resolve().as_uri())  # the SAE's index
    first = wait_until(browser, lambda d: d.find_elements("css selector", "table a"),
                       "the SAE index lists no latent")[0]
    latent = first.text
    first.click()
    wait_until(browser, lambda d: d.current_url.endswith(f"latent_{latent}.html"),
               f"the index link did not open latent {latent}'s page")
    wait_until(browser, lambda d: _shown_examples(d)["top"] > 0, "no example is visible")
    assert not console_errors(browser)
    shot = tmp_path / f"dashboard_latent_{latent}.png"
    browser.save_screenshot(str(shot))
    assert_not_blank(shot.read_bytes())
    print(f"dashboard screenshot: {shot}")
