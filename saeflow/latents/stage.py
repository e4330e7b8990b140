"""The dashboards' rules: ``dashboard_pages`` (one SAE: a page and its JSON per chosen latent,
and the SAE's index) and ``dashboard_index`` (the front page, with the circuit figure whose
latent nodes link to their pages). Layout: docs/outputs.md, "Latent dashboards".

Every number comes from files already on disk: contexts and histograms from the prompt set's
CSR codes (:mod:`saeflow.latents.contexts`, read once), logit tables from the weights alone
(:mod:`saeflow.latents.logits`); descriptions, auto-interp ``scores`` and classifier labels
from ``labels/descriptions.json`` and ``labels/classified/*.json`` where the study has them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saeflow.core.bundle import ModelSAEs
from saeflow.core.io import read_json, write_json, write_text_atomic
from saeflow.core.provenance import provenance
from saeflow.latents.contexts import (ContextSettings, Corpus, LatentActivations, contexts_of,
                                      gather_latents, token_decoder)
from saeflow.latents.links import page_link, page_name
from saeflow.latents.logits import activation_histogram, logit_tables, residual_directions
from saeflow.latents.pages import latent_page, sae_index, top_index
from saeflow.latents.selection import paths_of, read_selection

log = logging.getLogger(__name__)


def context_settings(dashboards: Mapping[str, Any]) -> ContextSettings:
    """The contexts' settings from config ``dashboards``."""
    return ContextSettings(top_k=dashboards["top_k"], n_quantiles=dashboards["n_quantiles"],
                           per_quantile=dashboards["per_quantile"],
                           n_random=dashboards["n_random"], left=dashboards["context_left"],
                           right=dashboards["context_right"], seed=dashboards["seed"])


def annotations(files: Mapping[str, Any], hook: str, label_hook: str | None
                ) -> dict[int, dict[str, Any]]:
    """Per latent of ``hook``: ``description`` and auto-interp ``scores`` (``{scorer:
    {balanced_accuracy, n, ...}}``, where a record carries them:
    :func:`saeflow.formats.descriptions.read_description_scores`) from
    ``files["descriptions"]``, and ``labels``
    (category -> label) from ``files["classified"]``; empty where the study has none or they
    describe another SAE (the labels stage describes ``labels.hook``)."""
    from saeflow.formats.descriptions import (read_description_meta, read_description_scores,
                                              read_descriptions)
    from saeflow.formats.labels import read_labelled

    out: dict[int, dict[str, Any]] = {}
    path = files.get("descriptions")
    if not path or (read_description_meta(path).get("hook") or label_hook) != hook:
        return out
    for rec in read_descriptions(path):
        out.setdefault(rec["feature_index"], {})["description"] = rec["description"]
    for latent, scores in read_description_scores(path).items():
        out.setdefault(latent, {})["scores"] = scores
    for classified in paths_of(files.get("classified")):
        for rec in read_labelled(classified):
            out.setdefault(int(rec["feature_index"]), {}).setdefault("labels", {})[
                Path(classified).stem] = rec["label"]
    return out


def _logit_tables(model: Any, sae: Any, hook: str, acts: LatentActivations, k: int,
                  decode: Any) -> tuple[list[Any], str | None]:
    """One logit table per chosen latent (None each, with the reason, where there is none)."""
    directions = residual_directions(model, sae, hook, acts.latents)
    if directions is None:
        note = (f"the decoder of {hook} is {sae.W_dec.shape[1]} wide, neither d_model nor "
                "an attention hook_z's n_heads x d_head")
        return [None] * len(acts.latents), note
    return logit_tables(model, directions, k, decode), None


def _page_data(record: Mapping[str, Any], choice: Mapping[str, Any], note: Mapping[str, Any],
               corpus: Corpus, acts: LatentActivations, j: int, bins: int) -> dict[str, Any]:
    """A page's JSON body (docs/outputs.md) from the latent's contexts and its non-zeros."""
    return {"latent": record["latent"], "why": choice["why"],
            "description": note.get("description"), "scores": note.get("scores"),
            "labels": note.get("labels"), "max_activation": record["max_activation"],
            "n_active_prompts": record["n_active_prompts"], "n_prompts": len(corpus.lengths),
            "histogram": activation_histogram(acts.of(j)[2], corpus.n_tokens, bins),
            "top_examples": record["top"], "quantile_examples": record["quantiles"],
            "non_activating_examples": record["non_activating"]}


