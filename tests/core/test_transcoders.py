"""Transcoders trained by the pipeline (sae-lens's class, our loop): they load back with
sae-lens, read raw activations (the training scales folded in), reconstruct the MLP's output,
train deterministically, and are checked against the config wherever they are loaded."""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAE, Transcoder
from transformer_lens import HookedTransformer, HookedTransformerConfig

from saeflow.core.errors import InputError
from saeflow.core.saes import load_sae
from saeflow.evaluate import sae_metrics
from saeflow.core.transcoders import check_site
from saeflow.sae.transcoder import collect_pairs, train_transcoder

torch.set_num_threads(1)
HOOK_IN, HOOK_OUT = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
CFG = {"d_sae": 64, "l1_coefficient": 0.5, "l1_warm_up_steps": 10,
       "normalize_activations": "expected_average_only_in", "training_tokens": 30000,
       "batch_tokens": 256, "lr": 0.003, "transcoders": {HOOK_IN: HOOK_OUT}}


@pytest.fixture(scope="module")
def model():
    return HookedTransformer(HookedTransformerConfig(
        n_layers=1, d_model=32, d_head=8, n_heads=4, d_vocab=50, n_ctx=16, act_fn="gelu",
        seed=0)).eval()


@pytest.fixture(scope="module")
def sequences():
    return torch.randint(2, 50, (300, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def trained(model, sequences, tmp_path_factory):
    out = tmp_path_factory.mktemp("tc")
    tc = train_transcoder(model, (HOOK_IN, HOOK_OUT), sequences, CFG, [0, 1], 0, out)
    return tc, out


def explained(tc, x, y):
    return 1 - float(((tc.decode(tc.encode(x)) - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def test_it_loads_back_as_a_sae_lens_transcoder_on_raw_activations(model, sequences, trained):
    tc, out = trained
    again = SAE.load_from_disk(str(out))
    assert isinstance(again, Transcoder)
    assert (again.cfg.metadata.hook_name, again.cfg.metadata.hook_name_out) == (HOOK_IN, HOOK_OUT)
    assert again.cfg.normalize_activations == "none"  # the scales are in the weights
    x, y = collect_pairs(model, HOOK_IN, HOOK_OUT, sequences, [0, 1], 10**6)
    assert x.shape == y.shape == (300 * 16, 32)
    with torch.no_grad():
        ev = explained(again, x, y)
        l0 = float((again.encode(x) > 0).float().sum(-1).mean())
        # an untrained transcoder of the same shape explains nothing of the MLP's output
        torch.manual_seed(0)
        untrained = Transcoder(again.cfg)
        assert explained(untrained, x, y) < 0
    assert ev > 0.6 and 0 < l0 < 64


def test_training_is_deterministic_and_excludes_special_tokens(model, sequences, trained,
                                                                tmp_path):
    tc, _ = trained
    same = train_transcoder(model, (HOOK_IN, HOOK_OUT), sequences, CFG, [0, 1], 0, tmp_path)
    assert torch.equal(same.W_enc, tc.W_enc) and torch.equal(same.W_dec, tc.W_dec)
    padded = sequences.clone()
    padded[:, 10:] = 0  # pad: excluded from the activations trained on
    x, _ = collect_pairs(model, HOOK_IN, HOOK_OUT, padded, [0, 1], 10**6)
    assert len(x) == 300 * 10


def test_metrics_judge_and_splice_it_where_it_writes(model, sequences, trained):
    tc, _ = trained
    lengths = torch.full((len(sequences),), 16)
    metrics = sae_metrics(model, tc, sequences, lengths)
    assert (metrics["hook_name"], metrics["hook_name_out"]) == (HOOK_IN, HOOK_OUT)
    x, y = collect_pairs(model, HOOK_IN, HOOK_OUT, sequences[:, 1:], [0, 1], 10**6)
    assert metrics["explained_variance"] > 0.6
    seen = {}

    def keep(act, hook):
        seen["x"] = act

    def splice(act, hook):
        return tc.decode(tc.encode(seen["x"]))

    with torch.no_grad():
        logits = model.run_with_hooks(sequences, fwd_hooks=[(HOOK_IN, keep), (HOOK_OUT, splice)])
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1),
                                             sequences[:, 1:].flatten())
    assert metrics["lm_loss_spliced"] == pytest.approx(float(loss), rel=1e-5)
    assert metrics["lm_loss_spliced"] != pytest.approx(metrics["lm_loss_model"], rel=1e-3)


def test_the_config_and_the_loaded_sae_must_agree(trained):
    tc, out = trained
    local = {"source": "local", "paths": {HOOK_IN: str(out)}}
    with pytest.raises(InputError, match=r"metadata.hook_name_out: a transcoder writing "
                       r"'blocks.0.hook_mlp_out', but config sae.transcoders"):
        load_sae(local, HOOK_IN, None)
    assert load_sae({**local, "transcoders": {HOOK_IN: HOOK_OUT}}, HOOK_IN, None) is not None
    with pytest.raises(InputError, match="config sae.hooks assigns this SAE to 'blocks.0.x'"):
        check_site(tc, "blocks.0.x", local, out)
