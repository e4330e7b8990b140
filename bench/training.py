"""SAE training: training tokens/s through saeflow (:mod:`saeflow.sae.train`: its data
preparation, sae-lens's runner with saeflow's progress lines, and checkpoints every quarter of
training) over tokens/s of sae-lens's ``LanguageModelSAETrainingRunner`` alone, given the same
model, corpus and settings in a config written out here. Target >= 0.9. Two forms:

* prompt windows (saeflow's default): each record from BOS, as extraction feeds a prompt;
  sae-lens alone is handed the same token windows, already made;
* packed text (``sae.pack``): both hand sae-lens the text, which it tokenizes and packs.

Also the peak RSS of one training (prompt windows), saeflow's and sae-lens's alone, each in a
fresh process with its high-water mark reset after the model is built.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Figure, Result

TARGET = 0.9
HOOK = {"tiny": "blocks.0.hook_resid_post", "mid": "blocks.2.hook_resid_post"}


def settings(size: str) -> dict[str, Any]:
    """The ``sae`` section both sides train with."""
    from saeflow.core.config import schema_defaults

    tokens = 4096 if size == "tiny" else 49152
    return {**schema_defaults("sae"), "source": "train", "hooks": [HOOK[size]],
            "d_sae": common.D_SAE[size], "training_tokens": tokens,
            "batch_tokens": 256 if size == "tiny" else 1024, "checkpoint_tokens": tokens // 4,
            "context_size": 64, "corpus": "corpus.jsonl"}


def corpus(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in common.prompts(n)))
    return path


def through_saeflow(model: Any, sae_cfg: dict[str, Any], path: Path, out: Path) -> None:
    """What rule train_sae does once the model is loaded: prepare the data, train with
    checkpoints (a fresh checkpoint folder, so nothing is resumed)."""
    from saeflow.sae import checkpoints
    from saeflow.sae.train import Run, TrainSpec, train_sae, training_data

    shutil.rmtree(out, ignore_errors=True)
    work = out.parent / "work"
    shutil.rmtree(work, ignore_errors=True)
    checkpoints.prepare(work, "bench")
    hook = sae_cfg["hooks"][0]
    data = training_data(model, hook, str(path), sae_cfg, 0, out.parent / "cache")
    train_sae(model, hook, data, TrainSpec.from_config(sae_cfg), Run("bench", str(path)), out,
              work)


def sae_lens_alone(model: Any, sae_cfg: dict[str, Any], dataset: Any, out: Path) -> None:
    """sae-lens's runner with the same settings, configured directly: the token windows
    (``input_ids``) or the text (``text``) as its dataset, no checkpoints, no progress lines."""
    from sae_lens import (LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner,
                          LoggingConfig, StandardTrainingSAEConfig)

    shutil.rmtree(out, ignore_errors=True)
    tokenized = "input_ids" in dataset.column_names
    tok = model.tokenizer
    context = len(dataset[0]["input_ids"]) if tokenized else sae_cfg["context_size"]
    cfg = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(
            d_in=model.cfg.d_model, d_sae=sae_cfg["d_sae"], apply_b_dec_to_input=False,
            l1_coefficient=sae_cfg["l1_coefficient"], l1_warm_up_steps=sae_cfg["l1_warm_up_steps"],
            normalize_activations=sae_cfg["normalize_activations"]),
        model_name="bench", hook_name=sae_cfg["hooks"][0], dataset_path="bench",
        is_dataset_tokenized=tokenized, streaming=False, context_size=context,
        prepend_bos=not tokenized,
        exclude_special_tokens=[tok.pad_token_id, tok.bos_token_id] if tokenized else True,
        training_tokens=sae_cfg["training_tokens"],
        train_batch_size_tokens=sae_cfg["batch_tokens"],
        store_batch_size_prompts=64 if tokenized else 32,
        n_batches_in_buffer=max(8, 4 * sae_cfg["batch_tokens"] // context), lr=sae_cfg["lr"],
        device="cpu", dtype="float32", logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=0, checkpoint_path=None, output_path=str(out), n_eval_batches=0,
        verbose=False, n_batches_for_norm_estimate=20)
    LanguageModelSAETrainingRunner(cfg, override_dataset=dataset, override_model=model).run()


def _datasets(model: Any, sae_cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    import datasets

    from saeflow.sae.corpus import iter_corpus
    from saeflow.sae.data import windows_data

    windows = windows_data(model.tokenizer, iter_corpus(str(path)), sae_cfg["context_size"],
                           model.cfg.n_ctx)
    text = datasets.Dataset.from_dict({"text": [r["text"] for r in iter_corpus(str(path))]})
    return {"windows": windows.dataset, "packed": text}


def measure(size: str, n_prompts: int, repeats: int, folder: Path) -> list[Figure]:
    import torch

    model = common.model(size)
    path = corpus(folder, n_prompts)
    base = settings(size) | {"corpus": str(path)}
    data = _datasets(model, base, path)
    figures = []
    for form, extra in (("windows", {}), ("packed", {"pack": True})):
        sae_cfg = base | extra

        def ours(cfg: dict[str, Any] = sae_cfg) -> None:
            torch.manual_seed(0)
            through_saeflow(model, cfg, path, folder / "ours" / "sae")

        def theirs(cfg: dict[str, Any] = sae_cfg, dataset: Any = data[form]) -> None:
            torch.manual_seed(0)
            sae_lens_alone(model, cfg, dataset, folder / "theirs" / "sae")

        times = common.interleaved({"sae_lens": theirs, "saeflow": ours}, repeats)
        tokens = sae_cfg["training_tokens"]
        figures.append(Figure(
            f"training tokens/s through saeflow / sae-lens alone ({form})", size,
            common.paired_ratio(times["sae_lens"], times["saeflow"]), target=TARGET, op=">=",
            detail={"hook": HOOK[size], "d_in": model.cfg.d_model, "d_sae": sae_cfg["d_sae"],
                    "training_tokens": tokens, "batch_tokens": sae_cfg["batch_tokens"],
                    "checkpoints": tokens // sae_cfg["checkpoint_tokens"] - 1,
                    "tokens_per_s_sae_lens": round(tokens / common.median(times["sae_lens"])),
                    "tokens_per_s_saeflow": round(tokens / common.median(times["saeflow"])),
                    "times_s": {k: common.rounded(v) for k, v in times.items()}}))
    return figures


def memory(size: str, n_prompts: int, folder: Path) -> Figure:
    """Peak RSS during one training, each side in a fresh process (run side by side)."""
    import torch

    procs = {side: subprocess.Popen(
        [sys.executable, "-m", "bench.training", side, size, str(n_prompts),
         str(torch.get_num_threads()), str(folder / side)], cwd=common.REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"})
        for side in ("saeflow", "sae_lens")}
    peaks = {}
    for side, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"training memory child {side} failed:\n{stderr[-3000:]}")
        peaks[side] = json.loads(stdout.strip().splitlines()[-1])
    mib = 1024.0
    return Figure(
        "peak RSS of training: saeflow / sae-lens alone (windows)", size,
        peaks["saeflow"]["increment_kib"] / peaks["sae_lens"]["increment_kib"],
        detail={side: {"peak_mib": round(p["peak_kib"] / mib, 1),
                       "increment_mib": round(p["increment_kib"] / mib, 1),
                       "peak_is_training_only": p["reset"]} for side, p in peaks.items()})


def child(side: str, size: str, n_prompts: int, threads: int, folder: str) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    model = common.model(size)
    path = corpus(out, n_prompts)
    sae_cfg = settings(size) | {"corpus": str(path)}
    dataset = _datasets(model, sae_cfg, path)["windows"] if side == "sae_lens" else None
    before = common.rss_kib()
    reset = common.reset_peak_rss()
    if side == "saeflow":
        through_saeflow(model, sae_cfg, path, out / "sae")
    else:
        sae_lens_alone(model, sae_cfg, dataset, out / "sae")
    after = common.rss_kib()
    return {"peak_kib": after["VmHWM"], "increment_kib": after["VmHWM"] - before["VmRSS"],
            "reset": reset}


def run(smoke: bool = False) -> Result:
    plan = [("tiny", 256, 1)] if smoke else [("mid", 3000, 3)]
    with tempfile.TemporaryDirectory() as tmp:
        figures = []
        for size, n, repeats in plan:
            figures += measure(size, n, repeats, Path(tmp) / size)
            figures.append(memory(size, n, Path(tmp) / f"{size}-memory"))
    return Result("training", "SAE training through saeflow vs sae-lens's runner alone", figures,
                  params={"plan": [{"model": s, "n_prompts": n, "repeats": r} for s, n, r in plan],
                          "architecture": "standard", "checkpoint_every": "a quarter of training",
                          "context_size": 64},
                  notes=["saeflow's time includes tokenizing the corpus, its progress lines "
                         "(sae-lens's own metrics every ~5% of training) and its checkpoints "
                         "(sae-lens's checkpoint format, 3 written, the older pruned); sae-lens "
                         "alone is handed the prepared dataset and writes none.",
                         "peak RSS: increment of VmHWM over the RSS before training (reset "
                         "where the kernel allows), model and corpus already loaded."])


if __name__ == "__main__":
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "disabled")
    warnings.filterwarnings("ignore")
    side_, size_, n_, threads_, folder_ = sys.argv[1:6]
    print(json.dumps(child(side_, size_, int(n_), int(threads_), folder_)))
