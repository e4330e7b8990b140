"""Which latents get a dashboard page (rule ``dashboard_latents``): the latents a study cares
about, each with why it was chosen. Sources (config ``dashboards.from``; each used when the
study runs its stage):

* ``circuit`` -- every latent node of the sparse feature circuit (``patch/circuit.json``);
* ``probe`` -- the distinct latents of each effects file of SAE codes
  (``probe/effects/{prompt_set}/{dataset}.json``: its top columns by |Cohen's d|), the first
  ``dashboards.probe_top`` of them (null: all, the ones probe/summary.json links to);
* ``categories`` -- a seeded sample of ``dashboards.per_category`` latents the classifier
  labelled ``related`` in each category (``labels/classified/{category}.json``; the SAE of
  ``labels.hook``);

plus the ``dashboards.latents`` listed in the config. Written as ``dashboards/latents.json``:
``{hooks: {hook: [{latent, why: [{source, text}]}]}, sources, skipped}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from saeflow.core.errors import InputError
from saeflow.core.io import read_json, write_json
from saeflow.formats.labels import RELATED, read_labelled

SOURCES = ("circuit", "probe", "categories")
Chosen = dict[str, dict[int, list[dict[str, str]]]]


def paths_of(value: Any) -> list[str]:
    """A rule input that is one path or a list of them, as a list (none: empty)."""
    if value is None:
        return []
    return [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value]


def _add(chosen: Chosen, hook: str, latent: int, source: str, text: str) -> None:
    reasons = chosen.setdefault(hook, {}).setdefault(int(latent), [])
    if not any(r["source"] == source and r["text"] == text for r in reasons):
        reasons.append({"source": source, "text": text})


def from_circuit(chosen: Chosen, path: str | Path) -> None:
    """Every latent node of ``circuit.json``."""
    for node in read_json(path).get("nodes", []):
        if node.get("kind") == "latent":
            _add(chosen, node["site"], node["latent"], "circuit",
                 f"circuit node {node['id']}, mean AtP {node.get('score', 0.0):.3g}")


def from_probe(chosen: Chosen, paths: Sequence[str | Path], top: int | None) -> None:
    """The first ``top`` distinct latents (None: all) of the top columns by |d| of each effects
    file whose inputs are SAE codes."""
    for path in paths:
        record = read_json(path)
        if record.get("input_kind") != "sae":
            continue
        seen: set[tuple[str, int]] = set()
        for entry in record.get("top", []):
            key = (entry["hook"], int(entry["unit"]))
            if key in seen:
                continue
            if top is not None and len(seen) == top:
                break
            seen.add(key)
            _add(chosen, key[0], key[1], "probe",
                 f"probe {record.get('prompt_set')}/{record['name']}: d = {entry['d']:.3g} "
                 f"(rank {entry['rank']}, position {entry.get('position')}, "
                 f"{record.get('positive_class')} vs rest)")


def from_categories(chosen: Chosen, paths: Sequence[str | Path], hook: str, n: int,
                    seed: int) -> None:
    """A seeded sample of ``n`` latents labelled related in each classified category file
    (named ``{category}.json``), latents of ``hook``."""
    for path in paths:
        category = Path(path).stem
        related = sorted({int(r["feature_index"]) for r in read_labelled(path)
                          if r["label"] == RELATED})
        rng = np.random.default_rng([seed, *category.encode()])
        for latent in sorted(rng.choice(related, min(n, len(related)), replace=False).tolist()):
            _add(chosen, hook, latent, "categories",
                 f"category {category}: classified related ({len(related)} latents, "
                 f"{min(n, len(related))} sampled)")


def from_config(chosen: Chosen, latents: Mapping[str, Sequence[int]]) -> None:
    for hook, ids in latents.items():
        for latent in ids:
            _add(chosen, hook, int(latent), "config", "listed in dashboards.latents")


def select_latents(dashboards: Mapping[str, Any], inputs: Mapping[str, Any], hooks: Sequence[str],
                   label_hook: str | None) -> dict[str, Any]:
    """The ``latents.json`` body: for each SAE hook of ``hooks``, the chosen latents (sorted)
    with their reasons. ``inputs``: ``circuit`` (a path), ``effects`` and ``classified``
    (lists of paths), each present only for a source the study runs."""
    chosen: Chosen = {}
    wanted = list(dashboards["from"])
    used = {"circuit": bool(inputs.get("circuit")), "probe": "effects" in inputs,
            "categories": "classified" in inputs and label_hook is not None}
    if used["circuit"] and "circuit" in wanted:
        from_circuit(chosen, inputs["circuit"])
    if used["probe"] and "probe" in wanted:
        from_probe(chosen, paths_of(inputs["effects"]), dashboards["probe_top"])
    if used["categories"] and "categories" in wanted:
        from_categories(chosen, paths_of(inputs["classified"]), str(label_hook),
                        dashboards["per_category"], dashboards["seed"])
    from_config(chosen, dashboards.get("latents") or {})
    unknown = sorted(set(chosen) - set(hooks))
    if unknown:
        raise InputError("config", "dashboards", f"latents chosen for {unknown[0]!r}, which is "
                         f"not an SAE hook {list(hooks)}")
    skipped = {s: "its stage is not in `stages`" for s in wanted if not used[s]}
    return {"hooks": {h: [{"latent": latent, "why": chosen.get(h, {})[latent]}
                          for latent in sorted(chosen.get(h, {}))] for h in hooks},
            "sources": [s for s in wanted if used[s]], "skipped": skipped}


def dashboard_latents_stage(dashboards: Mapping[str, Any], inputs: Mapping[str, Any],
                            hooks: Sequence[str], label_hook: str | None, out: str | Path) -> None:
    """Rule ``dashboard_latents``: :func:`select_latents` to ``out`` (latents.json)."""
    write_json(out, select_latents(dashboards, inputs, hooks, label_hook), dict(dashboards))


def read_selection(path: str | Path, hook: str) -> list[dict[str, Any]]:
    """The chosen latents of ``hook`` in a ``latents.json`` (``[{latent, why}]``)."""
    hooks = read_json(path).get("hooks")
    if not isinstance(hooks, dict) or not isinstance(hooks.get(hook), list):
        raise InputError(path, f"hooks.{hook}", "missing: not a latents.json of this SAE")
    return hooks[hook]
