"""Files the dashboards are built from, made by the library's own writers on the tiny fixtures:
activations (saeflow.extract) and CSR codes (saeflow.encode) of the small world's held-out
prompts, the tiny model and random SAE saved as the pipeline saves them, and the labels,
probe and circuit records a study would have."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

HOOK = "blocks.1.hook_resid_post"
OTHER = "blocks.0.hook_resid_post"
SCORES = {"detection": {"balanced_accuracy": 0.8, "n": 40},
          "fuzzing": {"balanced_accuracy": None, "n": 40}}  # the auto-interp scorers' records


@pytest.fixture(scope="session")
def latent_files(small_world, tiny_model, random_sae, tmp_path_factory):
    """Paths of ``acts``, ``codes``, ``model`` (folder), ``sae`` (folder), ``descriptions``,
    ``classified`` (one category), ``circuit`` and ``effects`` in one folder."""
    from saeflow.encode import encode_to_hdf5
    from saeflow.extract import Storage, extract_to_hdf5
    from saeflow.toy.train import save_toy_model

    root = tmp_path_factory.mktemp("latents")
    files = SimpleNamespace(root=root, acts=root / "acts.h5", codes=root / "codes.h5",
                            model=root / "model", sae=root / "sae")
    records = small_world.prompt_sets["heldout_seen"]
    extract_to_hdf5(tiny_model, records, [HOOK], files.acts, Storage(batch_size=16))
    encode_to_hdf5(files.acts, files.codes, {HOOK: lambda: random_sae})
    save_toy_model(tiny_model, files.model)
    random_sae.save_model(str(files.sae))
    files.descriptions = _write(root / "descriptions.json", {
        "source": HOOK, "hook": HOOK, "d_sae": 96, "records": [
            {"feature_id": f"{HOOK}-{i}", "feature_index": i, "description": f"feature {i} text",
             **({"scores": SCORES} if i == 3 else {})}
            for i in range(96)]})
    files.classified = _write(root / "classified" / "digits.json", {"records": [
        {"feature_id": f"{HOOK}-{i}", "feature_index": i, "description": f"feature {i} text",
         "label": "related" if i in (3, 4, 5, 6) else "not-related"} for i in range(96)]})
    files.circuit = _write(root / "circuit.json", {
        "sites": ["blocks.0.hook_resid_post", HOOK], "node_threshold": 0.01,
        "edge_threshold": 0.01,
        "nodes": [{"id": f"{HOOK}/latent/7", "site": HOOK, "site_index": 1, "kind": "latent",
                   "latent": 7, "position": -1, "score": 0.4},
                  {"id": f"{HOOK}/error/-1", "site": HOOK, "site_index": 1, "kind": "error",
                   "latent": None, "position": -1, "score": 0.1}],
        "edges": [{"source": f"{HOOK}/latent/7", "target": "metric", "score": 0.3}]})
    files.effects = _write(root / "effects.json", {
        "name": "sae_concept", "prompt_set": "heldout_seen", "input_kind": "sae",
        "positive_class": "TypeError", "top": [
            {"rank": r, "hook": HOOK, "unit": u, "d": d, "position": "final"}
            for r, (u, d) in enumerate([(11, 1.5), (11, 1.2), (2, -0.9), (40, 0.5)])]})
    return files


@pytest.fixture(scope="session")
def dashboards():
    from saeflow.core.config import schema_defaults

    return {**schema_defaults("dashboards"), "top_k": 5, "n_quantiles": 3, "per_quantile": 2,
            "n_random": 2, "probe_top": 2, "per_category": 2, "latents": {HOOK: [0, 3, 11]}}


@pytest.fixture(scope="session")
def built(latent_files, dashboards, tmp_path_factory):
    """latents.json, one SAE's pages and the front page, as the three rules write them."""
    from saeflow.core.bundle import ModelSAEs
    from saeflow.latents.selection import dashboard_latents_stage
    from saeflow.latents.stage import dashboard_index_stage, dashboard_pages_stage

    root = tmp_path_factory.mktemp("results") / "dashboards"
    inputs = {"circuit": str(latent_files.circuit), "effects": [str(latent_files.effects)],
              "classified": [str(latent_files.classified)]}
    dashboard_latents_stage(dashboards, inputs, [OTHER, HOOK], HOOK, root / "latents.json")
    bundle = ModelSAEs({"source": "toy"}, latent_files.model, {"source": "train"}, (HOOK,),
                       (latent_files.sae,))
    files = {"latents": str(root / "latents.json"), "codes": str(latent_files.codes),
             "activations": str(latent_files.acts), "descriptions": str(latent_files.descriptions),
             "classified": [str(latent_files.classified)]}
    dashboard_pages_stage(bundle, files, dashboards, "heldout_seen", root / HOOK, HOOK)
    other = ModelSAEs({"source": "toy"}, latent_files.model, {"source": "train"}, (OTHER,),
                      (latent_files.sae,))  # no latent chosen: nothing is loaded
    dashboard_pages_stage(other, {**files, "descriptions": None, "classified": []}, dashboards,
                          "heldout_seen", root / OTHER, HOOK)
    dashboard_index_stage([root / OTHER, root / HOOK],
                          root / "index.html", latent_files.circuit,
                          {"dashboards": dashboards})
    return root


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path
