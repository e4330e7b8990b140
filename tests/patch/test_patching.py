"""Residual-stream patching, the metric, bootstrap aggregation, pair loading and its errors."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.patching import get_act_patch_resid_pre

from saeflow.core.errors import InputError
from saeflow.patch.summary import diff_positions_for, position_check
from saeflow.core.config import schema_defaults
from saeflow.testing.fixtures import patch_config, random_pair_batch
from saeflow.patch.pairs import (PairBatch, PatchConfig, align_right, check_batches, load_pairs,
                                 logit_diff)
from saeflow.patch.resid import (bootstrap_ci, normalised_effect, read_resid, resid_patching,
                                 run_resid_patching, write_resid)

torch.set_num_threads(1)




@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_vocab=50,
                                  n_ctx=16, act_fn="gelu", seed=0)
    return HookedTransformer(cfg).eval()




def test_logit_diff_reads_final_position() -> None:
    logits = torch.zeros(2, 3, 5)
    logits[0, -1, 1], logits[0, -1, 4] = 2.0, -1.0
    logits[1, 0, 2] = 9.0  # not the final position: ignored
    logits[1, -1, 3] = 0.5
    out = logit_diff(logits, torch.tensor([1, 3]), torch.tensor([4, 2]))
    assert torch.allclose(out, torch.tensor([3.0, 0.5]))


def test_normalised_effect_maps_corrupted_to_0_and_clean_to_1() -> None:
    clean, corrupted = np.array([2.0, -1.0, 1.0]), np.array([0.0, 1.0, 1.0])
    patched = np.stack([clean, corrupted, 0.5 * (clean + corrupted)], axis=1)  # [n, 3]
    out = normalised_effect(patched, clean, corrupted)
    assert np.allclose(out[:2], [[1.0, 0.0, 0.5], [1.0, 0.0, 0.5]])
    assert np.isnan(out[2]).all()  # clean == corrupted: nothing to recover


@pytest.mark.parametrize("max_batch", [1, 5, 256])
def test_resid_patching_agrees_with_transformer_lens(model: HookedTransformer,
                                                     max_batch: int) -> None:
    batch = random_pair_batch(n=3, T=6, diff_at=[2, 4], seed=1)
    patched, clean, corrupted = resid_patching(model, batch, max_batch=max_batch)
    assert patched.shape == (3, model.cfg.n_layers, 6)
    for i in range(3):
        _, cache = model.run_with_cache(batch.clean[i:i + 1])

        def metric(logits: torch.Tensor, i: int = i) -> torch.Tensor:
            return logit_diff(logits, batch.clean_answer[i:i + 1],
                              batch.corrupted_answer[i:i + 1])[0]

        ref = get_act_patch_resid_pre(model, batch.corrupted[i:i + 1], cache, metric)
        assert torch.allclose(patched[i], ref.cpu(), atol=1e-4), (i, patched[i], ref)
        assert torch.isclose(clean[i], metric(model(batch.clean[i:i + 1])).cpu(), atol=1e-5)
        assert torch.isclose(corrupted[i], metric(model(batch.corrupted[i:i + 1])).cpu(),
                             atol=1e-5)


def test_resid_patching_respects_causality(model: HookedTransformer) -> None:
    batch = random_pair_batch(n=2, T=7, diff_at=[3], seed=2)
    patched, clean, corrupted = resid_patching(model, batch)
    effect = patched - corrupted[:, None, None]
    # Positions before the first difference hold identical activations in both runs.
    assert torch.allclose(effect[:, :, :3], torch.zeros(2, 2, 3), atol=1e-6)
    # At layer 0 (the embeddings) only the differing token's resid_pre differs: patching it
    # moves the metric, patching any other position changes nothing.
    assert (effect[:, 0, 3].abs() > 1e-4).all()
    assert torch.allclose(effect[:, 0, 4:], torch.zeros(2, 3), atol=1e-6)


def test_bootstrap_ci_is_nan_aware_and_reproducible() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(1.0, 2.0, size=(400, 2, 3))
    values[:100, 0, 0] = np.nan  # a position only the longer prompts have
    values[:, 1, 2] = np.nan  # a cell no prompt has
    mean, lo, hi = bootstrap_ci(values, n_boot=500, ci=0.95, seed=3)
    ok = ~np.isnan(mean)
    assert np.allclose(mean[ok], np.nanmean(values[:, ok], 0))
    assert np.isnan(mean[1, 2]) and np.isnan(lo[1, 2]) and np.isnan(hi[1, 2])
    assert (lo[ok] < mean[ok]).all() and (mean[ok] < hi[ok]).all()
    # The 95% interval of a mean is about 2 * 1.96 standard errors wide.
    width = (hi - lo)[0, 1]
    assert abs(width / (2 * 1.96 * 2.0 / np.sqrt(400)) - 1) < 0.2
    assert (hi - lo)[0, 0] > width  # fewer pairs at the absent-for-some position: wider
    again = bootstrap_ci(values, n_boot=500, ci=0.95, seed=3)
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip((mean, lo, hi), again))


def test_normalised_aggregate_is_a_ratio_of_means() -> None:
    # 99 pairs recover half of a gap of 2; one pair's gap is 0.001, its per-pair ratio 1000
    gap = np.r_[np.full(99, 2.0), 1e-3]
    effect = np.r_[np.full(99, 1.0), 1.0][:, None]
    effect = np.concatenate([effect, effect], axis=1)
    effect[:10, 1] = np.nan  # absent for some pairs: their gaps leave the denominator too
    mean, lo, hi = bootstrap_ci(effect, n_boot=400, ci=0.95, seed=0, denominator=gap)
    assert mean[0] == pytest.approx(100 / (198 + 1e-3))
    assert mean[1] == pytest.approx(90 / (178 + 1e-3))
    per_pair = np.mean(effect[:, 0] / gap)  # ~10.5: one near-tied pair dominates
    assert per_pair > 10 and lo[0] <= mean[0] <= hi[0] < 0.6
    assert np.isnan(bootstrap_ci(effect, 50, 0.95, 0, denominator=np.zeros(100))[0]).all()


def test_run_resid_patching_aligns_lengths_and_round_trips(model: HookedTransformer,
                                                            tmp_path) -> None:
    short, long = random_pair_batch(2, 5, [1], seed=3), random_pair_batch(3, 7, [2, 5], seed=4)
    cfg = patch_config(n_bootstrap=50)
    res = run_resid_patching(model, [short, long], cfg)
    assert res.patched.shape == (5, 2, 7)
    assert np.isnan(res.patched[:2, :, :2]).all() and not np.isnan(res.patched[:2, :, 2:]).any()
    alone = resid_patching(model, short)[0].numpy()
    assert np.allclose(res.patched[:2, :, 2:], alone, atol=1e-5)  # final tokens line up
    assert np.allclose(res.agg["effect_mean"][:, :2], np.nanmean(res.effect[2:, :, :2], 0))
    gap = res.clean - res.corrupted
    assert np.allclose(res.agg["normalised_mean"][:, :2],  # ratio of means over present pairs
                       res.effect[2:, :, :2].sum(0) / gap[2:].sum())
    path = tmp_path / "resid.h5"
    write_resid(path, res, {"patch": {"n_bootstrap": 50}})
    back = read_resid(path)
    assert np.array_equal(back.pair_ids, [300, 301, 400, 401, 402])
    assert np.allclose(back.patched, res.patched, equal_nan=True)
    with h5py.File(path) as f:
        assert json.loads(f.attrs["provenance"])["config"] == {"patch": {"n_bootstrap": 50}}
        assert json.loads(f.attrs["position_offsets"])[-1] == -1
        assert f.attrs["normalised_method"].startswith("ratio of means")
        # the pairs name no cluster: each pair is its own, and the method says so
        assert f.attrs["interval_method"].startswith("expanded percentile bootstrap (Hesterberg 2015) over pairs (")
        assert f.attrs["cluster_by"] == "pair"
        np.testing.assert_allclose(f["normalised_per_pair"][()], res.normalised, equal_nan=True)
    assert back.interval_method == res.interval_method and "50 draws" in back.interval_method
    assert back.clusters == res.clusters and back.clusters.ids == tuple(map(str, back.pair_ids))


def test_position_check_finds_where_the_effect_sits() -> None:
    lengths = np.array([4, 5] * 4)
    diffs = [[1], [3]] * 4  # in each pair's own token indices
    effect = align_right(np.zeros((8, 2, 5)), 5)
    effect[0::2, 0, 5 - 4 + 1], effect[1::2, 0, 3] = 2.0, -3.0  # layer 0: at the differences
    effect[:, 1, -1] = 1.0  # layer 1: moved to the final token
    effect[0, 0, 0] = np.nan  # absent position
    check = position_check(effect, lengths, diffs)
    assert check[0]["chance_share"] == pytest.approx((1 / 4 + 1 / 5) / 2)
    assert check[0]["share_argmax_at_diff"] == 1.0 and check[0]["points_to_diff"]
    assert check[0]["p_vs_chance"] == pytest.approx(check[0]["chance_share"] ** 8)
    assert check[0]["mass_at_diff"] == pytest.approx(1.0)
    assert check[1]["share_argmax_at_final"] == 1.0 and not check[1]["points_to_diff"]
    # two pairs on target are no evidence: chance alone puts both there 5% of the time
    assert not position_check(effect[:2], lengths[:2], diffs[:2])[0]["points_to_diff"]


def test_diff_positions_for_checks_lengths() -> None:
    truth = {"pairs": [{"pair_id": 0, "length": 5, "diff_positions": [2]},
                       {"pair_id": 1, "length": 6, "diff_positions": [3, 4]}]}
    assert diff_positions_for(truth, np.array([1, 0]), np.array([6, 5])) == [[3, 4], [2]]
    with pytest.raises(InputError, match="pair 1"):
        diff_positions_for(truth, np.array([1]), np.array([7]))


class WordTokenizer:
    """Whitespace tokenizer with the two methods pair loading uses."""

    bos_token_id = 0

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [self.vocab.setdefault(w, len(self.vocab) + 1) for w in text.split()]


def write_pairs(path, pairs: list[tuple[str, str, str, str]]) -> None:
    rows = []
    for k, (clean, corrupted, a_clean, a_corr) in enumerate(pairs):
        rows.append({"text": clean, "answer": a_clean, "pair_id": k, "role": "clean"})
        rows.append({"text": corrupted, "answer": a_corr, "pair_id": k, "role": "corrupted"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_load_pairs_groups_by_length(tmp_path) -> None:
    path = tmp_path / "pairs.jsonl"
    write_pairs(path, [("x = 1 + 'a'", "x = 1 + (", " TypeError", " SyntaxError"),
                       ("print x", "print (", " TypeError", " SyntaxError"),
                       ("y = 2 + 'b'", "y = 2 + (", " TypeError", " SyntaxError")])
    tok = WordTokenizer()
    batches = load_pairs(path, tok)
    assert [b.length for b in batches] == [3, 6]  # BOS + words, shortest group first
    assert [b.pair_ids for b in batches] == [(1,), (0, 2)]
    assert (batches[1].clean[:, 0] == 0).all()
    assert batches[1].clean_answer.tolist() == [tok.vocab["TypeError"]] * 2
    assert (batches[1].clean[:, :4] == batches[1].corrupted[:, :4]).all()


@pytest.mark.parametrize("pairs, match", [
    ([("a b c", "a b", " T", " S")], r"pairs\.jsonl: pair 1: clean is 4 tokens, corrupted 3"),
    ([("a b", "a c", " T", " Syntax Error")], r"pair 1 corrupted answer: ' Syntax Error' is 2"),
])
def test_load_pairs_rejects_bad_pairs(tmp_path, pairs, match) -> None:
    path = tmp_path / "pairs.jsonl"
    write_pairs(path, [("q r", "q s", " T", " S")] + pairs)
    with pytest.raises(InputError, match=match):
        load_pairs(path, WordTokenizer())


def test_load_pairs_rejects_misordered_rows(tmp_path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"text": "a", "answer": " T", "pair_id": 0, "role": "corrupted"})
                    + "\n" + json.dumps({"text": "b", "answer": " S", "pair_id": 0,
                                         "role": "clean"}) + "\n")
    with pytest.raises(InputError, match="pair 0: rows 2k, 2k.1 must be"):
        load_pairs(path, WordTokenizer())


def test_pair_batch_rejects_unequal_lengths_and_bad_answers() -> None:
    with pytest.raises(InputError, match=r"pairs 7..8: clean tokens \(2, 5\) vs corrupted"):
        PairBatch(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 6, dtype=torch.long),
                  torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), (7, 8))
    with pytest.raises(InputError, match="pair 3 corrupted_answer"):
        PairBatch(torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long),
                  torch.zeros(1, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long), (3,))


def test_pairs_the_model_cannot_run_are_refused(model: HookedTransformer) -> None:
    check_batches(model, [random_pair_batch(2, 16, [3], seed=0)])
    with pytest.raises(InputError, match=r"pairs 0..1: 17 tokens exceed n_ctx 16"):
        run_resid_patching(model, [random_pair_batch(2, 17, [3], seed=0)], patch_config())
    bad = random_pair_batch(2, 5, [3], seed=0)
    bad.clean_answer[1] = 50
    with pytest.raises(InputError, match="token id 50 >= d_vocab 50"):
        check_batches(model, [bad])


def test_patch_config_rejects_unknown_and_missing_keys() -> None:
    assert patch_config(top_k=3, faithfulness_n=[1, 2]).faithfulness_n == (1, 2)
    with pytest.raises(InputError, match="patch.topk"):
        PatchConfig.from_dict({"topk": 3})
    with pytest.raises(InputError, match="patch.pairs: missing"):
        PatchConfig.from_dict(schema_defaults("patch"))  # the schema gives pairs no default
