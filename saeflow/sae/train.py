"""Train an SAE on any model with sae-lens's own runner (rule ``train_sae``).

:func:`train_sae` builds sae-lens's ``LanguageModelSAERunnerConfig`` with the training config
of ``sae.architecture`` (``standard``: L1 penalty; ``topk`` / ``batchtopk``: ``k`` latents;
``jumprelu``: L0 penalty) from the ``sae`` section, and runs ``LanguageModelSAETrainingRunner``
on what :mod:`saeflow.sae.data` prepared. The runner is sae-lens's, with three additions made
through its own seams (a subclass, no copy of its loop):

* progress: every ~5% of training one log line -- tokens, tokens/s, loss, L0, explained
  variance, dead latents -- computed by sae-lens's own ``build_train_step_log_dict``;
* checkpoints every ``sae.checkpoint_tokens`` tokens (sae-lens's checkpoint format, written by
  its trainer, only the latest kept; a SIGTERM or Ctrl-C also saves one), so a killed job
  resumes from its last checkpoint through sae-lens's ``resume_from_checkpoint``. sae-lens does
  not save its shuffle buffer, so a resumed SAE is close to, not bit-equal to, an
  uninterrupted one (tests/sae/test_resume.py states the tolerance);
* the finished SAE is written beside the rule's output and moved there whole.

A transcoder (``sae.transcoders``) is trained by :mod:`saeflow.sae.transcoder` instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from saeflow.core.errors import InputError
from saeflow.core.io import process_alive
from saeflow.sae import checkpoints
from saeflow.sae.data import TrainingData

log = logging.getLogger(__name__)
ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu")
NORM_BATCHES = 20  # batches that estimate the input norm (sae-lens's 1000 dominates short runs)


@dataclass(frozen=True)
class TrainSpec:
    """The ``sae`` section's training keys (config/README.md; defaults in the schema)."""

    architecture: str
    d_sae: int
    k: int
    l1_coefficient: float
    l0_coefficient: float
    l1_warm_up_steps: int
    normalize_activations: str
    training_tokens: int
    batch_tokens: int
    lr: float
    checkpoint_tokens: int | None

    @classmethod
    def from_config(cls, sae_cfg: dict[str, Any]) -> TrainSpec:
        """From a (validated) ``sae`` section; keys it lacks take the schema's defaults."""
        names = [f.name for f in fields(cls)]
        values = dict(sae_cfg)
        if any(name not in values for name in names):  # not validated: parse the schema
            from saeflow.core.config import schema_defaults

            values = {**schema_defaults("sae"), **values}
        return cls(**{name: values.get(name) for name in names})


@dataclass(frozen=True)
class Run:
    """Where a training runs and what it records: the model's name and the corpus (both go
    into the SAE's metadata), the seed, the device."""

    model_name: str
    dataset_path: str
    seed: int = 0
    device: str = "cpu"


def training_sae_config(spec: TrainSpec, d_in: int, hook: str) -> Any:
    """sae-lens's training config of ``spec.architecture`` for an SAE of ``hook`` (``d_in``
    wide; a ``hook_z`` SAE reads heads x d_head flat and gives it back per head)."""
    from sae_lens import (BatchTopKTrainingSAEConfig, JumpReLUTrainingSAEConfig,
                          StandardTrainingSAEConfig, TopKTrainingSAEConfig)

    common = {"d_in": d_in, "d_sae": spec.d_sae, "apply_b_dec_to_input": False,
              "reshape_activations": "hook_z" if hook.endswith("hook_z") else "none",
              "normalize_activations": spec.normalize_activations}
    if spec.architecture == "standard":
        return StandardTrainingSAEConfig(**common, l1_coefficient=spec.l1_coefficient,
                                         l1_warm_up_steps=spec.l1_warm_up_steps)
    if spec.architecture in ("topk", "batchtopk"):
        cls = TopKTrainingSAEConfig if spec.architecture == "topk" else BatchTopKTrainingSAEConfig
        return cls(**common, k=spec.k)
    if spec.architecture == "jumprelu":
        return JumpReLUTrainingSAEConfig(**common, l0_coefficient=spec.l0_coefficient,
                                         l0_warm_up_steps=spec.l1_warm_up_steps)
    raise InputError("config", "sae.architecture", f"{spec.architecture!r} is not one of "
                     f"{', '.join(ARCHITECTURES)}")


