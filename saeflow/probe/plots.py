"""Probe figures: accuracy by layer and by input kind, top-feature heatmap, Cohen's d spread.

Each function takes the records the probe rules write (``probe/summary.json``,
``probe/effects/*.json`` and ``*.h5``) and writes one PNG atomically with the Agg backend.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from saeflow.core.errors import InputError
from saeflow.core.figures import pyplot, save_figure

plt = pyplot()

KIND_COLOURS = {"embedding": "tab:gray", "hidden": "tab:blue", "sae": "tab:orange"}




def _panels(n: int, width: float, height: float, ncols: int = 4
            ) -> tuple[plt.Figure, list[plt.Axes]]:
    """``n`` panels in rows of at most ``ncols``; unused axes are hidden."""
    cols = min(n, ncols)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _err(entry: dict[str, Any]) -> list[float]:
    """Error-bar half widths [below, above] from a summary entry's ``test_ci`` (0 if NaN)."""
    lo, hi = entry["test_ci"]
    mean = entry["test_mean"]
    return [0.0 if lo is None or np.isnan(lo) else mean - lo,
            0.0 if hi is None or np.isnan(hi) else hi - mean]


def plot_probe_accuracy(summary: dict[str, Any], path: str | Path) -> None:
    """One row per metric (accuracy, R²). Left: single-layer datasets of one family
    (``group``, prompt set) as a line over layers; right: every dataset as a bar coloured by
    input kind. Bars/points carry 95% fold intervals; crosses mark the permutation baseline,
    grey diamonds the metadata-only baseline (with ``probe.cv.group_by``).
    """
    entries = [e for e in summary.get("datasets", {}).values() if "metric" in e]
    if not entries:
        raise InputError(str(path), "datasets", "no probe results to plot")
    metrics = sorted({e["metric"] for e in entries})
    fig, axes = plt.subplots(len(metrics), 2, figsize=(12, 3.8 * len(metrics)), squeeze=False)
    for row, metric in enumerate(metrics):
        rows = [e for e in entries if e["metric"] == metric]
        _by_layer(axes[row, 0], rows, metric)
        _by_dataset(axes[row, 1], rows, metric)
    fig.tight_layout()
    save_figure(fig, path)


def _by_layer(ax: plt.Axes, rows: list[dict[str, Any]], metric: str) -> None:
    families: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for e in rows:
        if len(e.get("layers") or []) == 1:
            families[(str(e.get("group") or e["strategy"]), str(e.get("prompt_set")))].append(e)
    ticks: set[int] = set()
    for i, ((group, prompt_set), members) in enumerate(sorted(families.items())):
        members.sort(key=lambda e: e["layers"][0])
        x = [e["layers"][0] for e in members]
        ticks.update(x)
        colour = f"C{i % 10}"
        ax.errorbar(x, [e["test_mean"] for e in members],
                    yerr=np.array([_err(e) for e in members]).T, marker="o", capsize=3,
                    color=colour, label=f"{group} ({members[0]['input_kind']}, {prompt_set})")
        ax.plot(x, [e["baseline_mean"] for e in members], ls=":", marker="x", color=colour)
    ax.set_xticks(sorted(ticks))
    ax.set(xlabel="layer", ylabel=f"CV test {metric}", title=f"{metric} by layer "
           "(dotted: permutation baseline)")
    if families:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no single-layer datasets", ha="center", transform=ax.transAxes)


def _by_dataset(ax: plt.Axes, rows: list[dict[str, Any]], metric: str) -> None:
    rows = sorted(rows, key=lambda e: (e["input_kind"], e["name"], str(e.get("prompt_set"))))
    x = np.arange(len(rows))
    ax.bar(x, [e["test_mean"] for e in rows], yerr=np.array([_err(e) for e in rows]).T,
           capsize=3, color=[KIND_COLOURS.get(e["input_kind"], "black") for e in rows])
    ax.scatter(x, [e["baseline_mean"] for e in rows], marker="x", color="black", zorder=3,
               label="permutation baseline")
    meta = [(i, e["metadata_baseline"]["mean"]) for i, e in enumerate(rows)
            if e.get("metadata_baseline")]
    if meta:
        ax.scatter(*zip(*meta, strict=True), marker="D", color="grey", zorder=3,
                   label="metadata-only baseline (probe.cv.group_by's one-hot)")
    ax.set_xticks(x, [f"{e['name']}\n{e.get('prompt_set')}" for e in rows], rotation=60,
                  ha="right", fontsize=7)
    ax.set(ylabel=f"CV test {metric}", title=f"{metric} by dataset (colour: input kind)")
    ax.legend(fontsize=7)


