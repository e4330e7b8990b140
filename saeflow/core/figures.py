"""The one way a figure is made and saved: headless matplotlib, PNG at one resolution,
written atomically (a half-drawn figure never replaces a good one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DPI = 150


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless Agg backend (chosen before pyplot is imported,
    so figures draw on a cluster node without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> None:
    """Write ``fig`` to ``path`` as PNG and close it."""
    from saeflow.core.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    pyplot().close(fig)
