"""Edges between SAE latents (Sparse Feature Circuits): the VJP estimate is the small-patch
limit of exact mediated patching, for every kind of edge."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saeflow.patch.attribution import run_atp
from saeflow.patch.splice import decoder_rows, prepare_saes
from saeflow.patch.edges import (METRIC, edge_attribution, exact_edge,
                                 select_nodes, site_order)
from saeflow.testing.fixtures import random_pair_batch
from tests.patch.test_attribution import SITE_SETS, make_model, make_saes

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup():
    model = make_model(dtype=torch.float64)
    spliced = prepare_saes(model, make_saes(model))
    batches = [random_pair_batch(3, 6, [2], seed=3), random_pair_batch(2, 8, [5], seed=4)]
    sites = site_order(list(spliced))
    atp = run_atp(model, spliced, batches, True)
    selected = select_nodes(atp, sites, threshold=1e-6, max_per_site=40)  # every moving node
    return model, spliced, batches, sites, selected


def test_site_order_and_decoder_rows(setup):
    model, spliced, *_ = setup
    assert site_order(["blocks.1.hook_resid_post", "blocks.0.hook_resid_post"]) == \
        ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    sae = spliced["blocks.0.hook_resid_post"]
    np.testing.assert_allclose(decoder_rows(sae, [3, 7]).detach().numpy(),
                               sae.W_dec[[3, 7]].detach().numpy(), atol=1e-12)


def test_edges_are_the_small_patch_limit_of_exact_mediated_patching(setup):
    model, spliced, batches, sites, selected = setup
    edges = edge_attribution(model, spliced, batches, sites, selected)
    between = [(a, b) for a, b in edges if b != METRIC]
    kinds = {(a[0], b[0]) for a, b in between}
    assert {("latent", "latent"), ("error", "latent"), ("latent", "error")} <= kinds
    strong = sorted(between, key=lambda e: -abs(edges[e]))[:8]
    assert abs(edges[strong[0]]) > 1e-3
    alpha = 1e-5
    for a, b in strong:
        limit = exact_edge(model, spliced, batches, a, b, alpha=alpha) / alpha
        assert limit == pytest.approx(edges[(a, b)], rel=1e-3, abs=1e-7), (a, b)


def test_edges_to_the_metric_are_the_last_sites_node_effects(setup):
    model, spliced, batches, sites, selected = setup
    edges = edge_attribution(model, spliced, batches, sites, selected)
    atp = run_atp(model, spliced, batches, True)
    last = sites[-1]
    for node in selected[last]:
        kind, _, i = node
        expected = (atp.latent_effect[last][:, i].mean() if kind == "latent"
                    else np.nansum(atp.error_effect[last][:, i]) / 5)
        assert edges[(node, METRIC)] == pytest.approx(expected, abs=1e-9)


def test_a_full_patch_differs_from_the_limit_but_agrees_in_sign_mostly(setup):
    model, spliced, batches, sites, selected = setup
    edges = edge_attribution(model, spliced, batches, sites, selected)
    between = sorted([e for e in edges if e[1] != METRIC], key=lambda e: -abs(edges[e]))[:6]
    exact = [exact_edge(model, spliced, batches, a, b) for a, b in between]
    assert np.mean([np.sign(x) == np.sign(edges[e]) for x, e in zip(exact, between)]) >= 0.5


@pytest.mark.parametrize("hooks", [SITE_SETS["attn-mlp-resid"], SITE_SETS["transcoder"],
                                   ["blocks.0.attn.hook_z", "blocks.1.hook_mlp_out"]])
def test_direct_edges_between_attention_mlp_and_residual_sites(hooks):
    """Every site pair with a direct path gets edges (attention to the next layer's attention
    skips the MLP site through the residual stream); a residual site every path crosses cuts
    them; each edge, to a node or to the metric, is the small-patch limit of exact patching
    with the sites in between held at their corrupted values."""
    model = make_model(dtype=torch.float64)
    spliced = prepare_saes(model, make_saes(model, hooks))
    batches = [random_pair_batch(4, 6, [2], seed=3), random_pair_batch(3, 8, [5], seed=4)]
    sites = site_order(list(spliced))
    assert sites == hooks
    atp = run_atp(model, spliced, batches, True)
    selected = select_nodes(atp, sites, 0.0, 3)
    edges = edge_attribution(model, spliced, batches, sites, selected)
    pairs = {(a[1], b if b == METRIC else b[1]) for a, b in edges}
    if hooks == SITE_SETS["transcoder"]:
        # transcoders read the MLP's input and write its output: attention -> transcoder,
        # transcoder -> the next layer's transcoder past its attention (no site there)
        attn0, tc0, tc1, resid1 = hooks
        assert {(attn0, tc0), (attn0, tc1), (tc0, tc1), (attn0, resid1), (tc0, resid1),
                (tc1, resid1), (resid1, METRIC)} <= pairs
        assert not {(h, METRIC) for h in (attn0, tc0, tc1)} & pairs
    elif len(hooks) == 4:
        attn0, mlp0, attn1, resid1 = hooks
        assert {(attn0, mlp0), (attn0, attn1), (mlp0, attn1), (attn0, resid1),
                (attn1, resid1), (resid1, METRIC)} <= pairs
        # every path to the logits crosses the last residual site
        assert not {(h, METRIC) for h in (attn0, mlp0, attn1)} & pairs
    else:
        assert {(hooks[0], hooks[1]), (hooks[0], METRIC), (hooks[1], METRIC)} <= pairs
    alpha = 1e-6
    checked = 0
    for (u, d) in sorted(pairs):
        strongest = max((e for e in edges if e[0][1] == u and (e[1] if e[1] == METRIC else e[1][1]) == d),
                        key=lambda e: abs(edges[e]))
        a, b = strongest
        if abs(edges[strongest]) < 1e-4:
            continue
        limit = exact_edge(model, spliced, batches, a, b, alpha=alpha) / alpha
        assert limit == pytest.approx(edges[strongest], rel=1e-3, abs=1e-7), (a, b)
        checked += 1
    assert checked >= len(pairs) - 1
