"""Cluster bootstrap over the pairs' templates (saeflow.patch.bootstrap): on clustered data the
bootstrap over pairs under-covers and the cluster bootstrap covers; the pairs file's `group`
or clean row's `template` defines a pair's cluster; every interval names the unit resampled."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saeflow.core.errors import InputError
from saeflow.calibration.patch import clustered_coverage
from saeflow.patch.bootstrap import Clusters
from saeflow.patch.edge_pruning import edge_pruned_record
from saeflow.patch.pairs import load_pairs
from saeflow.testing.fixtures import random_pair_batch
from tests.patch.test_patching import WordTokenizer


def coverage(n_clusters: int, per_cluster: int, clustered: bool, reps: int = 400,
             seed: int = 0, ratio: bool = False) -> float:
    """Share of ``reps`` 95% intervals covering the truth (saeflow.calibration.patch)."""
    hits, n = clustered_coverage(n_clusters, per_cluster, clustered, reps, seed, ratio)
    return hits / n


def test_the_pair_bootstrap_under_covers_clustered_pairs_and_the_cluster_bootstrap_covers():
    # 30 templates x 20 pairs, half the variance shared within a template: the variance of
    # the mean is 1 + 19 * 0.5 = 10.5 times what 600 independent pairs would give, so an
    # interval over pairs is sqrt(10.5) too narrow and covers 2 Phi(1.96 / 3.24) - 1 = 0.45
    pairs, templates = coverage(30, 20, False), coverage(30, 20, True)
    # (400 replicates: a coverage's standard error is about 0.012; percentile intervals from
    # 30 clusters reach about 0.93 of the nominal 0.95)
    assert pairs < 0.6, pairs
    assert templates >= 0.88, templates
    # with few templates the cluster bootstrap under-covers too (the method string says so,
    # below 20 clusters), though far less than the bootstrap over pairs
    few = coverage(4, 50, True)
    assert coverage(4, 50, False) < few < 0.9
    # the normalised effect's ratio of means (resid.h5's normalised_*), likewise
    assert coverage(30, 20, False, ratio=True) < 0.6 <= 0.88 <= coverage(30, 20, True, ratio=True)


def test_each_pair_its_own_cluster_is_the_bootstrap_over_pairs_draw_for_draw():
    n = 7
    ours = Clusters.pairs(n).weights(50, seed=3)
    theirs = np.random.default_rng(3).multinomial(n, np.full(n, 1 / n), size=50)
    np.testing.assert_array_equal(ours, theirs)
    clusters = Clusters(("a", "b", "a", "c", "b", "a", "c"), "group")
    w = clusters.weights(200, seed=0)
    # every pair of a cluster has its cluster's weight; 3 clusters drawn per resample
    assert (w[:, 0] == w[:, 2]).all() and (w[:, 0] == w[:, 5]).all() and (w[:, 1] == w[:, 4]).all()
    assert (w[:, [0, 1, 3]].sum(1) == 3).all()
    assert clusters.n_clusters == 3 and list(clusters.index) == [0, 1, 0, 2, 1, 0, 2]


def test_every_interval_method_names_the_unit_resampled():
    assert Clusters.pairs(5).method(100).startswith("expanded percentile bootstrap (Hesterberg 2015) over pairs (")
    four = Clusters(("a", "b", "c", "d") * 5, "template").method(100)
    assert four.startswith("expanded percentile (Hesterberg 2015) cluster bootstrap over templates (4 clusters")
    assert "clean row's `template`" in four and "under-covers" in four
    many = Clusters(tuple(str(i % 25) for i in range(50)), "group").method(10)
    assert "over groups (25 clusters" in many and "under-covers" not in many
    # the circuit's edge-pruned intervals resample the clusters too
    rng = np.random.default_rng(0)
    F = [rng.normal(size=40) + k for k in (0.5, 0.2, 1.0, 0.0)]
    rec = edge_pruned_record(*F, n_boot=50, ci=0.95, seed=0,
                             clusters=Clusters(tuple(str(i % 4) for i in range(40)), "template"))
    assert rec["interval_method"].startswith("expanded percentile (Hesterberg 2015) cluster bootstrap over templates")
    assert "pairs" in edge_pruned_record(*F, n_boot=50, ci=0.95, seed=0)["interval_method"]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _pair(k, **extra):
    clean, corrupted = extra.pop("clean", {}), extra.pop("corrupted", {})
    return [{"text": "a b", "answer": " T", "pair_id": k, "role": "clean", **extra, **clean},
            {"text": "a c", "answer": " S", "pair_id": k, "role": "corrupted", **extra,
             **corrupted}]


def test_load_pairs_keeps_each_pairs_cluster(tmp_path):
    path, tok = tmp_path / "pairs.jsonl", WordTokenizer()
    # the toy's pairs: the two rows of a pair name different templates; the clean row's counts
    _write(path, [r for k, t in enumerate(["x", "y", "x"]) for r in _pair(
        k, clean={"template": f"{t}_clean"}, corrupted={"template": t})])
    (batch,) = load_pairs(path, tok)
    assert batch.cluster_by == "template" and batch.clusters == ("x_clean", "y_clean", "x_clean")
    sub = batch.select([False, True, True])
    assert sub.clusters == ("y_clean", "x_clean") and sub.cluster_by == "template"
    assert [c.clusters for c in batch.chunks(2)] == [("x_clean", "y_clean"), ("x_clean",)]
    assert Clusters.of([batch]).n_clusters == 2
    # a group column wins over the template
    _write(path, [r for k in range(3) for r in _pair(k, group=k % 2, template="t")])
    (batch,) = load_pairs(path, tok)
    assert batch.cluster_by == "group" and batch.clusters == ("0", "1", "0")
    # no column: each pair is its own cluster
    _write(path, [r for k in range(3) for r in _pair(k)])
    (batch,) = load_pairs(path, tok)
    assert batch.cluster_by == "pair" and batch.clusters == ("0", "1", "2")
    # random fixture pairs carry their pair ids as clusters
    assert random_pair_batch(2, 4, [1], seed=1).clusters == ("100", "101")


@pytest.mark.parametrize("rows, match", [
    (_pair(0, group="a") + _pair(1), r"pairs\.jsonl: pair 1 group: missing on the clean row"),
    (_pair(0, clean={"group": "a"}, corrupted={"group": "b"}),
     r"pairs\.jsonl: pair 0 group: clean row 'a', corrupted row 'b'"),
])
def test_a_partial_or_inconsistent_cluster_column_is_one_input_error(tmp_path, rows, match):
    path = tmp_path / "pairs.jsonl"
    _write(path, rows)
    with pytest.raises(InputError, match=match) as err:
        load_pairs(path, WordTokenizer())
    assert "\n" not in str(err.value)


def test_faithfulness_intervals_resample_the_evaluation_pairs_clusters():
    from dataclasses import replace

    from saeflow.patch.attribution import rank_nodes, run_atp
    from saeflow.patch.faithfulness import faithfulness_curve, node_means
    from saeflow.patch.splice import prepare_saes
    from saeflow.testing.fixtures import patch_run
    from tests.patch.test_attribution import make_model, make_saes

    torch.set_num_threads(1)
    model = make_model()
    spliced = prepare_saes(model, make_saes(model))
    batch = random_pair_batch(6, 5, [2], seed=9)
    batch = replace(batch, clusters=("a", "a", "b", "b", "c", "c"), cluster_by="template")
    run = patch_run(model, spliced, [batch], n_bootstrap=30)
    order = [n for n, _ in rank_nodes(run_atp(model, spliced, [batch], True))]
    out = faithfulness_curve(run, order, [2], node_means(run, True), True)
    assert out["interval_method"].startswith("expanded percentile (Hesterberg 2015) cluster bootstrap over templates "
                                             "(3 clusters")
    assert out["resampled"] == {"unit": "templates", "cluster_by": "template",
                                "cluster_rule": out["resampled"]["cluster_rule"],
                                "n_clusters": 3, "n_pairs": 6}
