"""Shared fixtures: a small toy world, its tokenizer, a tiny model and a random sae-lens SAE.

The model and SAE are real (TransformerLens, sae-lens) but untrained, so tests stay fast.
"""

from __future__ import annotations

import os

import pytest

from saeflow.testing.workspace import TEST_CONFIGS, run_snakemake, sync_workflow

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def small_world():
    from saeflow.toy.world import WorldConfig, build_prompt_sets

    world = build_prompt_sets(WorldConfig.defaults(n_train=400, n_heldout=60, n_pairs=12))
    return world


@pytest.fixture(scope="session")
def toy_tokenizer(small_world, tmp_path_factory):
    from saeflow.toy.world import add_token_positions, load_tokenizer, save_tokenizer, train_tokenizer

    texts = [r["text"] + r["answer"] for s in small_world.prompt_sets.values() for r in s]
    directory = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(train_tokenizer(texts, 512), directory)
    tokenizer = load_tokenizer(directory)
    for records in small_world.prompt_sets.values():
        add_token_positions(tokenizer, records)
    return tokenizer


@pytest.fixture(scope="session")
def tiny_model(toy_tokenizer, tmp_path_factory):
    """A random 2-layer toy model saved and reloaded the way the pipeline does it."""
    import torch

    from saeflow.core.models import load_toy_model
    from saeflow.toy.train import save_toy_model, toy_model_config
    from transformer_lens import HookedTransformer

    torch.set_num_threads(1)
    cfg = toy_model_config({"n_layers": 2, "d_model": 32, "n_heads": 4, "n_ctx": 64},
                           len(toy_tokenizer), seed=0)
    model = HookedTransformer(cfg, tokenizer=toy_tokenizer, default_padding_side="right")
    directory = tmp_path_factory.mktemp("model")
    save_toy_model(model, directory)
    return load_toy_model(directory)


@pytest.fixture(scope="session")
def random_sae():
    """A randomly initialised sae-lens StandardSAE on blocks.1.hook_resid_post (d_in 32)."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(0)
    cfg = StandardSAEConfig(d_in=32, d_sae=96)
    cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    sae = StandardSAE(cfg)
    with torch.no_grad():  # a negative bias makes codes sparse, as a trained SAE's are
        sae.b_enc.fill_(-0.3)
    return sae.eval()


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    """The whole toy DAG (config/test.yaml: a smaller world), run once per test session."""
    workdir = sync_workflow(tmp_path_factory.mktemp("toy_run"))
    # no gpu cap: on CPU the "gpu" steps share the 2 cores like any other (make run does the same)
    run_snakemake(workdir, "--cores", "2", "--configfile", *TEST_CONFIGS)
    return workdir


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Headless Debian chromium under Selenium, one per session; chromium and chromium-driver
    are installed with apt when missing (tests/browser/install_chromium.sh)."""
    from tests.browser.chrome import ensure_chromium, start_chrome

    reason = ensure_chromium()
    if reason:
        pytest.skip(reason)
    driver = start_chrome(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()
