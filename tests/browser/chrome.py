"""Headless Debian chromium under Selenium for the browser tests, and the checks they share.

:func:`ensure_chromium` installs ``chromium`` and ``chromium-driver`` with apt when missing
(tests/browser/install_chromium.sh, as the SLURM test installs its packages); it returns a
reason to skip only when that cannot be done here (no apt, not root).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INSTALL = Path(__file__).with_name("install_chromium.sh")
WAIT_S = 20


def ensure_chromium() -> str | None:
    """None once chromium and its driver are installed; else why they cannot be."""
    if os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK):
        return None
    if not (shutil.which("apt-get") and shutil.which("dpkg")):
        return "chromium/chromium-driver are not installed and apt-get is unavailable to install them"
    if os.geteuid() != 0:
        return "chromium/chromium-driver are not installed and installing them with apt needs root"
    proc = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"install_chromium.sh failed:\n{proc.stdout}\n{proc.stderr}"
    return None


def start_chrome(profile_dir: Path):
    """A headless chromium driven by Selenium (selenium is pinned in requirements.txt)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,850", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={profile_dir}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # driver.get_log("browser")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(WAIT_S)
    return driver


def wait_until(driver, condition, message: str, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition, message)


def assert_not_blank(png: bytes) -> int:
    """A screenshot with more than one colour (a blank page is one); returns the colour count."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 16)
    count = len(colours) if colours is not None else 1 << 16
    assert image.width > 100 and image.height > 100 and count > 1, f"blank screenshot ({count} colours)"
    return count


def check_report_figures(driver, report: Path) -> dict[str, int]:
    """Open a ``snakemake --report`` file and show every figure the way a reader does: each
    category, each subcategory, the eye button of each row; every figure's <img> must decode
    (``naturalWidth > 0``) and every image result must be shown. Returns ``{path: width}``.

    Snakemake 9 reports are a single-page React app: ``categories`` (category -> subcategory
    -> paths) and ``results`` (path -> data_uri, ...) are page globals, ``app`` the App.
    """
    from selenium.webdriver.common.by import By

    driver.get(report.resolve().as_uri())
    wait_until(driver, lambda d: d.execute_script(
        "return typeof app === 'object' && document.querySelector('nav') !== null"),
        f"{report} did not render its app")
    categories = driver.execute_script("return categories")
    shown: dict[str, int] = {}
    for category, subcategories in categories.items():
        for subcategory, paths in subcategories.items():
            # Through the Results menu, as a reader goes: the subcategory list, switched
            # directly to another, keeps showing the first one's rows.
            eyes = "nav a[iconname='eye'][href='#']"
            driver.execute_script("app.setView({navbarMode: 'menu'})")
            wait_until(driver, lambda d: not d.find_elements(By.CSS_SELECTOR, eyes), "no menu")
            driver.execute_script("app.setView({navbarMode: 'subcategory', category: arguments[0], "
                                  "subcategory: arguments[1]})", category, subcategory)
            wait_until(driver, lambda d, k=len(paths): len(d.find_elements(By.CSS_SELECTOR, eyes)) == k,
                       f"{category} / {subcategory} does not list its {len(paths)} results")
            for i in range(len(driver.find_elements(By.CSS_SELECTOR, eyes))):
                driver.find_elements(By.CSS_SELECTOR, eyes)[i].click()
                path, width = wait_until(driver, lambda d: d.execute_script(
                    "const path = app.state.resultPath, entry = results[path];"
                    "const img = Array.from(document.querySelectorAll('img'))"
                    "  .find(i => !i.closest('nav') && entry && i.src === entry.data_uri);"
                    "return img && img.complete && !(path in arguments[0]) ? [path, img.naturalWidth]"
                    "  : false", shown), f"{category} / {subcategory}, result {i + 1}: no figure shown")
                assert path in paths, f"{category} / {subcategory} showed {path}, not one of {paths}"
                assert width > 0, f"{path}: the figure does not render (naturalWidth 0)"
                shown[path] = width
    images = set(driver.execute_script(
        "return Object.keys(results).filter(p => results[p].mime_type.startsWith('image/'))"))
    assert images and images == set(shown), f"figures never shown: {sorted(images - set(shown))}"
    return shown


def console_errors(driver) -> list[str]:
    """The page's console messages of level SEVERE since the last call (errors, failed loads)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