def runner_config(spec: TrainSpec, sae_config: Any, hook: str, data: TrainingData, run: Run,
                  out_dir: str | Path) -> Any:
    """sae-lens's runner config: the SAE written to ``out_dir``, no wandb, no evals, no
    checkpoints (:class:`Runner` sets them)."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    return LanguageModelSAERunnerConfig(
        sae=sae_config, model_name=run.model_name, hook_name=hook, dataset_path=run.dataset_path,
        is_dataset_tokenized=data.tokenized, streaming=False, context_size=data.context_size,
        prepend_bos=not data.tokenized and data.activations is None,
        exclude_special_tokens=data.exclude,
        use_cached_activations=data.activations is not None,
        cached_activations_path=data.activations,
        training_tokens=spec.training_tokens, train_batch_size_tokens=spec.batch_tokens,
        store_batch_size_prompts=data.store_batch_prompts,
        # sae-lens sizes its shuffle buffer as n_batches_in_buffer * context_size tokens.
        n_batches_in_buffer=max(8, 4 * spec.batch_tokens // data.context_size), lr=spec.lr,
        lr_warm_up_steps=0, device=run.device, seed=run.seed, dtype="float32",
        logger=LoggingConfig(log_to_wandb=False), n_checkpoints=0, checkpoint_path=None,
        output_path=str(out_dir), n_eval_batches=0, verbose=False,
        n_batches_for_norm_estimate=NORM_BATCHES,
    )


class Progress:
    """One log line every ``every`` steps (and the first and last): tokens, tokens/s, loss, L0,
    explained variance, dead latents, from sae-lens's own ``build_train_step_log_dict``."""

    def __init__(self, trainer: Any, total: int, every: int):
        self.trainer, self.total, self.every = trainer, total, max(1, every)
        self.start, self.first = time.perf_counter(), trainer.n_training_samples
        self.last: dict[str, float] = {}

    def __call__(self, output: Any) -> None:
        trainer = self.trainer
        step, done = trainer.n_training_steps + 1, trainer.n_training_samples
        if step % self.every and step != 1 and done < self.total:
            return
        logged = trainer.build_train_step_log_dict(output, done)
        rate = (done - self.first) / max(time.perf_counter() - self.start, 1e-9)
        self.last = {"tokens": done, "loss": logged["losses/overall_loss"],
                     "l0": logged["metrics/l0"],
                     "explained_variance": logged["metrics/explained_variance"],
                     "dead_latents": logged["sparsity/dead_features"]}
        log.info("step %d, %d/%d tokens (%.0f%%), %.0f tokens/s: loss %.5g, L0 %.1f, explained "
                 "variance %.3f, %d dead latents", step, done, self.total, 100 * done / self.total,
                 rate, self.last["loss"], self.last["l0"], self.last["explained_variance"],
                 self.last["dead_latents"])