def plot_probe_heatmap(records: list[dict[str, Any]], path: str | Path) -> None:
    """Layer x position counts of each dataset's top-k features (one panel per effects
    record); the cell text gives the count and, in brackets, the count expected by chance."""
    if not records:
        raise InputError(str(path), "effects", "no effects records to plot")
    fig, axes = _panels(len(records), 4.5, 4.0)
    for ax, rec in zip(axes, records, strict=False):
        loc = rec["localisation"]
        grid = np.asarray(loc["grid_count"], dtype=float)
        expected = np.asarray(loc["grid_expected_share"]) * loc["k"]
        image = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=0)
        for (i, j), count in np.ndenumerate(grid):
            ax.text(j, i, f"{int(count)}\n({expected[i, j]:.1f})", ha="center", va="center",
                    fontsize=7, color="white" if count < grid.max() / 2 else "black")
        ax.set_xticks(range(len(loc["positions"])), loc["positions"], rotation=45, ha="right")
        ax.set_yticks(range(len(loc["layers"])), [str(layer) for layer in loc["layers"]])
        ax.set(xlabel="position", ylabel="layer",
               title=f"{rec['name']} ({rec.get('prompt_set')})\ntop-{loc['k']} vs "
                     f"{rec['positive_class']}")
        fig.colorbar(image, ax=ax, shrink=0.8, label="top-k features")
    fig.tight_layout()
    save_figure(fig, path)


def plot_cohens_d(arrays: list[dict[str, Any]], path: str | Path, bins: int = 60) -> None:
    """Histogram of Cohen's d over tested columns per dataset (``read_effect_arrays``
    output), with the BH-significant columns stacked on top; log counts, since most SAE
    features barely separate the classes."""
    if not arrays:
        raise InputError(str(path), "effects", "no effect arrays to plot")
    fig, axes = _panels(len(arrays), 4.5, 3.5)
    for ax, arr in zip(axes, arrays, strict=False):
        d, q = np.asarray(arr["d"]), np.asarray(arr["q"])
        ok = np.isfinite(d)
        sig = ok & (q <= arr["alpha"])
        edges = np.histogram_bin_edges(d[ok], bins=bins) if ok.any() else bins
        ax.hist([d[ok & ~sig], d[sig]], bins=edges, stacked=True, log=True,
                color=["tab:gray", "tab:red"], label=["not significant",
                                                      f"q <= {arr['alpha']}"])
        ax.set(xlabel="Cohen's d", ylabel="columns",
               title=f"{arr['name']} ({arr.get('prompt_set')})\n{int(sig.sum())} of "
                     f"{int(ok.sum())} significant")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


# --- the figure rules' entry points: the rule's input files -> one PNG ------------------------

def plot_probe_accuracy_stage(summary_path: str | Path, path: str | Path) -> None:
    """Rule ``plot_probe_accuracy``: :func:`plot_probe_accuracy` of ``probe/summary.json``."""
    from saeflow.core.io import read_json

    plot_probe_accuracy(read_json(summary_path), path)


def plot_probe_heatmap_stage(effects_paths: list[str | Path], path: str | Path) -> None:
    """Rule ``plot_probe_heatmap``: :func:`plot_probe_heatmap` of the effects JSON files."""
    from saeflow.core.io import read_json

    plot_probe_heatmap([read_json(p) for p in effects_paths], path)


def plot_cohens_d_stage(arrays_paths: list[str | Path], path: str | Path) -> None:
    """Rule ``plot_cohens_d``: :func:`plot_cohens_d` of the effects ``*.h5`` array files."""
    from saeflow.probe.effects_files import read_effect_arrays

    plot_cohens_d([read_effect_arrays(p) for p in arrays_paths], path)
