"""Each latent's firing frequency ("feature density") over the evaluated tokens of rule
``evaluate_saes``: SAEBench's dead and dense latent fractions, the file that holds the counts
(``sae/density.json``, written and read here), and figure ``sae_density`` (rule
``plot_sae_density``).

Firing frequency of latent i = (evaluated tokens where latent i is ``!= 0``) / (evaluated
tokens), the tokens :mod:`saeflow.evaluate` evaluates (every real token but BOS): SAEBench's
``feature_density`` (``get_sparsity_and_variance_metrics`` in ``sae_bench/evals/core/main.py``
and in ``sae_lens/evals.py``). The fractions over latents follow SAEBench's
``calculate_misc_metrics``, written out here because sae-lens has no copy of it and SAEBench
is not a dependency.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

# SAEBench's dense thresholds: key -> the firing frequency a latent must exceed
DENSE_THRESHOLDS = {"freq_over_1_percent": 0.01, "freq_over_10_percent": 0.1}


def density_metrics(counts: Any, n_tokens: int) -> dict[str, float]:
    """``frac_dead``: share of latents that never fire over the ``n_tokens`` evaluated tokens
    (``1 - frac_alive``, SAEBench's ``frac_alive`` = share with frequency > 0);
    ``freq_over_1_percent``, ``freq_over_10_percent``: share of latents whose firing frequency
    exceeds 1% / 10% (SAEBench's names and definitions). ``counts [d_sae]``: firing counts."""
    counts = np.asarray(counts, dtype=np.float64)
    freq = counts / n_tokens if n_tokens > 0 else np.full_like(counts, np.nan)
    out = {"frac_dead": float(np.mean(counts == 0))}
    out.update({key: float(np.mean(freq > t)) for key, t in DENSE_THRESHOLDS.items()})
    return out


def write_density(path: str | Path, prompt_set: str, counts: Mapping[str, tuple[Any, int]],
                  config: dict[str, Any]) -> None:
    """``sae/density.json``: ``{"prompt_set", "saes": {hook: {"n_tokens", "d_sae",
    "firing_count": [d_sae ints]}}}`` from ``counts`` ``{hook: (firing counts, n_tokens)}``,
    with provenance of ``config``."""
    from saeflow.core.io import write_json

    saes = {hook: {"n_tokens": int(n), "d_sae": len(c),
                   "firing_count": [int(v) for v in np.asarray(c)]}
            for hook, (c, n) in counts.items()}
    write_json(path, {"prompt_set": prompt_set, "saes": saes}, config=config)


def read_density(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{hook: {"n_tokens": int, "firing_count": int64 [d_sae]}}`` from ``sae/density.json``;
    a count list of another length than ``d_sae`` or a count above ``n_tokens`` is an
    InputError naming the hook."""
    from saeflow.core.errors import InputError
    from saeflow.core.io import read_json

    out = {}
    for hook, entry in read_json(path)["saes"].items():
        counts = np.asarray(entry["firing_count"], dtype=np.int64)
        n = int(entry["n_tokens"])
        if counts.shape != (int(entry["d_sae"]),) or (counts > n).any() or (counts < 0).any():
            raise InputError(path, f"saes.{hook}.firing_count",
                             f"expected {entry['d_sae']} counts in [0, {n}]")
        out[hook] = {"n_tokens": n, "firing_count": counts}
    return out


def log10_frequencies(counts: np.ndarray, n_tokens: int) -> np.ndarray:
    """log10 firing frequency of the latents that fire at least once (dead ones have none)."""
    alive = counts[counts > 0]
    return np.log10(alive / n_tokens)


def plot_sae_density(density: Mapping[str, Mapping[str, Any]], path: str | Path,
                     bins: int = 50) -> None:
    """Histogram of log10 firing frequency per latent, one panel per SAE (:func:`read_density`
    output): dead latents (no log) counted in the title, SAEBench's dense thresholds dotted."""
    from saeflow.core.errors import InputError
    from saeflow.core.figures import pyplot, save_figure

    if not density:
        raise InputError(str(path), "saes", "no SAE densities to plot")
    plt = pyplot()
    floor = min(np.log10(1 / e["n_tokens"]) for e in density.values())  # one firing
    edges = np.linspace(floor - 0.05, 0.0, bins + 1)
    fig, axes = plt.subplots(len(density), 1, figsize=(6, 2.4 * len(density)), squeeze=False,
                             sharex=True)
    for ax, (hook, entry) in zip(axes[:, 0], density.items(), strict=True):
        counts, n = entry["firing_count"], entry["n_tokens"]
        metrics = density_metrics(counts, n)
        ax.hist(log10_frequencies(counts, n), bins=edges, color="tab:blue")
        for t in DENSE_THRESHOLDS.values():
            ax.axvline(np.log10(t), color="tab:red", linestyle=":", linewidth=1)
        ax.set(ylabel="latents", title=f"{hook}: {int((counts == 0).sum())} of {len(counts)} "
               f"dead, {metrics['freq_over_10_percent']:.1%} over 10% ({n} tokens)")
        ax.title.set_fontsize(8)
    axes[-1, 0].set_xlabel("log10 firing frequency (share of evaluated tokens)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_sae_density_stage(density_path: str | Path, out_path: str | Path) -> None:
    """Rule ``plot_sae_density``: :func:`plot_sae_density` of ``sae/density.json``."""
    plot_sae_density(read_density(density_path), out_path)
