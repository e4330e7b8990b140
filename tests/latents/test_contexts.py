"""The contexts contract (saeflow.latents.contexts), checked against the dense codes: every
window's per-token activations are the stored codes, the top contexts are the strongest
prompts, quantiles partition the activating prompts, non-activating prompts never fire."""

from __future__ import annotations

import numpy as np
import pytest

from saeflow.core.errors import InputError
from saeflow.formats.activations import read_tokens_positions
from saeflow.formats.codes import read_code_columns, read_codes
from saeflow.latents.contexts import ContextSettings, Corpus, latent_contexts

from tests.latents.conftest import HOOK

CONTEXT_KEYS = {"prompt", "tokens", "activations", "max_activation"}


@pytest.fixture(scope="module")
def dense(latent_files):
    """``[n, T, d_sae]`` activations of every latent at every token (0 where off)."""
    tokens, positions = read_tokens_positions(latent_files.acts)
    codes = read_codes(latent_files.codes, HOOK).toarray().reshape(*positions.shape, -1)
    out = np.zeros((*tokens.shape, codes.shape[-1]), dtype=np.float32)
    i, p = np.nonzero(positions >= 0)
    out[i, positions[i, p]] = codes[i, p]
    return out


def _check_window(ctx, dense_latent, tokenizer, tokens):
    assert set(ctx) == CONTEXT_KEYS and len(ctx["tokens"]) == len(ctx["activations"])
    row = dense_latent[ctx["prompt"]]
    ids = tokens[ctx["prompt"]]
    # the window is a run of the prompt: find where by its decoded tokens and activations
    n = len(ctx["tokens"])
    starts = [s for s in range(len(ids) - n + 1)
              if [tokenizer.decode([int(t)]) for t in ids[s:s + n]] == ctx["tokens"]
              and np.allclose(row[s:s + n], ctx["activations"], atol=1e-5)]
    assert starts, f"context of prompt {ctx['prompt']} is not a window of its codes"
    assert ctx["max_activation"] == pytest.approx(row.max(), abs=1e-5)


def test_contexts_are_windows_of_the_stored_codes(latent_files, dense, toy_tokenizer):
    tokens, _ = read_tokens_positions(latent_files.acts)
    fires = (dense > 0).any(axis=1).sum(axis=0)  # prompts per latent
    latents = [int(np.argmax(fires)), int(np.argsort(fires)[len(fires) // 2])]
    settings = ContextSettings(top_k=4, n_quantiles=3, per_quantile=2, n_random=3, left=5, right=2)
    out = latent_contexts(latent_files.codes, latent_files.acts, toy_tokenizer, HOOK, latents,
                          settings)
    assert list(out) == latents
    for latent in latents:
        rec, d = out[latent], dense[..., latent]
        assert set(rec) == {"latent", "max_activation", "n_active_prompts", "n_active_tokens",
                            "n_tokens", "top", "quantiles", "non_activating"}
        assert rec["max_activation"] == pytest.approx(d.max(), abs=1e-5)
        assert rec["n_active_prompts"] == int((d > 0).any(axis=1).sum())
        assert rec["n_active_tokens"] == int((d > 0).sum())
        maxima = np.sort(d.max(axis=1))[::-1]
        assert [c["max_activation"] for c in rec["top"]] == pytest.approx(maxima[:4], abs=1e-5)
        for ctx in rec["top"]:
            _check_window(ctx, d, toy_tokenizer, tokens)
            assert len(ctx["tokens"]) <= 5 + 1 + 2
            assert max(ctx["activations"]) == ctx["max_activation"]
        groups = rec["quantiles"]
        assert sum(g["n_prompts"] for g in groups) == rec["n_active_prompts"]
        assert all(a["lo"] >= b["hi"] for a, b in zip(groups, groups[1:]))
        for g in groups:
            assert len(g["examples"]) == min(2, g["n_prompts"])
            for ctx in g["examples"]:
                _check_window(ctx, d, toy_tokenizer, tokens)
                assert g["lo"] <= ctx["max_activation"] <= g["hi"]
        assert len(rec["non_activating"]) == min(3, int((d.max(axis=1) == 0).sum()))
        for ctx in rec["non_activating"]:
            assert set(ctx) == CONTEXT_KEYS and d[ctx["prompt"]].max() == 0
            assert ctx["max_activation"] == 0 and not any(ctx["activations"])


def test_draws_are_seeded_per_latent_and_windows_cover_whole_prompts(latent_files, dense,
                                                                      toy_tokenizer):
    tokens, _ = read_tokens_positions(latent_files.acts)
    settings = ContextSettings(top_k=2, n_quantiles=2, per_quantile=3, n_random=2, left=99,
                               right=99, seed=5)
    one = latent_contexts(latent_files.codes, latent_files.acts, toy_tokenizer, HOOK, [8],
                          settings)
    many = latent_contexts(latent_files.codes, latent_files.acts, toy_tokenizer, HOOK,
                           [30, 8, 2], settings)
    assert one[8] == many[8]  # the other latents asked for change nothing
    for ctx in one[8]["top"] + one[8]["non_activating"]:  # the window is the whole prompt
        ids = [int(t) for t in tokens[ctx["prompt"], :len(ctx["tokens"])]]
        assert "".join(ctx["tokens"]) == toy_tokenizer.decode(ids)
        assert len(ids) == Corpus.read(latent_files.acts).lengths[ctx["prompt"]]


def test_streamed_columns_equal_the_whole_matrix(latent_files):
    whole = read_codes(latent_files.codes, HOOK)
    columns = np.array([40, 3, 77, 0])
    slot, rows, values, d_sae = read_code_columns(latent_files.codes, HOOK, columns, chunk=97)
    assert d_sae == whole.shape[1]
    for j, c in enumerate(columns):
        col = whole[:, c].tocoo()
        assert np.array_equal(rows[slot == j], np.sort(col.row))
        assert np.allclose(values[slot == j], col.data[np.argsort(col.row)])
    assert np.all(np.diff(slot) >= 0)


def test_codes_of_some_positions_only_are_refused(tmp_path, small_world, tiny_model, random_sae,
                                                  toy_tokenizer, latent_files):
    from saeflow.encode import encode_to_hdf5
    from saeflow.extract import Storage, extract_to_hdf5

    acts, codes = tmp_path / "acts.h5", tmp_path / "codes.h5"
    extract_to_hdf5(tiny_model, small_world.prompt_sets["heldout_seen"][:8], [HOOK], acts,
                    Storage(positions="final", batch_size=8))
    encode_to_hdf5(acts, codes, {HOOK: lambda: random_sae})
    with pytest.raises(InputError) as err:
        latent_contexts(codes, acts, toy_tokenizer, HOOK, [1])
    assert err.value.source == str(acts) and err.value.field == "positions"
    assert "extraction.positions: all" in str(err.value)
    with pytest.raises(InputError, match="latent 96 is outside the SAE's width 0..95"):
        latent_contexts(latent_files.codes, latent_files.acts, toy_tokenizer, HOOK, [3, 96])
