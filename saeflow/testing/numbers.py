"""The toy run's checks against truth as the Markdown that docs/validation.md quotes, read from a
finished run's ``results/{experiment}/`` so that the page's numbers are the DAG's::

    python -m saeflow.testing.numbers results/toy
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MODES = ("with_error", "without_error")


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ci(ci: list[float | None] | None, digits: int = 3) -> str:
    return "-" if not ci or None in ci else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _yes(judgement: Mapping[str, Any] | None) -> str:
    if not judgement or "can_tell" not in judgement:
        return "-"
    return "yes" if judgement["can_tell"] else "no"


def _at(entry: Mapping[str, Any], k: int) -> Mapping[str, Any]:
    return next((a for a in entry["at_k"] if a["k"] == k), {"precision": None, "recall": None})


def _verdict(record: Mapping[str, Any]) -> str:
    """A gate's verdict, with the measures it failed or could not judge."""
    g = record.get("gate")
    if not g:
        return "-"
    why = g["failed"] if g["verdict"] == "fail" else g["not_judged"]
    names = {"spearman_active_latents": "Spearman", "sign_agreement_real": "sign",
             "relative_l1_error": "L1"}
    return g["verdict"] + (f" ({', '.join(names[w] for w in why)})" if why else "")


def _sign(record: Mapping[str, Any]) -> str:
    m = record.get("gate", {}).get("measures", {}).get("sign_agreement_real")
    if not m:
        return "-"
    return f"{_f(m['value'], 2)} of {m['n']}" + (" (too few)" if m["pass"] is None else "")