def _runner_class() -> type:
    from sae_lens import LanguageModelSAETrainingRunner

    class Runner(LanguageModelSAETrainingRunner):
        """sae-lens's runner with saeflow's progress lines and checkpoint schedule (every
        ``checkpoint_every`` tokens after those already trained; the latest one kept)."""

        checkpoint_every: int | None = None
        progress: Progress | None = None

        def run_trainer_with_interruption_handling(self, trainer: Any) -> Any:
            total = self.cfg.training_tokens
            trainer.checkpoint_thresholds = checkpoints.thresholds(
                total, self.checkpoint_every, trainer.n_training_samples)
            self.progress = Progress(trainer, total, total // self.cfg.train_batch_size_tokens // 20)
            step = trainer.step

            def step_and_log(batch: Any) -> Any:
                output = step(batch)
                self.progress(output)
                return output

            trainer.step = step_and_log
            return super().run_trainer_with_interruption_handling(trainer)

        def save_checkpoint(self, checkpoint_path: Path | None) -> None:
            super().save_checkpoint(checkpoint_path)
            if checkpoint_path is not None:
                checkpoints.prune(Path(checkpoint_path).parent, Path(checkpoint_path))
                log.info("checkpoint %s", checkpoint_path)

    return Runner


def train_sae(model: Any, hook: str, data: TrainingData, spec: TrainSpec, run: Run,
              out_dir: str | Path, work: Path | None = None) -> dict[str, Any]:
    """Train an SAE on ``hook`` of ``model`` with sae-lens's runner over ``data``; the SAE
    (sae-lens's inference format) goes to ``out_dir``. With ``work`` (a checkpoint folder
    :func:`saeflow.sae.checkpoints.prepare` made) checkpoints go there and a complete one
    found there is resumed. Returns the last progress figures (tokens, loss, L0, explained
    variance, dead latents)."""
    from saeflow.core.models import hook_widths, require_hooks

    require_hooks(model, [hook], "sae.hooks")
    os.environ["WANDB_MODE"] = "disabled"
    cfg = runner_config(spec, training_sae_config(spec, hook_widths(model, [hook])[hook], hook),
                        hook, data, run, out_dir)
    resume = checkpoints.latest(work) if work is not None else None
    if work is not None:
        cfg.checkpoint_path = str(work)
        cfg.resume_from_checkpoint = None if resume is None else str(resume)
        log.info("resuming from checkpoint %s" if resume else "checkpoints every %s tokens in %s",
                 *((resume,) if resume else (spec.checkpoint_tokens, work)))
    with warnings.catch_warnings():  # it counts rows (windows) against tokens: always "fewer"
        warnings.filterwarnings("ignore", message="The training dataset contains fewer samples")
        runner = _runner_class()(cfg, override_dataset=data.dataset, override_model=model)
    runner.checkpoint_every = spec.checkpoint_tokens if work is not None else None
    runner.run()
    return dict(runner.progress.last) if runner.progress else {}


def publish(tmp: Path, out_dir: str | Path) -> None:
    """Move the finished SAE folder ``tmp`` onto the rule's output ``out_dir`` whole."""
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def scratch(out_dir: str | Path) -> Path:
    """A hidden folder beside ``out_dir``, ``.<name>.<pid>.tmp``, for what a job writes before
    publishing it (removed when the job ends); those of jobs killed before they could remove
    theirs (their process is gone) are removed first."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    for old in out.parent.glob(f".{out.name}.*.tmp"):
        pid = old.name[len(out.name) + 2:-len(".tmp")]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


def training_data(model: Any, hook: str, corpus: str, sae_cfg: dict[str, Any], seed: int,
                  cache: Path) -> TrainingData:
    """What the runner reads for ``hook`` (:mod:`saeflow.sae.data`): prompt windows, packed
    text, or the activations at ``sae.positions`` (cached in ``cache``). With ``sae.corpus``
    set, a corpus that gives fewer activations than ``sae.training_tokens`` is one InputError
    (the toy world trains on its own prompts, epoch after epoch)."""
    from saeflow.sae import corpus as corpora
    from saeflow.sae import data as prep

    spec, positions = TrainSpec.from_config(sae_cfg), sae_cfg.get("positions", "all")
    context, n_ctx = sae_cfg.get("context_size"), model.cfg.n_ctx
    strict = bool(sae_cfg.get("corpus"))
    if positions == "all" and context and context > n_ctx:
        raise InputError("config", "sae.context_size", f"{context} tokens, beyond the model's "
                         f"context of {n_ctx}")
    need = spec.training_tokens + (NORM_BATCHES + 8) * spec.batch_tokens if strict else None
    if positions != "all":
        import datasets

        records = corpora.read_corpus(corpus)
        acts = prep.position_activations(model, hook, records, [positions] if isinstance(
            positions, str) else positions, corpus)
        text = datasets.Dataset.from_dict({"text": [r["text"] for r in records]})
        data = prep.positions_data(acts, hook, text, context, cache, seed)
        what = f"activations at sae.positions {positions}"
    elif sae_cfg.get("pack"):
        data = prep.packed_data(model.tokenizer, corpora.texts_dataset(corpus), context, n_ctx,
                                need)
        what = "text tokens"
    else:
        data = prep.windows_data(model.tokenizer, corpora.iter_corpus(corpus), context, n_ctx,
                                 need)
        what = "tokens (BOS and padding excluded)"
    log.info("training data: %d %s, context %d", data.n_tokens, what, data.context_size)
    if strict and data.n_tokens < spec.training_tokens:
        raise InputError("config", "sae.corpus", f"{corpus!r} gives {data.n_tokens} {what}, "
                         f"fewer than sae.training_tokens ({spec.training_tokens}): give a larger "
                         "corpus or fewer training tokens")
    return data


def corpus_identity(corpus: str) -> Any:
    """What changes when the corpus does: a file's size and mtime, a folder's files', or the
    dataset name."""
    path = Path(corpus)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else (
        [path] if path.is_file() else [])
    return [corpus, *[(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]]


def train_sae_stage(bundle: Any, hook: str, corpus: str, sae_cfg: dict[str, Any], seed: int,
                    device: str, out_dir: str | Path) -> None:
    """Rule ``train_sae``: seed, load the model (``bundle``, a
    :class:`saeflow.core.bundle.ModelSAEs`), train the SAE of ``hook`` -- with sae-lens's runner
    over ``corpus`` (``sae.corpus``, or the toy world's train prompts), or a transcoder where
    ``sae.transcoders`` names the hook -- and write it in sae-lens's format to ``out_dir``
    (results/{experiment}/sae/{hook}/) with ``provenance.json``. Checkpoints, when
    ``sae.checkpoint_tokens`` is below ``sae.training_tokens``, go to
    results/{experiment}/checkpoints/sae/{hook}/ and a rerun resumes from the latest."""
    from saeflow.core.io import write_json
    from saeflow.core.runtime import resolve_device, seed_everything
    from saeflow.core.saes import load_sae_dir

    seed_everything(seed)
    device = resolve_device(device)
    model = bundle.load_model(device)
    spec = TrainSpec.from_config(sae_cfg)
    hook_out = (sae_cfg.get("transcoders") or {}).get(hook)
    work = None
    if not hook_out and checkpoints.thresholds(spec.training_tokens, spec.checkpoint_tokens, 0):
        work = checkpoints.work_folder(out_dir)
        checkpoints.prepare(work, checkpoints.fingerprint({
            "sae": sae_cfg, "model": dict(bundle.model), "hook": hook, "seed": seed,
            "corpus": corpus_identity(corpus)}))
    tmp = scratch(out_dir)
    try:
        final, run = tmp / "sae", Run(str(bundle.model.get("name")), str(corpus), seed, device)
        if hook_out:
            figures = _train_transcoder(model, (hook, hook_out), sae_cfg, run, final)
        else:
            data = training_data(model, hook, corpus, sae_cfg, seed, tmp / "activations")
            figures = train_sae(model, hook, data, spec, run, final, work)
        write_json(final / "provenance.json", {"hook_name": hook, "hook_name_out": hook_out or hook,
                                                "training": figures},
                   config={"sae": sae_cfg, "seed": seed, "model": dict(bundle.model),
                           "corpus": str(corpus)})
        load_sae_dir(final, "cpu")  # it loads back before it is published
        publish(final, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)


def _train_transcoder(model: Any, hooks: tuple[str, str], sae_cfg: dict[str, Any], run: Run,
                      out_dir: Path) -> dict[str, Any]:
    """A transcoder on the prompt windows of the corpus ``run.dataset_path``
    (:mod:`saeflow.sae.transcoder`, our own loop: sae-lens has none)."""
    from saeflow.sae.corpus import iter_corpus
    from saeflow.sae.data import window_tokens
    from saeflow.sae.transcoder import train_transcoder

    tokens, excluded, n_tokens = window_tokens(model.tokenizer, iter_corpus(run.dataset_path),
                                               sae_cfg.get("context_size"), model.cfg.n_ctx)
    train_transcoder(model, hooks, tokens, sae_cfg, excluded, run.seed, out_dir, run.model_name)
    return {"tokens_available": n_tokens}
