"""The dashboards as static HTML: one page per latent, an index per SAE, a top index. Pages are
self-contained (inline CSS and SVG, no script, no network), rendered from the page's data (the
JSON written beside it, :mod:`saeflow.latents.stage`), with its provenance in a comment.

The layout follows SAEDashboard's feature-centric view (``sae_dashboard/layout.py``,
``html_fns.py``): the activation histogram and the logit tables beside the top activations and
the quantile groups, each token shaded by its activation relative to the latent's maximum
(the strongest token of the latent reaches full colour) and showing its value on hover.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.2em 2em;color:#222;max-width:1200px}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.1em;margin:1.2em 0 .4em}
.meta{color:#666;font-size:.85em}.why li{margin:.1em 0}
.panels{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start}
table{border-collapse:collapse;font-size:.9em}td,th{padding:.15em .6em;text-align:left}
th{border-bottom:1px solid #aaa}tr:nth-child(even) td{background:#f6f6f6}
.ctx{font-family:ui-monospace,monospace;font-size:.85em;white-space:pre-wrap;
 margin:.15em 0;padding:.2em .4em;border-left:3px solid #ddd;line-height:1.6}
.tok{border-radius:2px}.peak{outline:1px solid #c40}
.pos{color:#075}.neg{color:#a00}.desc{font-size:1.05em;background:#f3f3fb;padding:.4em .6em}
"""
HEAD = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<link rel="icon" href="data:,"><title>{title}</title><style>{style}</style></head>\n')


def provenance_comment(provenance: Mapping[str, Any]) -> str:
    """An HTML comment holding ``provenance`` as JSON (``--`` escaped inside strings)."""
    return "<!-- provenance: " + json.dumps(provenance).replace("--", "-\\u002d") + " -->\n"


def _doc(title: str, body: str, provenance: Mapping[str, Any]) -> str:
    return (HEAD.format(title=escape(title), style=STYLE) + provenance_comment(provenance)
            + f"<body>\n{body}\n</body></html>\n")


def _shown(token: str) -> str:
    return escape(token.replace("\n", "\u21b5\n"))


def context_html(context: Mapping[str, Any], scale: float) -> str:
    """One context: its tokens, each shaded by ``activation / scale`` (the page's maximum),
    its value in the hover title; the prompt's maximum outlined."""
    acts = context["activations"]
    peak = max(range(len(acts)), key=lambda i: acts[i]) if acts and max(acts) > 0 else -1
    spans = []
    for i, (tok, act) in enumerate(zip(context["tokens"], acts, strict=True)):
        alpha = min(1.0, act / scale) if scale > 0 and act > 0 else 0.0
        style = f' style="background:rgba(255,110,0,{alpha:.3f})"' if alpha else ""
        cls = "tok peak" if i == peak else "tok"
        spans.append(f'<span class="{cls}"{style} title="{act:.4g}">{_shown(tok)}</span>')
    return (f'<div class="ctx" data-prompt="{context["prompt"]}"><span class="meta">prompt '
            f'{context["prompt"]} · max {context["max_activation"]:.3g}</span>  '
            + "".join(spans) + "</div>")


def histogram_svg(hist: Mapping[str, Any], width: int = 360, height: int = 120) -> str:
    """The activation histogram as an inline SVG bar chart."""
    counts, edges = hist["counts"], hist["edges"]
    title = (f"activation density {100 * hist['density']:.3g}% ({hist['n_active']} of "
             f"{hist['n_tokens']} tokens)")
    if not counts:
        return f'<figure class="hist"><figcaption>{title}</figcaption><p>never fires</p></figure>'
    top, bar = max(counts) or 1, width / len(counts)
    bars = "".join(
        f'<rect x="{i * bar:.2f}" y="{height - 18 - (height - 24) * c / top:.2f}" '
        f'width="{max(bar - 1, 0.5):.2f}" height="{(height - 24) * c / top:.2f}" fill="#e07020">'
        f'<title>{edges[i]:.3g}-{edges[i + 1]:.3g}: {c}</title></rect>'
        for i, c in enumerate(counts))
    axis = (f'<text x="0" y="{height - 4}" font-size="10">0</text><text x="{width}" '
            f'y="{height - 4}" font-size="10" text-anchor="end">{edges[-1]:.3g}</text>')
    return (f'<figure class="hist"><figcaption>{escape(title)}</figcaption><svg width="{width}" '
            f'height="{height}" role="img" aria-label="activation histogram">{bars}{axis}</svg>'
            "</figure>")


def logits_html(table: Mapping[str, Any] | None, note: str | None) -> str:
    """The positive and negative logit tables side by side (or why there are none)."""
    if table is None:
        return f'<p class="meta">No logit table: {escape(note or "")}</p>'
    rows = []
    for pos, neg in zip(table["positive"], table["negative"], strict=True):
        rows.append(f'<tr><td class="pos">{_shown(pos["token"])}</td><td>{pos["logit"]:+.3f}</td>'
                    f'<td class="neg">{_shown(neg["token"])}</td><td>{neg["logit"]:+.3f}</td></tr>')
    return ('<table class="logits"><tr><th>raises</th><th>logit</th><th>lowers</th><th>logit'
            "</th></tr>" + "".join(rows) + "</table>")


