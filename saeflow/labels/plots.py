"""Figures of the labelling stage: classifier-vs-human confusion, and LPF before/after correction.

Functions take the already-computed result dicts (agreement and correction JSON payloads) and
write a PNG atomically; nothing is recomputed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from saeflow.core.figures import pyplot, save_figure

plt = pyplot()





def plot_confusion(agreements: Mapping[str, Mapping[str, Any]], path: str | Path) -> None:
    """One 2x2 confusion matrix per category (rows: human, columns: classifier)."""
    names = list(agreements)
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names) + 1.0, 3.2), squeeze=False,
                             sharey=True)
    for k, (ax, name) in enumerate(zip(axes[0], names)):
        a = agreements[name]
        grid = np.array([[a["tp"], a["fn"]], [a["fp"], a["tn"]]])
        ax.imshow(grid, cmap="Blues", vmin=0)
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, str(value), ha="center", va="center",
                    color="white" if value > grid.max() / 2 else "black")
        ax.set_xticks([0, 1], ["related", "not-related"])
        ax.set_yticks([0, 1], ["related", "not-related"])
        ax.set_xlabel("classifier")
        if k == 0:
            ax.set_ylabel("human")
        kappa = a.get("kappa")
        ax.set_title(f"{name}\nn={a['n']} acc={a['accuracy']:.2f} "
                     f"κ={'n/a' if kappa is None else f'{kappa:.2f}'}", fontsize=9)
    save_figure(fig, path)


def plot_lpf(correction: Mapping[str, Any], path: str | Path,
             truth: Mapping[str, float] | None = None) -> None:
    """Naive and corrected LPF per category, corrected with its 95% interval, truth if given."""
    cats = correction["categories"]
    names = list(cats)
    x = np.arange(len(names))
    naive = [cats[n]["lpf_naive"] for n in names]
    corrected = np.array([cats[n]["lpf_corrected"] for n in names])
    cis = [cats[n]["ci95"] or [cats[n]["lpf_corrected"]] * 2 for n in names]
    err = np.array([[c - lo for c, (lo, _) in zip(corrected, cis)],
                    [hi - c for c, (_, hi) in zip(corrected, cis)]])
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2.5, 3.4))
    ax.bar(x - 0.2, naive, 0.4, label="naive", color="#bbbbbb")
    ax.bar(x + 0.2, corrected, 0.4, label=f"corrected ({correction['method']})", color="#4477aa",
           yerr=np.clip(err, 0, None), capsize=3)
    if truth:
        tx = [i for i, n in enumerate(names) if n in truth]
        ax.scatter(tx, [truth[names[i]] for i in tx], marker="D", color="#cc3311", zorder=3,
                   label="truth")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(x, names)
    ax.set_ylabel("loss increase per feature")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_confusion_stage(agreements: Mapping[str, str | Path], path: str | Path) -> None:
    """Rule ``plot_confusion``: :func:`plot_confusion` of the agreement files
    (category -> labels/agreement/{category}.json, in config order) to ``path``."""
    from saeflow.core.io import read_json

    plot_confusion({c: read_json(p) for c, p in agreements.items()}, path)


def plot_lpf_stage(result: str | Path, path: str | Path,
                   ablation: str | Path | None = None) -> None:
    """Rule ``plot_lpf``: :func:`plot_lpf` of one method's ``result`` (correction/{method}.json)
    to ``path``; toy only: the true LPF from ``ablation`` (ablation.json) marked too."""
    from saeflow.core.io import read_json
    from saeflow.labels.correction import true_lpf

    truth = true_lpf(read_json(ablation)) if ablation is not None else None
    plot_lpf(read_json(result), path, truth)
