"""The toy world's SAEs are trained on the real path now (saeflow.sae.train); the default toy
DAG's numbers must not move. ``_reference`` is the toy's own trainer as it was before the move
(saeflow/toy/train_saes.py's ``train_sae``, verbatim but for its name): the real path, given the
toy's prompts, trains the identical SAE, tensor for tensor."""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file

from saeflow.core.config import schema_defaults
from saeflow.core.models import hook_widths, require_hooks, tokenize_prompt_set
from saeflow.sae.data import windows_data
from saeflow.sae.train import Run, TrainSpec, train_sae

HOOK = "blocks.0.hook_resid_post"


def _reference(model, hook_name, sequences, sae_cfg, exclude_token_ids, seed, device, out_dir):
    """saeflow.toy.train_saes.train_sae before the move (git history), unchanged."""
    require_hooks(model, [hook_name], "sae.hooks")
    os.environ["WANDB_MODE"] = "disabled"
    from datasets import Dataset
    from sae_lens import (LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner,
                          LoggingConfig, StandardTrainingSAEConfig)

    dataset = Dataset.from_dict({"input_ids": sequences.tolist()})
    runner_cfg = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(
            d_in=hook_widths(model, [hook_name])[hook_name], d_sae=sae_cfg["d_sae"],
            reshape_activations="hook_z" if hook_name.endswith("hook_z") else "none",
            l1_coefficient=sae_cfg["l1_coefficient"], l1_warm_up_steps=sae_cfg["l1_warm_up_steps"],
            apply_b_dec_to_input=False, normalize_activations=sae_cfg["normalize_activations"],
        ),
        model_name="saeflow-toy", hook_name=hook_name, dataset_path="saeflow-toy-prompts",
        is_dataset_tokenized=True, streaming=False, context_size=sequences.shape[1],
        prepend_bos=False, exclude_special_tokens=exclude_token_ids,
        training_tokens=sae_cfg["training_tokens"], train_batch_size_tokens=sae_cfg["batch_tokens"],
        store_batch_size_prompts=64,
        n_batches_in_buffer=max(8, 4 * sae_cfg["batch_tokens"] // sequences.shape[1]), lr=sae_cfg["lr"],
        lr_warm_up_steps=0, device=device, seed=seed, dtype="float32",
        logger=LoggingConfig(log_to_wandb=False), n_checkpoints=0, checkpoint_path=None,
        output_path=str(out_dir), n_eval_batches=0, verbose=False,
        n_batches_for_norm_estimate=20,
    )
    LanguageModelSAETrainingRunner(runner_cfg, override_dataset=dataset,
                                   override_model=model).run()


def test_the_real_path_trains_the_toys_sae_exactly(tiny_model, small_world, tmp_path):
    sae_cfg = {**schema_defaults("sae"), "source": "train", "hooks": [HOOK], "d_sae": 64,
               "training_tokens": 12000, "batch_tokens": 256}
    records = small_world.prompt_sets["train"]
    tok = tiny_model.tokenizer
    torch.manual_seed(0)
    _reference(tiny_model, HOOK, tokenize_prompt_set(tok, records)[0], sae_cfg,
               [tok.pad_token_id, tok.bos_token_id], 0, "cpu", tmp_path / "before")
    torch.manual_seed(0)
    data = windows_data(tok, records, sae_cfg["context_size"], tiny_model.cfg.n_ctx)
    train_sae(tiny_model, HOOK, data, TrainSpec.from_config(sae_cfg),
              Run("saeflow-toy", "saeflow-toy-prompts"), tmp_path / "after")
    before = load_file(tmp_path / "before" / "sae_weights.safetensors")
    after = load_file(tmp_path / "after" / "sae_weights.safetensors")
    assert before.keys() == after.keys() and len(before) == 4
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert (tmp_path / "before" / "cfg.json").read_text() == \
        (tmp_path / "after" / "cfg.json").read_text()