def gate_rows(summary: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The estimators' gate verdicts and sign agreement, signed and in the magnitude view."""
    signed = {k[:-len("_vs_exhaustive")]: v for k, v in summary.items()
              if k.endswith("_vs_exhaustive") and k != "magnitude_vs_exhaustive"}
    names = list(signed)
    rows = [(f"sign agreement over real nodes ({' / '.join(names)})",
             lambda m: " / ".join(_sign(signed[n][m]) for n in names)),
            (f"gate verdict, patch.gate ({' / '.join(names)})",
             lambda m: " / ".join(_verdict(signed[n][m]) for n in names))]
    mag = {k: v for k, v in summary.get("magnitude_vs_exhaustive", {}).items()
           if isinstance(v, dict) and set(v) >= set(MODES) and k != "estimator_comparison"}
    if mag:
        rows.append((f"magnitude view gate verdict ({' / '.join(mag)})",
                     lambda m: " / ".join(_verdict(mag[n][m]) for n in mag)))
    return rows


def estimator_table(summary: Mapping[str, Any]) -> list[str]:
    """AtP, IG and the magnitude view against exhaustive exact patching, per mode."""
    atp, ig = summary["atp_vs_exhaustive"], summary.get("ig_vs_exhaustive", {})
    qk = summary.get("qkfix_vs_exhaustive", {})
    mag = summary.get("magnitude_vs_exhaustive", {})
    rows = [("real nodes (latents) (\\|mean exact\\| >= threshold)",
             lambda m: f"{atp[m]['n_real']} ({atp[m]['n_real_latents']})"),
            ("AtP false negatives over all latents (outside its top k)",
             lambda m: f"{atp[m]['false_negatives']} of {atp[m]['n_latents']:,} (k = "
                       f"{atp[m]['top_k']})"),
            ("AtP Spearman, all latents / latents that move",
             lambda m: f"{_f(atp[m]['spearman_all_latents'])} / "
                       f"{_f(atp[m]['spearman_active_latents'])}"),
            ("AtP precision@5, recall@5, recall@10",
             lambda m: f"{_f(_at(atp[m], 5)['precision'], 2)}, {_f(_at(atp[m], 5)['recall'], 2)}, "
                       f"{_f(_at(atp[m], 10)['recall'], 2)}")]
    if ig:
        rows.append(("IG Spearman over moving latents, recall@5",
                     lambda m: f"{_f(ig[m]['spearman_active_latents'])}, "
                               f"{_f(_at(ig[m], 5)['recall'], 2)}"))
    if qk:
        rows.append(("AtP* QK fix Spearman, all latents / latents that move",
                     lambda m: f"{_f(qk[m]['spearman_all_latents'])} / "
                               f"{_f(qk[m]['spearman_active_latents'])}"))
        rows.append(("AtP* QK fix false negatives, relative L1 error (AtP's)",
                     lambda m: f"{qk[m]['false_negatives']}, {_f(qk[m]['relative_l1_error'])} "
                               f"({_f(atp[m]['relative_l1_error'])})"))
    views = {name: view for name, view in mag.items()
             if isinstance(view, dict) and set(view) >= set(MODES) and name != "estimator_comparison"}
    if views:
        names = sorted(views)
        rows.append((f"magnitude view (\\|exact\\|): {' / '.join(names)} Spearman over moving "
                     "latents",
                     lambda m: " / ".join(_f(views[n][m]["spearman_active_latents"], 4)
                                          for n in names)))
        rows.append((f"magnitude view: recall@5, false negatives ({' / '.join(names)})",
                     lambda m: " / ".join(f"{_f(_at(views[n][m], 5)['recall'], 2)}, "
                                          f"{views[n][m]['false_negatives']}" for n in names)))
    rows += gate_rows(summary)
    rows.append(("sampled check: true miss rate, its 95% interval, covered",
                 lambda m: f"{_f(atp[m]['sampled_check']['true_miss_rate'], 2)}, "
                           f"{_ci(atp[m]['sampled_check']['sampled_ci95'])}, "
                           f"{'yes' if atp[m]['sampled_check']['covered'] else 'no'}"))
    judged = summary.get("atp_vs_exact", {})
    rows.append(("sampled check can tell: misses (verify) / coverage (real latents in the pool)",
                 lambda m: f"{_yes(judged.get(m, {}).get('miss_rate_judgement'))} / "
                           f"{_yes(atp[m]['sampled_check'])} "
                           f"({atp[m]['sampled_check'].get('n_real_in_pool', '-')})"))
    rows.append(("(pair, node) rows exact patching ran", lambda m: f"{atp[m]['n_run']:,}"))
    lines = ["| check | with the error term | without |", "|---|---|---|"]
    lines += [f"| {name} | {cell('with_error')} | {cell('without_error')} |" for name, cell in rows]
    return lines


def by_site_table(summary: Mapping[str, Any]) -> list[str]:
    """Per site, each signed estimator's Spearman over the site's moving latents against
    exhaustive patching (with the error term), the best in bold: which estimator wins where."""
    comparison = summary.get("estimator_comparison", {}).get("with_error", {})
    sites = comparison.get("by_site")
    if not sites or len(sites) < 2:
        return []
    names = list(next(iter(sites.values()))["spearman_active_latents"])
    lines = [f"| site (with the error term) | {' | '.join(names)} |",
             "|---|" + "---|" * len(names)]
    for site, cell in sites.items():
        values = [_f(cell["spearman_active_latents"][n]) for n in names]
        values = [f"**{v}**" if n in cell["best"] else v for n, v in zip(names, values)]
        lines.append(f"| `{site}` | {' | '.join(values)} |")
    return lines + ["", "Bold: the highest unrounded value at the site.", ""]


def _unit(record: Mapping[str, Any] | None) -> str:
    """The resampled unit of an interval's record (``resampled``), e.g. "4 templates"."""
    if not record:
        return "-"
    return f"{record['n_clusters']} {record['unit']}"


def faithfulness_lines(faith: Mapping[str, Any]) -> list[str]:
    out = []
    for mode in MODES:
        entry = faith[mode]
        points = ", ".join(f"{_f(p['faithfulness'], 2)} at {p['n']} {_ci(p['faithfulness_ci95'])}"
                           for p in entry["curve"])
        rand = [p.get("random_faithfulness_range") for p in entry["curve"]]
        spread = max((abs(v) for r in rand if r for v in r if v is not None), default=None)
        out.append(f"- Faithfulness {mode.replace('_', ' ')} (ranked on "
                   f"{len(entry['split']['rank_pairs']) if 'rank_pairs' in entry.get('split', {}) else '?'} "
                   f"pairs, measured on {entry['n_pairs']}): {points}; random orders within "
                   f"+-{_f(spread, 2)}; every node kept: {_f(entry['faithfulness_all_nodes'])}; "
                   f"intervals resample {_unit(entry.get('resampled'))}.")
    return out


def circuit_lines(circuit: Mapping[str, Any]) -> list[str]:
    check, nodes, edges = circuit["edge_check"], circuit["faithfulness"], circuit["edge_pruned"]
    split = circuit.get("split", {})
    return [f"- Circuit: {len(circuit['nodes'])} nodes, {len(circuit['edges'])} edges over "
            f"{len(circuit['sites'])} sites, chosen on {split.get('n_rank', '?')} pairs and "
            f"measured on {split.get('n_eval', '?')} held-out ones; its {check['n_checked']} "
            f"strongest node-to-node edges "
            f"against exact mediated patching: Spearman {_f(check.get('spearman'), 2)}, sign "
            f"agreement {_f(check.get('sign_agreement'), 2)}, median relative error "
            f"{_f(check.get('median_relative_error'), 2)}.",
            f"- Circuit pruned by nodes: faithfulness {_f(nodes['faithfulness'])} "
            f"{_ci(nodes['faithfulness_ci95'])}, completeness {_f(nodes['completeness'])} "
            f"{_ci(nodes['completeness_ci95'])}; pruned by edges too: faithfulness "
            f"{_f(edges['faithfulness'])} {_ci(edges['faithfulness_ci95'])}, completeness (the "
            f"circuit's {edges['n_edges_kept']} edges cut) {_f(edges['completeness'])} "
            f"{_ci(edges['completeness_ci95'])}."]


def model_lines(results: Path) -> list[str]:
    from saeflow.core.io import read_json

    out = []
    metrics = results / "model" / "metrics.json"
    if metrics.exists():
        m = read_json(metrics)
        seen, unseen = m.get("heldout_seen", {}), m.get("heldout_unseen", {})
        if seen:
            out.append(f"- Toy model: answer accuracy {_f(seen['accuracy'])} on held-out seen "
                       f"templates ({_f(unseen.get('accuracy'))} unseen); next-token loss "
                       f"{_f(seen['next_token_loss'], 2)} nats against "
                       f"{_f(seen['uniform_next_token_loss'], 2)} for a uniform guess.")
    probe = results / "probe" / "summary.json"
    if probe.exists():
        for name, entry in read_json(probe)["datasets"].items():
            r = entry.get("readout_check")
            if r:
                out.append(f"- Probe readout check `{name}`: probe {_f(r['probe_accuracy'])} "
                           f"{_ci(r['probe_ci95'])} vs model {_f(r['model_accuracy'])} "
                           f"{_ci(r['model_accuracy_ci95'])}: "
                           f"{'holds' if r['holds'] else 'fails'}.")
    return out


def report(results: str | Path) -> str:
    from saeflow.core.io import read_json

    results = Path(results)
    patch = results / "patch"
    summary = read_json(patch / "summary.json")
    lines = estimator_table(summary) + [""] + by_site_table(summary)
    ident = summary["toy_check"].get("embedding_identity")
    if ident:
        lines.append(f"- Embedding identity on {ident['n_single_token_pairs']} single-token pairs: "
                     f"largest error at the changed token {ident['max_error_at_diff']}, largest "
                     f"effect elsewhere {ident['max_effect_elsewhere']}: "
                     f"{'holds' if ident['holds'] else 'fails'}.")
    for row in summary["toy_check"]["resid"]:
        if row["layer"] > 0:
            lines.append(f"- Residual patching at layer {row['layer']}: largest effect at a "
                         f"changed token in {row['share_argmax_at_diff']:.0%} of pairs (chance "
                         f"{row['chance_share']:.1%}), at the final token in "
                         f"{row['share_argmax_at_final']:.0%}.")
    top = summary["resid_top_cell"]
    lines.append(f"- Top residual cell: `{top['hook']}` position {top['position']}, normalised "
                 f"effect {_f(top['normalised_mean'])} "
                 f"[{_f(top['normalised_lo'])}, {_f(top['normalised_hi'])}] "
                 f"({top['interval_method'].split(' (')[0].split(' bootstrap')[0]} bootstrap"
                 f"{' over templates' if 'templates' in top['interval_method'] else ''}).")
    if (patch / "faithfulness.json").exists():
        lines += faithfulness_lines(read_json(patch / "faithfulness.json"))
    if (patch / "circuit.json").exists():
        lines += circuit_lines(read_json(patch / "circuit.json"))
    lines += model_lines(results)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    sys.stdout.write(report(argv[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
