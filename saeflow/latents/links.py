"""Where a latent's dashboard page lives, so other outputs can link to it (the probe summary,
the circuit figure): ``results/{experiment}/dashboards/{hook}/latent_{latent}.html``, written
by ``snakemake dashboards`` (rule dashboard_pages). Imports nothing heavy."""

from __future__ import annotations

import posixpath

FOLDER = "dashboards"


def page_name(latent: int) -> str:
    """A latent's page file name in its SAE's folder."""
    return f"latent_{int(latent)}.html"


def page_path(hook: str, latent: int) -> str:
    """The page's path relative to ``results/{experiment}/``."""
    return f"{FOLDER}/{hook}/{page_name(latent)}"


def page_link(hook: str, latent: int, from_folder: str = ".") -> str:
    """The page's relative link from ``from_folder`` (relative to ``results/{experiment}/``,
    e.g. ``probe`` for probe/summary.json)."""
    return posixpath.relpath(page_path(hook, latent), from_folder)
