"""Edge-pruned faithfulness: node pruning when no edge is cut, the spliced model when the
complement cuts nothing, and a cut edge computed by hand on two residual sites."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saeflow.patch.attribution import rank_nodes, run_atp
from saeflow.patch.edge_pruning import edge_pruned_F, edge_pruned_record
from saeflow.patch.edges import METRIC, site_order
from saeflow.patch.faithfulness import faithfulness_curve, node_means
from saeflow.patch.pairs import logit_diff
from saeflow.patch.splice import prepare_saes, run_spliced
from saeflow.testing.fixtures import patch_run, random_pair_batch
from tests.patch.test_attribution import SITE_SETS, make_model, make_saes

torch.set_num_threads(1)


def _world(hooks):
    model = make_model(dtype=torch.float64)
    spliced = prepare_saes(model, make_saes(model, hooks))
    batches = [random_pair_batch(3, 6, [2], seed=3), random_pair_batch(2, 8, [5], seed=4)]
    sites = site_order(list(spliced))
    atp = run_atp(model, spliced, batches, True)
    run = patch_run(model, spliced, batches, n_bootstrap=0)
    means = node_means(run, True)
    return model, spliced, batches, sites, atp, means, run


def _every_edge(sites, circuit):
    order = {h: i for i, h in enumerate(sites)}
    return ({(a, b) for a in circuit for b in circuit if order[a[1]] < order[b[1]]}
            | {(a, METRIC) for a in circuit})


@pytest.mark.parametrize("hooks", list(SITE_SETS.values()))
def test_no_cut_edge_is_node_pruning_and_no_cut_complement_is_the_spliced_model(hooks):
    model, spliced, batches, sites, atp, means, run = _world(hooks)
    ranking = [node for node, _ in rank_nodes(atp)]
    for n in (3, 12):
        circuit = ranking[:n]
        assert len({h for _, h, _ in circuit}) >= 2, "the circuit spans sites"
        F = edge_pruned_F(patch_run(model, spliced, batches, max_batch=2), sites, circuit,
                          _every_edge(sites, circuit), means, complement=False)
        nodes = faithfulness_curve(run, ranking, [n], means, True)
        assert F.mean() == pytest.approx(nodes["curve"][0]["F_circuit"], abs=1e-10)
        whole = edge_pruned_F(run, sites, circuit, set(), means, complement=True)
        assert whole.mean() == pytest.approx(nodes["F_all_nodes"], abs=1e-10)
        # cutting every edge of the circuit changes both
        cut = edge_pruned_F(run, sites, circuit, set(), means, False)
        assert abs(cut.mean() - F.mean()) > 1e-6
        removed = edge_pruned_F(run, sites, circuit, _every_edge(sites, circuit), means, True)
        assert abs(removed.mean() - whole.mean()) > 1e-6


def test_a_cut_edge_computed_by_hand():
    """Two residual sites u -> d, circuit {a at u, b at d}, only the edge a -> b cut: b is
    computed from u with every node at its mean; the metric reads d alone (the last residual
    stream), with b at that value and everything else at d at its mean."""
    model, spliced, batches, sites, atp, means, run = _world(None)
    u, d = sites
    ranking = [node for node, _ in rank_nodes(atp)]
    a = next(n for n in ranking if n[1] == u and n[0] == "latent")
    b = next(n for n in ranking if n[1] == d and n[0] == "latent")
    F = edge_pruned_F(run, sites, [a, b], {(a, METRIC), (b, METRIC)}, means, complement=False)
    expected = []
    for batch in batches:
        T, P = batch.length, 8
        n = len(batch.clean)
        md = means[d]
        seen = {}

        def at_means(h, f, kind, seen=seen, P=P, T=T, n=n):
            m = means[h].act if kind == "act" else means[h].res
            if h == d:
                seen[kind] = f
            return m[P - T:].expand(n, -1, -1) if h == u else f

        run_spliced(model, spliced, batch.clean, True, lambda h, f: at_means(h, f, "act"),
                    lambda h, e: at_means(h, e, "res"))
        resid = spliced[d].decode(md.act[P - T:].expand(n, -1, -1).clone()
                                  .index_put_((torch.arange(n)[:, None], torch.arange(T)[None],
                                               torch.tensor(b[2])), seen["act"][..., b[2]]))
        resid = resid + md.res[P - T:]
        logits = model.unembed(model.ln_final(resid))
        expected.append(logit_diff(logits, batch.clean_answer, batch.corrupted_answer))
    np.testing.assert_allclose(F, torch.cat(expected).detach().numpy(), atol=1e-10)


def test_the_record_normalises_like_node_faithfulness():
    rng = np.random.default_rng(0)
    M, E = rng.normal(3, 0.1, 40), rng.normal(0, 0.1, 40)
    C = E + 0.8 * (M - E) + rng.normal(0, 0.05, 40)
    record = edge_pruned_record(C, E + 0.1 * (M - E), M, E, n_boot=500, ci=0.95, seed=0)
    assert record["faithfulness"] == pytest.approx((C.mean() - E.mean()) / (M.mean() - E.mean()))
    lo, hi = record["faithfulness_ci95"]
    assert lo < record["faithfulness"] < hi and hi - lo < 0.2
    assert record["completeness"] == pytest.approx(0.1, abs=1e-9)
    assert "percentile bootstrap" in record["interval_method"]
