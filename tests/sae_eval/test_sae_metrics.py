"""SAEBench's core metrics (saeflow.evaluate) against a hand computation: prompt by prompt,
unpadded, softmax written out, on the tiny random model and SAE; and against sae-lens's own
``get_recons_loss`` on the same padded batch."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch

from saeflow.evaluate import evaluate_sae

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def data(toy_tokenizer, small_world):
    from saeflow.core.models import tokenize_prompt_set

    records = small_world.prompt_sets["heldout_seen"][:12]
    tokens, lengths, answers = tokenize_prompt_set(toy_tokenizer, records, "s")
    assert len(set(lengths.tolist())) > 1  # padding is exercised
    return tokens, lengths, answers


def _standard_sae(w_enc: torch.Tensor, b_enc: torch.Tensor, w_dec: torch.Tensor) -> Any:
    """A sae-lens StandardSAE on HOOK with these weights (no decoder bias)."""
    from sae_lens import StandardSAE, StandardSAEConfig

    cfg = StandardSAEConfig(d_in=w_enc.shape[0], d_sae=w_enc.shape[1])
    cfg.metadata.hook_name = HOOK
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(w_enc), sae.b_enc.copy_(b_enc), sae.W_dec.copy_(w_dec)
        sae.b_dec.zero_()
    return sae.eval()


@pytest.fixture(scope="module")
def graded_sae(tiny_model, random_sae, data):
    """random_sae's directions with each latent's bias set so it fires on a planned share of
    the evaluated tokens: 8 dead, the rest from 0.2% to 60%, so every threshold has latents
    on both sides."""
    tokens, lengths, _ = data
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(tokens, names_filter=[HOOK])
    real = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    real[:, 0] = False
    pre = cache[HOOK][real] @ random_sae.W_enc.detach()  # [N, d_sae]
    share = torch.cat([torch.zeros(8), torch.logspace(-2.7, -0.22, pre.shape[1] - 8)])
    cut = torch.stack([torch.quantile(pre[:, i], 1 - float(f)) for i, f in enumerate(share)])
    cut[:8] = pre[:, :8].max(0).values + 1.0
    return _standard_sae(random_sae.W_enc.detach(), -cut, random_sae.W_dec.detach())


@pytest.fixture(scope="module")
def evaluated(tiny_model, graded_sae, data):
    tokens, lengths, answers = data
    return evaluate_sae(tiny_model, graded_sae, tokens, lengths, answers, batch_size=5)


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, from the softmax written out."""
    p = torch.softmax(p_logits.double(), -1)
    return (p * (p.log() - torch.log_softmax(q_logits.double(), -1))).sum(-1)


def _zero(act, hook):
    return torch.zeros_like(act)


@torch.no_grad()
def _by_hand(model, sae, tokens, lengths, answers, hook_in, hook_out):
    """Every quantity, one prompt at a time (no padding), summed; then the definitions."""
    seen = {}

    def keep(act, hook):
        seen["x"] = act

    def splice(act, hook):
        return sae.decode(sae.encode(seen["x"] if hook_in != hook_out else act)).reshape(act.shape)

    sums = {k: 0.0 for k in ("ce_model", "ce_spliced", "ce_zero", "kl_sae", "kl_abl",
                             "ans_model", "ans_spliced", "acc_model", "acc_spliced")}
    counts, n_tok, n_ce, n_kl = torch.zeros(sae.cfg.d_sae), 0, 0, 0
    for t, n, a in zip(tokens, lengths.tolist(), answers, strict=True):
        seq = t[None, :n]
        clean, cache = model.run_with_cache(seq, names_filter=[hook_in])
        codes = sae.encode(cache[hook_in][0, 1:])  # BOS excluded
        counts += (codes != 0).sum(0)
        n_tok += n - 1
        splice_hooks = ([(hook_in, keep)] if hook_in != hook_out else []) + [(hook_out, splice)]
        runs = {"model": clean[0], "spliced": model.run_with_hooks(seq, fwd_hooks=splice_hooks)[0],
                "zero": model.run_with_hooks(seq, fwd_hooks=[(hook_out, _zero)])[0]}
        for name, logits in runs.items():
            sums[f"ce_{name}"] += float(torch.nn.functional.cross_entropy(
                logits[:-1], seq[0, 1:], reduction="sum"))
        n_ce += n - 1
        sums["kl_sae"] += float(_kl(runs["model"], runs["spliced"]).sum())
        sums["kl_abl"] += float(_kl(runs["model"], runs["zero"]).sum())
        n_kl += n
        for name in ("model", "spliced"):
            final = runs[name][-1]
            sums[f"ans_{name}"] += float(-torch.log_softmax(final, -1)[a])
            sums[f"acc_{name}"] += float(final.argmax() == a)
    ce = {k: sums[f"ce_{k}"] / n_ce for k in ("model", "spliced", "zero")}
    kl_sae, kl_abl = sums["kl_sae"] / n_kl, sums["kl_abl"] / n_kl
    freq = counts.numpy() / n_tok
    return {
        "counts": counts.numpy(), "n_tokens": n_tok,
        "l0": float(counts.sum()) / n_tok,
        "lm_loss_model": ce["model"], "lm_loss_spliced": ce["spliced"],
        "lm_loss_zero_ablated": ce["zero"],
        "lm_loss_recovered": (ce["zero"] - ce["spliced"]) / (ce["zero"] - ce["model"]),
        "kl_div_with_sae": kl_sae, "kl_div_with_ablation": kl_abl,
        "kl_div_score": (kl_abl - kl_sae) / kl_abl,
        "frac_dead": float((counts == 0).float().mean()),
        "freq_over_1_percent": float((freq > 0.01).mean()),
        "freq_over_10_percent": float((freq > 0.1).mean()),
        "answer_loss_model": sums["ans_model"] / len(lengths),
        "answer_loss_spliced": sums["ans_spliced"] / len(lengths),
        "answer_accuracy_model": sums["acc_model"] / len(lengths),
        "answer_accuracy_spliced": sums["acc_spliced"] / len(lengths),
    }