def _score(score: Any) -> str:
    """A scorer's record (``{balanced_accuracy, n, ...}``) as ``0.80 (n 40)``."""
    if not isinstance(score, Mapping):
        return escape(str(score))
    value = score.get("balanced_accuracy")
    shown = "undefined" if value is None else f"{value:.2f}"
    return shown + (f" (n {score['n']})" if "n" in score else "")


def _labels_html(data: Mapping[str, Any]) -> str:
    parts = []
    if data.get("description"):
        parts.append(f'<p class="desc">{escape(data["description"])}</p>')
    if data.get("scores"):
        scores = ", ".join(f"{escape(str(k))} {_score(v)}" for k, v in data["scores"].items())
        parts.append(f'<p class="meta">auto-interp scores (balanced accuracy): {scores}</p>')
    if data.get("labels"):
        labels = ", ".join(f"{escape(c)}: {escape(str(v))}" for c, v in data["labels"].items())
        parts.append(f'<p class="meta">classifier: {labels}</p>')
    why = "".join(f'<li>{escape(r["text"])}</li>' for r in data.get("why", []))
    return "".join(parts) + (f'<ul class="why">{why}</ul>' if why else "")


def latent_page(data: Mapping[str, Any], provenance: Mapping[str, Any]) -> str:
    """The HTML of one latent's page from its data (the JSON beside it)."""
    hook, latent = data["hook"], data["latent"]
    scale = data["max_activation"] or 1.0
    top = "".join(context_html(c, scale) for c in data["top_examples"])
    groups = "".join(
        f'<h3 class="meta">quantile {g["quantile"]}: max activation {g["lo"]:.3g}-{g["hi"]:.3g}, '
        f'{g["n_prompts"]} prompts</h3>' + "".join(context_html(c, scale) for c in g["examples"])
        for g in data["quantile_examples"])
    silent = "".join(context_html(c, scale) for c in data.get("non_activating_examples", []))
    body = (f'<p class="meta"><a href="index.html">{escape(hook)}</a> · <a href="../index.html">'
            f"all SAEs</a></p><h1>{escape(hook)} · latent {latent}</h1>"
            f'<p class="meta">max activation {data["max_activation"]:.4g} · fires on '
            f'{data["n_active_prompts"]} of {data["n_prompts"]} prompts · corpus '
            f'{escape(data["prompt_set"])}</p>' + _labels_html(data)
            + '<div class="panels"><section>' + histogram_svg(data["histogram"]) + "</section>"
            + "<section><h2>Logits of the decoder direction</h2>"
            + logits_html(data.get("logits"), data.get("logits_note")) + "</section></div>"
            + f'<h2>Top activations</h2><section id="top">{top or "<p>never fires</p>"}</section>'
            + f'<h2>Quantile samples</h2><section id="quantiles">{groups}</section>'
            + (f'<h2>Not activating</h2><section id="silent">{silent}</section>' if silent else ""))
    return _doc(f"{hook} · latent {latent}", body, provenance)


def sae_index(hook: str, rows: Sequence[Mapping[str, Any]], prompt_set: str,
              provenance: Mapping[str, Any]) -> str:
    """One SAE's index: every latent page, with why it was chosen, its density and description."""
    body = [f'<p class="meta"><a href="../index.html">all SAEs</a></p><h1>{escape(hook)}</h1>',
            f'<p class="meta">{len(rows)} latents · corpus {escape(prompt_set)}</p>']
    if not rows:
        body.append("<p>No latent of this SAE was chosen (dashboards.from, "
                    "dashboards.latents).</p>")
    else:
        body.append("<table><tr><th>latent</th><th>max</th><th>density</th><th>why</th>"
                    "<th>description</th></tr>")
        for r in rows:
            why = "; ".join(escape(w["text"]) for w in r["why"])
            body.append(f'<tr><td><a href="{escape(r["page"])}">{r["latent"]}</a></td>'
                        f'<td>{r["max_activation"]:.3g}</td><td>{100 * r["density"]:.3g}%</td>'
                        f'<td>{why}</td><td>{escape(r.get("description") or "")}</td></tr>')
        body.append("</table>")
    return _doc(f"{hook} · dashboards", "\n".join(body), provenance)


def top_index(saes: Sequence[Mapping[str, Any]], circuit_svg: str | None,
              provenance: Mapping[str, Any]) -> str:
    """The dashboards' front page: each SAE's index, and the circuit figure (SVG text, shown
    inline so its node links work from a file) with links."""
    items = "".join(f'<li><a href="{escape(s["index"])}">{escape(s["hook"])}</a> '
                    f'({s["n_latents"]} latents)</li>' for s in saes)
    fig = ""
    if circuit_svg:
        inline = circuit_svg[circuit_svg.index("<svg"):]  # no XML declaration or DOCTYPE
        fig = ('<h2>Circuit</h2><p class="meta">A latent node links to its page.</p>'
               f'<div id="circuit">{inline}</div>')
    return _doc("latent dashboards", f"<h1>Latent dashboards</h1><ul>{items}</ul>{fig}", provenance)