@dataclass(frozen=True)
class PageWriter:
    """Writes one SAE's pages into ``out`` (``latent_{i}.html`` and ``.json``, ``index.html``
    and ``.json``): ``hook``, the corpus's ``prompt_set`` and the ``dashboards`` config; every
    file records ``config``."""

    out: Path
    hook: str
    prompt_set: str
    dashboards: Mapping[str, Any]
    config: dict[str, Any]

    def pages(self, chosen: Sequence[Mapping[str, Any]], acts: LatentActivations, corpus: Corpus,
              decode: Any, extras: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """A page per ``chosen`` latent (``[{latent, why}]``, ``acts.latents`` in order);
        ``extras``: ``tables`` (a logit table per latent), ``note`` (why there are none),
        ``notes`` (:func:`annotations`). Returns the index rows."""
        extras = extras or {}
        tables = extras.get("tables") or [None] * len(chosen)
        notes, settings = extras.get("notes") or {}, context_settings(self.dashboards)
        prov, rows = provenance(self.config), []
        self.out.mkdir(parents=True, exist_ok=True)
        for j, choice in enumerate(chosen):
            record = contexts_of(acts, j, corpus, settings, decode)
            latent = record["latent"]
            data = {**_page_data(record, choice, notes.get(latent, {}), corpus, acts, j,
                                 self.dashboards["histogram_bins"]),
                    "hook": self.hook, "prompt_set": self.prompt_set, "logits": tables[j],
                    "logits_note": extras.get("note")}
            write_json(self.out / page_name(latent).replace(".html", ".json"), data, self.config)
            write_text_atomic(self.out / page_name(latent), latent_page(data, prov))
            rows.append({"latent": latent, "page": page_name(latent), "why": choice["why"],
                         "max_activation": data["max_activation"],
                         "density": data["histogram"]["density"],
                         "description": data.get("description")})
        return rows

    def index(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The SAE's index (``index.json`` and ``index.html``) of ``rows``; returns its body."""
        self.out.mkdir(parents=True, exist_ok=True)
        body = {"hook": self.hook, "prompt_set": self.prompt_set, "n_latents": len(rows),
                "latents": list(rows)}
        write_json(self.out / "index.json", body, self.config)
        write_text_atomic(self.out / "index.html",
                          sae_index(self.hook, rows, self.prompt_set, provenance(self.config)))
        return body


def dashboard_pages_stage(bundle: ModelSAEs, files: Mapping[str, Any],
                          dashboards: Mapping[str, Any], prompt_set: str, out_dir: str | Path,
                          label_hook: str | None = None) -> dict[str, Any]:
    """Rule ``dashboard_pages``: for the SAE of ``bundle`` (one hook), each latent chosen in
    ``files["latents"]`` (latents.json) gets ``latent_{i}.json`` (its data) and
    ``latent_{i}.html`` in ``out_dir``, from ``files["codes"]`` and ``files["activations"]``
    (prompt set ``prompt_set``); ``index.html`` and ``index.json`` list them. Returns the
    index's body."""
    hook = bundle.hooks[0]
    config = {"dashboards": dict(dashboards), "prompt_set": prompt_set, "hook": hook,
              **bundle.provenance()}
    writer = PageWriter(Path(out_dir), hook, prompt_set, dashboards, config)
    chosen = read_selection(files["latents"], hook)
    corpus = Corpus.read(files["activations"])
    rows: list[dict[str, Any]] = []
    if chosen:
        acts = gather_latents(files["codes"], hook, [c["latent"] for c in chosen], corpus,
                              f"hooks.{hook} (from {files['latents']})")
        model, saes = bundle.load("cpu")  # the weights only: no forward pass
        decode = token_decoder(model.tokenizer)
        tables, note = _logit_tables(model, saes[0], hook, acts, dashboards["n_logits"], decode)
        rows = writer.pages(chosen, acts, corpus, decode, {
            "tables": tables, "note": note, "notes": annotations(files, hook, label_hook)})
    log.info("%s: %d latent pages from %s", hook, len(rows), files["codes"])
    return writer.index(rows)


def dashboard_index_stage(folders: Sequence[str | Path], out: str | Path,
                          circuit: str | Path | None = None,
                          config: dict[str, Any] | None = None) -> None:
    """Rule ``dashboard_index``: ``out`` (dashboards/index.html) links each SAE's index
    (``folders``: the SAEs' page folders, each with its index.json) and, with ``circuit``
    (patch/circuit.json), shows the circuit figure inline as SVG, each latent node linking to
    its page where it has one."""
    from saeflow.patch.plots import circuit_svg

    here = Path(out).parent.resolve()
    saes, pages = [], set()
    for folder in folders:
        index = read_json(Path(folder) / "index.json")
        link = Path(folder).resolve().relative_to(here) / "index.html"
        saes.append({"hook": index["hook"], "n_latents": index["n_latents"],
                     "index": link.as_posix()})
        pages |= {(index["hook"], row["latent"]) for row in index["latents"]}
    svg = None
    if circuit:
        data = read_json(circuit)
        links = {n["id"]: page_link(n["site"], n["latent"], "dashboards") for n in data["nodes"]
                 if n.get("kind") == "latent" and (n["site"], n["latent"]) in pages}
        svg = circuit_svg(data, links)
    write_text_atomic(out, top_index(saes, svg, provenance(config)))