@pytest.fixture(scope="module")
def by_hand(tiny_model, graded_sae, data):
    return _by_hand(tiny_model, graded_sae, *data, HOOK, HOOK)


SCALARS = ["l0", "lm_loss_model", "lm_loss_spliced", "lm_loss_zero_ablated", "lm_loss_recovered",
           "kl_div_with_sae", "kl_div_with_ablation", "kl_div_score", "frac_dead",
           "freq_over_1_percent", "freq_over_10_percent", "answer_loss_model",
           "answer_loss_spliced", "answer_accuracy_model", "answer_accuracy_spliced"]


# the two scores are differences of float32 losses over a difference: near-equal runs (a
# random SAE is close to zero-ablation) amplify float32 rounding, so they get an absolute
# tolerance; a wrong formula is off by far more (test_wrong_definitions_give_other_numbers)
RATIOS = {"lm_loss_recovered", "kl_div_score"}


def _close(ours: float, ref: float, key: str) -> bool:
    return ours == pytest.approx(ref, abs=1e-4) if key in RATIOS else \
        ours == pytest.approx(ref, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("key", SCALARS)
def test_each_metric_equals_the_hand_computation(evaluated, by_hand, key):
    metrics, _ = evaluated
    assert _close(metrics[key], by_hand[key], key), (key, metrics[key], by_hand[key])


def test_firing_counts_are_over_the_evaluated_tokens(evaluated, by_hand):
    metrics, counts = evaluated
    assert counts.dtype == torch.int64 and counts.shape == (metrics["d_sae"],)
    np.testing.assert_array_equal(counts.numpy(), by_hand["counts"])
    assert metrics["n_tokens"] == by_hand["n_tokens"]
    assert metrics["l0"] == int(counts.sum()) / metrics["n_tokens"]  # mean L0 = sum of densities
    # latents on both sides of every threshold, so none of the fractions is vacuous
    assert metrics["frac_dead"] == 8 / metrics["d_sae"]
    assert 0 < metrics["freq_over_10_percent"] < metrics["freq_over_1_percent"] < 1


def test_a_perfect_sae_recovers_everything_and_a_zero_one_nothing(tiny_model, data):
    """An SAE that reconstructs exactly (latents relu(x), relu(-x)) recovers the whole loss;
    one that decodes to zero is zero-ablation: loss recovered 1 and 0, KL score 1 and 0."""
    tokens, lengths, _ = data
    eye = torch.eye(32)
    exact = _standard_sae(torch.cat([eye, -eye], 1), torch.zeros(64), torch.cat([eye, -eye]))
    nothing = _standard_sae(torch.cat([eye, -eye], 1), torch.zeros(64), torch.zeros(64, 32))
    m1, _ = evaluate_sae(tiny_model, exact, tokens, lengths, batch_size=5)
    m0, _ = evaluate_sae(tiny_model, nothing, tokens, lengths, batch_size=5)
    assert m1["lm_loss_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert m1["kl_div_score"] == pytest.approx(1.0, abs=1e-5)
    assert m1["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    assert m1["l0"] == 32 and m1["frac_dead"] == 0  # one of relu(x_j), relu(-x_j) per j
    assert m0["lm_loss_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert m0["kl_div_score"] == pytest.approx(0.0, abs=1e-6)
    assert m0["lm_loss_spliced"] == pytest.approx(m0["lm_loss_zero_ablated"], rel=1e-6)
    assert m0["lm_loss_model"] == pytest.approx(m1["lm_loss_model"], rel=1e-6)


def test_wrong_definitions_give_other_numbers(evaluated, tiny_model, graded_sae, data):
    """Plausible mistakes move the numbers by far more than the tolerance above."""
    m, counts = evaluated
    tokens, lengths, answers = data
    # the loss spliced over the zero-ablated loss is not the loss recovered
    assert not math.isclose(m["lm_loss_recovered"],
                            1 - m["lm_loss_spliced"] / m["lm_loss_zero_ablated"], rel_tol=1e-3)
    # L0 with BOS counted: the BOS row fires differently
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(tokens, names_filter=[HOOK])
        bos = (graded_sae.encode(cache[HOOK][:, 0]) != 0).sum()
    with_bos = (int(counts.sum()) + int(bos)) / (m["n_tokens"] + len(lengths))
    assert not math.isclose(m["l0"], with_bos, rel_tol=1e-3)
    # a frequency over the evaluated tokens plus padding: padding counted as non-firing tokens
    padded_n = int(lengths.max()) * len(lengths) - len(lengths)
    dense_padded = float((counts.numpy() / padded_n > 0.1).mean())
    assert dense_padded != m["freq_over_10_percent"]


def test_equal_to_sae_lens_get_recons_loss(tiny_model, graded_sae, data, evaluated):
    """sae-lens's own CE and KL of the spliced and zero-ablated model, masked to the same
    positions, give the same numbers (one padded batch of every prompt)."""
    from sae_lens.evals import get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    m, _ = evaluated
    tokens, lengths, _ = data
    width = int(lengths.max())
    with torch.no_grad():
        out = get_recons_loss(graded_sae, tiny_model, ActivationScaler(), tokens[:, :width],
                              compute_kl=True, compute_ce_loss=True)
    valid = torch.arange(width)[None, :] < lengths[:, None]
    for ours, theirs in (("lm_loss_model", "ce_loss_without_sae"),
                         ("lm_loss_spliced", "ce_loss_with_sae"),
                         ("lm_loss_zero_ablated", "ce_loss_with_ablation")):
        assert m[ours] == pytest.approx(float(out[theirs][valid[:, 1:]].mean()), rel=1e-5), ours
    for ours, theirs in (("kl_div_with_sae", "kl_div_with_sae"),
                         ("kl_div_with_ablation", "kl_div_with_ablation")):
        assert m[ours] == pytest.approx(float(out[theirs][valid].mean()), rel=1e-4), ours


def test_a_transcoder_is_zero_ablated_where_it_writes(tiny_model, data):
    """A random transcoder (layer 0's MLP input -> output): spliced and zero-ablated at its
    output hook, never at the hook it reads."""
    from sae_lens import Transcoder, TranscoderConfig
    from sae_lens.saes.sae import SAEMetadata

    hook_in, hook_out = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
    torch.manual_seed(1)
    tc = Transcoder(TranscoderConfig(d_in=32, d_out=32, d_sae=48, apply_b_dec_to_input=False,
                                     metadata=SAEMetadata(hook_name=hook_in,
                                                          hook_name_out=hook_out))).eval()
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():  # a random MLP of zero biases maps 0 to 0: zeroing its input or
        model.blocks[0].mlp.b_in.fill_(0.5)  # its output would be one number
    tokens, lengths, answers = (t[:6] for t in data)
    m, counts = evaluate_sae(model, tc, tokens, lengths, answers, batch_size=4)
    ref = _by_hand(model, tc, tokens, lengths, answers, hook_in, hook_out)
    assert m["hook_name_out"] == hook_out
    np.testing.assert_array_equal(counts.numpy(), ref["counts"])
    for key in SCALARS:
        assert _close(m[key], ref[key], key), (key, m[key], ref[key])
    # spliced and zero-ablated at the hook it reads instead: other numbers
    wrong = _by_hand(model, tc, tokens, lengths, answers, hook_in, hook_in)
    for key in ("lm_loss_spliced", "lm_loss_zero_ablated", "kl_div_with_ablation"):
        assert not math.isclose(m[key], wrong[key], rel_tol=1e-3), key


def test_kl_sum_in_chunks_equals_the_written_out_sum():
    from saeflow.evaluate import kl_sum

    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(3, 5, 11, generator=g), torch.randn(3, 5, 11, generator=g)
    mask = torch.rand(3, 5, generator=g) > 0.4
    expected = float(_kl(p[mask], q[mask]).sum())
    assert kl_sum(p, q, mask, rows=2) == pytest.approx(expected, rel=1e-6)
    assert kl_sum(p, q, mask) == pytest.approx(expected, rel=1e-6)
    assert not math.isclose(kl_sum(q, p, mask), expected, rel_tol=1e-3)  # KL is not symmetric
