"""The dashboards from files the library wrote: which latents are chosen and why, each page's
data (contexts, histogram, logit table from W_dec @ W_U, description, scores, label), the
SAE's index, the front page's circuit with node links, and the probe summary's links."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from saeflow.core.errors import InputError
from saeflow.formats.codes import read_codes
from saeflow.latents.links import page_link
from saeflow.latents.selection import select_latents
from tests.latents.conftest import HOOK, OTHER, SCORES


def test_latents_are_chosen_from_every_source_with_why(built):
    chosen = json.loads((built / "latents.json").read_text())
    assert chosen["sources"] == ["circuit", "probe", "categories"] and chosen["skipped"] == {}
    assert chosen["hooks"][OTHER] == []
    by_latent = {c["latent"]: {w["source"] for w in c["why"]} for c in chosen["hooks"][HOOK]}
    assert by_latent[7] == {"circuit"}  # the circuit's latent node, not its error node
    assert by_latent[11] == {"probe", "config"} and by_latent[0] == {"config"}
    assert "config" in by_latent[3]
    assert by_latent[2] == {"probe"} and 40 not in by_latent  # probe_top 2 distinct latents
    sampled = {latent for latent, sources in by_latent.items() if "categories" in sources}
    assert len(sampled) == 2 and sampled <= {3, 4, 5, 6}
    assert list(by_latent) == sorted(by_latent)
    assert chosen["provenance"]["config"]["probe_top"] == 2


def test_sources_whose_stage_does_not_run_are_skipped_and_unknown_hooks_refused(dashboards):
    picked = select_latents(dashboards, {}, [HOOK], None)
    assert picked["sources"] == [] and set(picked["skipped"]) == {"circuit", "probe", "categories"}
    assert [c["latent"] for c in picked["hooks"][HOOK]] == [0, 3, 11]
    with pytest.raises(InputError, match="not an SAE hook"):
        select_latents({**dashboards, "latents": {"blocks.9.hook_resid_post": [1]}}, {}, [HOOK],
                       None)


def test_each_page_holds_its_data_from_the_codes_and_weights(built, latent_files, random_sae,
                                                             tiny_model):
    index = json.loads((built / HOOK / "index.json").read_text())
    chosen = json.loads((built / "latents.json").read_text())["hooks"][HOOK]
    assert [r["latent"] for r in index["latents"]] == [c["latent"] for c in chosen]
    codes = read_codes(latent_files.codes, HOOK)
    for row in index["latents"]:
        latent = row["latent"]
        data = json.loads((built / HOOK / f"latent_{latent}.json").read_text())
        html = (built / HOOK / row["page"]).read_text()
        column = codes[:, latent].toarray().ravel()
        assert data["max_activation"] == pytest.approx(column.max(), abs=1e-5)
        assert 0 < len(data["top_examples"]) <= 5
        top = data["top_examples"][0]
        assert set(top) == {"prompt", "tokens", "activations", "max_activation"}
        assert top["max_activation"] == data["max_activation"]
        hist = data["histogram"]
        assert sum(hist["counts"]) == hist["n_active"] == int((column > 0).sum())
        assert hist["density"] == pytest.approx((column > 0).sum() / hist["n_tokens"])
        logits = (random_sae.W_dec[latent] @ tiny_model.W_U).detach().numpy()
        best = [e["id"] for e in data["logits"]["positive"]]
        worst = [e["id"] for e in data["logits"]["negative"]]
        assert best == list(np.argsort(-logits)[:len(best)]) and len(best) == 10
        assert worst == list(np.argsort(logits)[:len(worst)])
        assert data["logits"]["positive"][0]["logit"] == pytest.approx(logits.max(), abs=1e-3)
        assert data["description"] == f"feature {latent} text"
        assert data["provenance"]["config"]["hook"] == HOOK and data["provenance"]["git_commit"]
        assert html.count('class="ctx"') == (len(data["top_examples"]) + sum(
            len(g["examples"]) for g in data["quantile_examples"])
            + len(data["non_activating_examples"]))
        assert "<!-- provenance: " in html and "<script" not in html
    labelled = [json.loads((built / HOOK / f"latent_{r['latent']}.json").read_text())
                for r in index["latents"] if r["latent"] in (3, 4, 5, 6)]
    assert len(labelled) >= 2 and all(d["labels"] == {"digits": "related"} for d in labelled)
    assert json.loads((built / HOOK / "latent_0.json").read_text())["labels"] == {
        "digits": "not-related"}
    data3 = json.loads((built / HOOK / "latent_3.json").read_text())
    assert data3["scores"] == SCORES
    assert ("auto-interp scores (balanced accuracy): detection 0.80 (n 40), fuzzing undefined "
            "(n 40)") in (built / HOOK / "latent_3.html").read_text()


def test_an_sae_with_no_chosen_latent_gets_an_index_saying_so(built):
    assert json.loads((built / OTHER / "index.json").read_text())["n_latents"] == 0
    assert "No latent of this SAE was chosen" in (built / OTHER / "index.html").read_text()


def test_the_front_page_links_each_sae_and_the_circuits_latent_nodes(built):
    html = (built / "index.html").read_text()
    assert f'href="{HOOK}/index.html"' in html and "<svg" in html
    links = set(re.findall(r'xlink:href="([^"]+)"', html))
    links |= set(re.findall(r'<a href="([^"]+)"', html))
    assert f"{HOOK}/latent_7.html" in links  # the circuit's latent node, clickable
    for link in links - {f"{OTHER}/index.html"}:  # OTHER's index is written, no page of it
        assert link.startswith("#") or (built / link).exists(), link


def test_probe_summary_links_top_latents_to_their_pages():
    from saeflow.probe.summary import probe_summary

    effects = [{"name": "sae_concept", "prompt_set": "heldout_seen", "input_kind": "sae",
                "positive_class": "TypeError", "n_significant": 1,
                "top": [{"hook": HOOK, "unit": 11, "d": 1.5, "position": "final", "q": 0.01},
                        {"hook": HOOK, "unit": 11, "d": 1.2, "position": -2, "q": 0.02},
                        {"hook": HOOK, "unit": 2, "d": -0.9, "position": "final", "q": 0.5}],
                "localisation": {"k": 3, "by_layer": {}, "by_position": {},
                                 "expected_by_layer": {}, "expected_by_position": {},
                                 "hot_spots": []}}]
    entry = probe_summary([], effects)["datasets"]["heldout_seen/sae_concept"]
    assert entry["top_latents"] == [
        {"hook": HOOK, "latent": 11, "d": 1.5, "position": "final", "q": 0.01,
         "dashboard": page_link(HOOK, 11, "probe")},
        {"hook": HOOK, "latent": 2, "d": -0.9, "position": "final", "q": 0.5,
         "dashboard": f"../dashboards/{HOOK}/latent_2.html"}]
