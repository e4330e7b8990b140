"""config/toy-circuit.yaml end to end on a test-sized world: sae-lens SAEs trained on attention
(hook_z), MLP and residual sites and a transcoder (layer 1's MLP input to its output),
extracted and encoded by the same list, every
node estimator judged against exhaustive exact patching, and a circuit whose direct edges join
sites of every kind and agree with exact patching of the edges."""

import json

import h5py
import pytest

from saeflow.testing.workspace import run_snakemake, sync_workflow

pytestmark = pytest.mark.slow
TRANSCODER = "blocks.1.ln2.hook_normalized"  # reads layer 1's MLP input, writes hook_mlp_out

SMALL = """\
world: {n_train: 3000, n_heldout: 200, n_pairs: 24}
model: {train: {steps: 150}}
sae: {d_sae: 256, training_tokens: 150000, batch_tokens: 1024}
"""


@pytest.fixture(scope="module")
def circuit_run(tmp_path_factory):
    workdir = sync_workflow(tmp_path_factory.mktemp("toy_circuit"))
    (workdir / "small.yaml").write_text(SMALL)
    run_snakemake(workdir, "--cores", "2", "--configfile", "config/toy-circuit.yaml", "small.yaml")
    return workdir / "results" / "toy-circuit"


def test_every_site_is_trained_extracted_and_encoded(circuit_run):
    sites = json.loads((circuit_run / "patch" / "circuit.json").read_text())["sites"]
    assert sites == ["blocks.0.attn.hook_z", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post",
                     "blocks.1.attn.hook_z", TRANSCODER, "blocks.1.hook_resid_post"]
    assert json.loads((circuit_run / "patch" / "circuit.json").read_text())["site_writes"] == \
        {TRANSCODER: "blocks.1.hook_mlp_out"}
    for site in sites:
        cfg = json.loads((circuit_run / "sae" / site / "cfg.json").read_text())
        assert cfg["d_in"] == 128  # hook_z: 4 heads x 32, flat
        if site == TRANSCODER:  # sae-lens's own class, read back by SAE.load_from_disk
            assert cfg["architecture"] == "transcoder" and cfg["d_out"] == 128
            assert cfg["metadata"]["hook_name_out"] == "blocks.1.hook_mlp_out"
        else:
            assert cfg["reshape_activations"] == ("hook_z" if site.endswith("hook_z") else "none")
    with h5py.File(circuit_run / "activations" / "pairs.h5") as f:
        assert all(f[f"acts/{s}"].shape[-1] == 128 for s in sites)
    with h5py.File(circuit_run / "codes" / "pairs.h5") as f:
        assert set(f["codes"]) == set(sites)
    metrics = json.loads((circuit_run / "sae" / "metrics.json").read_text())["saes"]
    assert all(m["explained_variance"] > 0.5 for m in metrics.values())
    assert metrics[TRANSCODER]["hook_name_out"] == "blocks.1.hook_mlp_out"  # judged on the output


def test_estimators_are_judged_at_every_site(circuit_run):
    summary = json.loads((circuit_run / "patch" / "summary.json").read_text())
    assert summary["estimators"] == ["atp", "ig", "graddrop", "qkfix"]
    atp = summary["atp_vs_exhaustive"]["with_error"]
    assert atp["false_negatives"] == 0 and atp["spearman_active_latents"] > 0.9
    mag = summary["magnitude_vs_exhaustive"]
    assert mag["graddrop"]["with_error"]["spearman_active_latents"] > 0.9
    assert mag["graddrop"]["with_error"]["relative_l1_error"] is None
    rows = {r["estimator"] for r in summary["estimator_comparison"]["with_error"]["rows"]}
    assert rows == {"atp", "ig", "qkfix"}
    # the QK fix at attention, MLP and residual sites: judged over every latent, no miss
    qk = summary["qkfix_vs_exhaustive"]["with_error"]
    assert qk["false_negatives"] == 0 and qk["spearman_active_latents"] > 0.9


def test_the_circuit_joins_sites_of_every_kind_and_its_edges_are_exact(circuit_run):
    circuit = json.loads((circuit_run / "patch" / "circuit.json").read_text())
    site = {n["id"]: n["site"] for n in circuit["nodes"]}
    kinds = {(site[e["source"]], site.get(e["target"], "metric")) for e in circuit["edges"]}
    assert ("blocks.0.attn.hook_z", "blocks.0.hook_mlp_out") in kinds      # attention -> MLP
    assert ("blocks.0.hook_mlp_out", "blocks.0.hook_resid_post") in kinds  # MLP -> residual
    # residual -> the next layer's transcoder: past the attention site along the residual stream
    assert ("blocks.0.hook_resid_post", TRANSCODER) in kinds
    assert (TRANSCODER, "blocks.1.hook_resid_post") in kinds  # transcoder -> residual
    # only the last residual site reaches the logits directly
    assert {src for src, dst in kinds if dst == "metric"} == {"blocks.1.hook_resid_post"}
    check = circuit["edge_check"]
    assert check["n_checked"] >= 10
    assert check["sign_agreement"] >= 0.9 and check["spearman"] > 0.6
    # cutting the edges left out keeps less of the behaviour than cutting nodes alone
    by_edges, by_nodes = circuit["edge_pruned"], circuit["faithfulness"]
    assert by_edges["faithfulness"] is not None and by_edges["completeness"] is not None
    assert by_edges["faithfulness"] != by_nodes["faithfulness"]
    assert (circuit_run / "figures" / "circuit.png").read_bytes()[:4] == b"\x89PNG"
