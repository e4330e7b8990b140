"""Figures of the patching stage, one function per figure: each reads one result file and writes
one PNG (matplotlib Agg, written atomically).

* :func:`plot_resid_patching_stage` -- ``resid.h5``: normalised effect per layer x position.
* :func:`plot_top_latents_stage` -- ``verify.json``: AtP and exact effect of the top latents.
* :func:`plot_faithfulness_stage` -- ``faithfulness.json``: faithfulness/completeness vs circuit size.
* :func:`plot_latent_activations_stage` -- ``top_latents.json``: mean activation over positions.
* :func:`plot_circuit_stage` -- ``circuit.json``: the sparse feature circuit (and
  :func:`circuit_svg`: the same with each latent node linking to its dashboard page).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from saeflow.core.figures import pyplot, save_figure
from saeflow.core.hooks import layer_label


def latent_label(hook: str, latent: int) -> str:
    """``blocks.3.hook_resid_post``, 17 -> ``L3/17`` (the full hook name if it has no layer)."""
    return f"{layer_label(hook)}/{latent}"


def _position_ticks(ax: Any, offsets: list[int], axis: str = "x") -> None:
    step = max(1, len(offsets) // 12)
    ticks = list(range(len(offsets) - 1, -1, -step))[::-1]
    labels = ["final" if offsets[t] == -1 else str(offsets[t]) for t in ticks]
    (ax.set_xticks if axis == "x" else ax.set_yticks)(ticks)
    (ax.set_xticklabels if axis == "x" else ax.set_yticklabels)(labels)


def plot_resid_patching_stage(resid_path: str | Path, out_path: str | Path) -> None:
    """Heatmap ``[layer, position]`` of the normalised effect (ratio of means over pairs) of
    patching clean ``resid_pre`` into the corrupted run; the cell of largest mean effect is
    outlined."""
    from saeflow.patch.pairs import position_offsets
    from saeflow.patch.resid import read_resid, top_cell

    plt = pyplot()
    res = read_resid(resid_path)
    mean = res.agg["normalised_mean"]
    offsets = position_offsets(mean.shape[1])
    lim = max(1.0, float(np.nanmax(np.abs(mean)))) if np.isfinite(mean).any() else 1.0
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * mean.shape[1] + 2), 0.45 * mean.shape[0] + 2))
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.85")  # positions no prompt has
    im = ax.imshow(mean, cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
    layer, col = top_cell(res.agg["effect_mean"])
    ax.add_patch(plt.Rectangle((col - 0.5, layer - 0.5), 1, 1, fill=False, lw=2, ec="k"))
    _position_ticks(ax, offsets)
    ax.set_yticks(range(mean.shape[0]))
    ax.set_xlabel("position (offset from final token)")
    ax.set_ylabel("layer (resid_pre)")
    ax.set_title(f"Residual patching, clean -> corrupted ({len(res.pair_ids)} pairs)")
    fig.colorbar(im, ax=ax, label="(patched - corrupted) / (clean - corrupted)")
    save_figure(fig, out_path)


def plot_top_latents_stage(verify_path: str | Path, out_path: str | Path) -> None:
    """Bars of AtP and exact mean effect of the top-k latents, one panel per mode."""
    from saeflow.core.io import read_json

    plt = pyplot()
    verify = {m: v for m, v in read_json(verify_path).items() if m != "provenance"}
    k = max([len(v["top"]) for v in verify.values()] + [1])
    fig, axes = plt.subplots(1, len(verify), figsize=(5 * len(verify), 0.3 * k + 2),
                             squeeze=False)
    for ax, (mode, v) in zip(axes[0], verify.items(), strict=True):
        rows = v["top"]
        y = np.arange(len(rows))
        ax.barh(y - 0.2, [r["atp"] for r in rows], 0.4, label="AtP")
        ax.barh(y + 0.2, [r["exact"] for r in rows], 0.4, label="exact")
        ax.set_yticks(y)
        ax.set_yticklabels([latent_label(r["hook"], r["latent"]) for r in rows])
        ax.invert_yaxis()
        ax.axvline(0, color="k", lw=0.5)
        rho = v.get("spearman")
        ax.set_title(f"{mode}: Spearman {rho:.2f}" if rho is not None else mode)
        ax.set_xlabel("effect on logit diff (clean -> corrupted)")
        ax.legend(loc="lower right")
    save_figure(fig, out_path)


def plot_faithfulness_stage(faithfulness_path: str | Path, out_path: str | Path) -> None:
    """Faithfulness and completeness against the number of kept nodes, per mode."""
    from saeflow.core.io import read_json

    plt = pyplot()
    faith = {m: v for m, v in read_json(faithfulness_path).items() if m != "provenance"}
    fig, ax = plt.subplots(figsize=(6, 4))
    ticks: set[int] = set()
    for mode, v in faith.items():
        ns = [p["n"] for p in v["curve"]]
        ticks.update(ns)
        for key, style in (("faithfulness", "-o"), ("completeness", "--s")):
            vals = [np.nan if p[key] is None else p[key] for p in v["curve"]]
            (line,) = ax.plot(ns, vals, style, label=f"{key} ({mode})")
            band = [p.get(f"{key}_ci95") or [None, None] for p in v["curve"]]
            lo = [np.nan if b[0] is None else b[0] for b in band]
            hi = [np.nan if b[1] is None else b[1] for b in band]
            ax.fill_between(ns, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
        if any("random_faithfulness_mean" in p for p in v["curve"]):
            rand = [np.nan if p.get("random_faithfulness_mean") is None
                    else p["random_faithfulness_mean"] for p in v["curve"]]
            ax.plot(ns, rand, ":", color="grey", label=f"random nodes ({mode})")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(sorted(ticks))
    ax.set_xticklabels([str(t) for t in sorted(ticks)])
    ax.axhline(1, color="grey", lw=0.5)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("nodes kept (top n by |AtP| on the ranking pairs; the rest mean-ablated)")
    ax.set_ylabel("(F(C) - F(none)) / (F(model) - F(none))")
    ax.legend(fontsize=8)
    save_figure(fig, out_path)


def plot_latent_activations_stage(top_latents_path: str | Path, out_path: str | Path) -> None:
    """Heatmaps ``[top latent, position]`` of the mean activation over clean and corrupted
    prompts."""
    from saeflow.core.io import read_json

    plt = pyplot()
    rec = read_json(top_latents_path)
    offsets, latents = rec["position_offsets"], rec["latents"]
    fig, axes = plt.subplots(1, 2, figsize=(2 * max(4, 0.3 * len(offsets) + 1),
                                            0.35 * max(1, len(latents)) + 2), squeeze=False)
    for ax, role in zip(axes[0], ("clean", "corrupted"), strict=True):
        mat = np.array([[np.nan if v is None else v for v in r["mean_activation"][role]]
                        for r in latents], dtype=float).reshape(len(latents), len(offsets))
        im = ax.imshow(mat, aspect="auto", cmap="viridis")
        ax.set_yticks(range(len(latents)))
        ax.set_yticklabels([latent_label(r["hook"], r["latent"]) for r in latents])
        _position_ticks(ax, offsets)
        ax.set_title(f"{role} prompts ({rec['mode']})")
        ax.set_xlabel("position (offset from final token)")
        fig.colorbar(im, ax=ax, label="mean activation")
    save_figure(fig, out_path)


def plot_circuit_stage(circuit_path: str | Path, out_path: str | Path) -> None:
    """The circuit: SAE sites top to bottom, positions left to right, latents as circles and
    error nodes as triangles (size by |score|), edges by |effect| (blue +, red -), the metric
    below the last site."""
    from saeflow.core.io import read_json

    save_figure(circuit_figure(read_json(circuit_path)), out_path)


def circuit_svg(circuit: dict[str, Any], links: dict[str, str]) -> str:
    """:func:`circuit_figure` as SVG text whose latent nodes (and their labels) link to
    ``links[node id]`` (the latents' dashboard pages, :mod:`saeflow.latents.stage`)."""
    import io

    import matplotlib

    out = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as <text>, not glyph paths
        fig = circuit_figure(circuit, links)
        fig.savefig(out, format="svg", bbox_inches="tight")
    pyplot().close(fig)
    return out.getvalue().replace(' target="_blank"', "")  # a node opens its page in place


def circuit_figure(circuit: dict[str, Any], links: dict[str, str] | None = None) -> Any:
    """The figure of :func:`plot_circuit_stage` from a read ``circuit.json``; ``links``: node
    id -> URL set on the node's marker and label (kept in SVG output)."""
    plt = pyplot()
    links = links or {}
    sites = circuit["sites"]
    nodes = {n["id"]: n for n in circuit["nodes"]}
    by_cell: dict[tuple[int, int], list[str]] = {}
    for n in circuit["nodes"]:
        by_cell.setdefault((n["site_index"], n["position"]), []).append(n["id"])
    xy: dict[str, tuple[float, float]] = {}
    for (site, pos), ids in by_cell.items():  # nodes sharing a cell side by side
        for k, nid in enumerate(ids):
            xy[nid] = (pos + (k - (len(ids) - 1) / 2) * 0.8 / max(len(ids), 1), -site)
    positions = sorted({n["position"] for n in circuit["nodes"]} | {-1})
    xy["metric"] = (-1, -len(sites))
    top = max([abs(e["score"]) for e in circuit["edges"]] or [1.0])
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(positions) + 3), 1.6 * len(sites) + 2))
    for e in circuit["edges"]:
        (x0, y0), (x1, y1) = xy[e["source"]], xy[e["target"]]
        ax.plot([x0, x1], [y0, y1], color="tab:blue" if e["score"] > 0 else "tab:red",
                lw=0.5 + 4 * abs(e["score"]) / top, alpha=0.6, zorder=1)
    biggest = max([abs(n["score"]) for n in nodes.values()] or [1.0])
    for nid, n in nodes.items():
        x, y = xy[nid]
        marker = ax.scatter([x], [y], s=40 + 400 * abs(n["score"]) / biggest, zorder=2,
                            marker="o" if n["kind"] == "latent" else "^",
                            color="tab:orange" if n["kind"] == "latent" else "tab:gray",
                            edgecolor="k")
        label = str(n["latent"]) if n["kind"] == "latent" else "err"
        text = ax.annotate(label, (x, y), textcoords="offset points", xytext=(0, 9),
                           ha="center", fontsize=7)
        if nid in links:
            marker.set_urls([links[nid]])
            text.set_url(links[nid])
    ax.scatter(*xy["metric"], marker="s", s=120, color="k", zorder=2)
    ax.annotate("metric", xy["metric"], textcoords="offset points", xytext=(0, -14),
                ha="center", fontsize=8)
    ax.set_yticks([-i for i in range(len(sites))] + [-len(sites)])
    writes = circuit.get("site_writes", {})  # a transcoder's row: what it reads -> writes
    ax.set_yticklabels([f"{h} -> {writes[h].split('.')[-1]}" if h in writes else h
                        for h in sites] + ["logit diff"], fontsize=8)
    ax.set_xticks(positions)
    ax.set_xticklabels(["final" if p == -1 else str(p) for p in positions], fontsize=8)
    ax.set_xlabel("position (offset from the final token)")
    ax.set_title(f"circuit: {len(nodes)} nodes, {len(circuit['edges'])} edges "
                 f"(node >= {circuit['node_threshold']:.3g}, edge >= "
                 f"{circuit['edge_threshold']:.3g})", fontsize=9)
    ax.margins(x=0.08, y=0.12)
    return fig
