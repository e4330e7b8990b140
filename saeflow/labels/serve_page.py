"""The HTML of the labelling page and the disagreements page (plain HTML and JS, no build step).

The labelling page shows the position, a progress bar, the question and the description, and
nothing else about the feature (no classifier label, no id), so the human stays independent.
It asks the server for everything; keys are queued, so a key applies to the item shown after
the previous answer has been saved. ``body[data-row]``, ``[data-labelled]`` and ``[data-busy]``
say where the page stands (the browser tests wait on them).
"""

from __future__ import annotations

import html
from typing import Any

STYLE = """
body { font: 16px/1.45 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem;
       color: #1d2430; background: #fafafa; }
header { display: flex; justify-content: space-between; color: #556; }
progress { width: 100%; height: 0.8rem; margin: 0.4rem 0 1.2rem; }
#question { font-weight: 600; }
#description { background: #fff; border-left: 4px solid #3b7dd8; padding: 0.8rem 1rem; margin: 1rem 0;
               min-height: 3rem; white-space: pre-wrap; }
button { font-size: 1rem; padding: 0.5rem 0.9rem; margin-right: 0.4rem; border-radius: 6px;
         border: 1px solid #99a; background: #fff; cursor: pointer; }
#related { background: #d9f2dd; } #not-related { background: #f6dcdc; }
#error { color: #a00; font-family: monospace; } #status, #answer { color: #445; }
table { border-collapse: collapse; width: 100%; } td, th { border-bottom: 1px solid #ccd;
  padding: 0.35rem 0.5rem; text-align: left; vertical-align: top; }
"""

LABEL_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>saeflow label</title>
<style>__STYLE__</style></head>
<body data-row="" data-labelled="" data-busy="1">
<header><span id="position">loading…</span><span id="count"></span></header>
<progress id="progress" value="0" max="1"></progress>
<div>Question: <span id="question"></span></div>
<div id="description"></div>
<p id="answer"></p>
<div>
  <button id="related" title="key r">Related (r)</button>
  <button id="not-related" title="key n">Not related (n)</button>
  <button id="back" title="key b">Back (b)</button>
  <button id="save" title="key s">Save (s)</button>
</div>
<p id="status"></p>
<p id="error" role="alert"></p>
<script>
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);
let state = null, queue = Promise.resolve(), busy = 0;

async function call(method, path, body) {
  const response = await fetch(path, {method, headers: {"X-Saeflow-Token": token,
    "Content-Type": "application/json"}, body: body === undefined ? undefined : JSON.stringify(body)});
  const text = await response.text();
  if (!response.ok) throw new Error(text.trim() || JSON.stringify({error: "HTTP " + response.status}));
  return JSON.parse(text);
}

function show(next) {
  state = next;
  const item = next.item, done = item === null;
  $("position").textContent = done ? `done: all ${next.n} items labelled` : `item ${item.row + 1} / ${next.n}`;
  $("count").textContent = `${next.n_labelled} / ${next.n} labelled`;
  $("progress").max = next.n;
  $("progress").value = next.n_labelled;
  $("question").textContent = next.question;
  $("description").textContent = done ? "" : item.description;
  $("answer").textContent = !done && item.answer ? `your answer so far: ${item.answer}` : "";
  $("error").textContent = next.refused ? JSON.stringify({error: next.refused}) : "";
  $("status").textContent = "";
  document.body.dataset.row = done ? "done" : String(item.row);
  document.body.dataset.labelled = String(next.n_labelled);
}

async function act(key) {
  if (state === null) return;
  const row = state.item === null ? null : state.item.row;
  if (key === "r" || key === "n") {
    if (row === null) return;
    show(await call("POST", "/api/answer", {row, label: key === "r" ? "related" : "not-related"}));
  } else if (key === "b") {
    show(await call("GET", `/api/state?row=${row === null ? state.n - 1 : Math.max(0, row - 1)}`));
  } else if (key === "s") {
    const saved = await call("POST", "/api/save", {});
    show(await call("GET", row === null ? "/api/state" : `/api/state?row=${row}`));
    $("status").textContent = `saved ${saved.n_labelled} labels to ${saved.path}`;
  }
}

function enqueue(task) {
  busy += 1;
  document.body.dataset.busy = String(busy);
  queue = queue.then(task).catch((err) => {
    $("error").textContent = err.message.startsWith("{") ? err.message : JSON.stringify(
      {error: `no answer from the server (${err.message}): is saeflow label --serve still running?`});
  })
    .finally(() => { busy -= 1; document.body.dataset.busy = String(busy); });
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
  if ("rnbs".includes(event.key) && event.key.length === 1) {
    event.preventDefault();
    enqueue(() => act(event.key));
  }
});
for (const [id, key] of [["related", "r"], ["not-related", "n"], ["back", "b"], ["save", "s"]]) {
  $(id).addEventListener("click", (event) => { event.currentTarget.blur(); enqueue(() => act(key)); });
}
enqueue(async () => show(await call("GET", "/api/state")));
</script>
</body></html>
"""


def label_page() -> bytes:
    return LABEL_PAGE.replace("__STYLE__", STYLE).encode()


def disagreements_page(table: dict[str, Any]) -> bytes:
    """The rows where human and classifier disagree, grouped by which way, with counts."""
    esc = html.escape
    rows = table["disagreements"]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>saeflow disagreements</title><style>{STYLE}</style></head><body>",
             f"<h1>Human vs classifier: {len(rows)} disagreements</h1>",
             f"<p id='summary'>{len(rows)} of {table['n_compared']} compared features disagree "
             f"({table['n_not_compared']} rows without two related/not-related answers are left "
             f"out). From <code>{esc(table['path'])}</code>.</p>"]
    for model, human, title in (("related", "not-related", "Classifier says related, human says not"),
                                ("not-related", "related", "Classifier says not related, human says related")):
        group = [r for r in rows if r["model_label"] == model and r["human_label"] == human]
        parts.append(f"<h2>{title} ({len(group)})</h2><table class='disagreements' "
                     f"data-model='{model}'><tr><th>feature</th><th>description</th><th>human</th>"
                     "<th>classifier</th></tr>")
        parts += [f"<tr><td>{esc(r['feature_id'])}</td><td class='description'>"
                  f"{esc(r['description'])}</td><td>{esc(r['human_label'])}</td>"
                  f"<td>{esc(r['model_label'])}</td></tr>" for r in group]
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts).encode()
