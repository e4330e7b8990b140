"""circuit.json's faithfulness and completeness are measured on pairs that did not choose its
nodes and edges (saeflow.patch.circuit, the faithfulness curves' split)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import saeflow.patch.circuit as circuit
from saeflow.patch.attribution import run_atp
from saeflow.patch.splice import PatchRun
from saeflow.testing.fixtures import patch_config, random_pair_batch
from tests.patch.test_attribution import make_model, make_saes

torch.set_num_threads(1)

# what chooses the circuit (batches: argument 2) and what measures it (a PatchRun: argument 0)
CHOOSE = ("edge_attribution", "node_positions", "exact_edge")
MEASURE = ("node_means", "faithfulness_curve", "model_and_empty_F", "edge_pruned_F")


def _ids(batches) -> set[int]:
    return {i for b in batches for i in b.pair_ids}


@pytest.fixture
def spied(monkeypatch):
    """Every choosing and measuring call of build_circuit, with the pair ids it was given."""
    seen: dict[str, list[set[int]]] = {name: [] for name in CHOOSE + MEASURE}
    for name in CHOOSE + MEASURE:
        real = getattr(circuit, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            seen[_name].append(_ids(args[0].batches if _name in MEASURE else args[2]))
            return _real(*args, **kwargs)

        monkeypatch.setattr(circuit, name, spy)
    return seen


def test_evaluation_never_uses_a_selection_pair(spied):
    model = make_model()
    saes = make_saes(model)
    batches = [random_pair_batch(5, 5, [1], seed=7), random_pair_batch(5, 7, [2, 4], seed=8)]
    run = PatchRun.build(model, saes, batches, patch_config(n_bootstrap=20, seed=1))
    atp = run_atp(run.model, run.saes, run.batches, True)
    out = circuit.build_circuit(run, atp, {})
    split = out["split"]
    chosen, measured = set(split["rank_pairs"]), set(split["eval_pairs"])
    assert split["held_out"] and not chosen & measured and chosen | measured == _ids(batches)
    assert (split["n_rank"], split["n_eval"]) == (5, 5) and split["seed"] == 1
    assert "seeded random split" in split["method"]
    for name in CHOOSE:
        assert spied[name] and all(ids <= chosen for ids in spied[name]), name
    for name in MEASURE:
        assert spied[name] and all(ids == measured for ids in spied[name]), name
    assert out["faithfulness"]["n_pairs"] == 5
    # the node scores are means over the choosing pairs only
    rows = np.isin(atp.pair_ids, sorted(chosen))
    latents = [n for n in out["nodes"] if n["kind"] == "latent"]
    assert latents
    for node in latents:
        assert node["score"] == pytest.approx(
            atp.latent_effect[node["site"]][rows, node["latent"]].mean())
    # the same split as the faithfulness curves (patch.faithfulness_rank_share, patch.seed)
    from saeflow.patch.faithfulness import held_out_split

    assert held_out_split(run).record["rank_pairs"] == split["rank_pairs"]


def test_too_few_pairs_to_split_is_said(spied):
    model = make_model()
    batches = [random_pair_batch(3, 5, [1], seed=7)]
    run = PatchRun.build(model, make_saes(model), batches, patch_config(n_bootstrap=20))
    out = circuit.build_circuit(run, run_atp(run.model, run.saes, run.batches, True), {})
    assert not out["split"]["held_out"] and "too few pairs" in out["split"]["method"]
    assert out["split"]["rank_pairs"] == out["split"]["eval_pairs"] == [700, 701, 702]
