"""Category ablation: zero a set of SAE features and measure the model's loss.

The SAE is spliced in *with its error term*: the hook point's activation ``x`` becomes
``decode(f * keep) + (x - decode(f))`` with ``f = encode(x)``. With nothing ablated that is
``x`` again, so the baseline is the model's own loss and every change in loss is due to the
ablated features alone, not to the SAE's reconstruction error. Works with any SAE that has
``encode``/``decode`` (sae-lens ``SAE`` included) and a TransformerLens ``HookedTransformer``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from saeflow.core.errors import InputError

IGNORE = -1


@dataclass(frozen=True)
class EvalSet:
    """Token batches and which next-token predictions count.

    tokens: ``[n, T]`` long, right-padded. targets: ``[n, T]`` long, the token that position t
    should predict, or ``IGNORE`` where position t does not count.
    """

    tokens: torch.Tensor
    targets: torch.Tensor

    @property
    def n_targets(self) -> int:
        return int((self.targets != IGNORE).sum())


def next_token_eval(tokens: torch.Tensor, lengths: torch.Tensor) -> EvalSet:
    """Every next-token position of each prompt counts: ``t < lengths[i] - 1``.

    tokens: ``[n, T]``; lengths: ``[n]`` real tokens per row.
    """
    tokens = tokens.long()
    targets = torch.full_like(tokens, IGNORE)
    targets[:, :-1] = tokens[:, 1:]
    cols = torch.arange(tokens.shape[1])[None, :]
    targets[cols >= (lengths.long()[:, None] - 1)] = IGNORE
    return EvalSet(tokens, targets)


def target_eval(tokens: torch.Tensor, positions: torch.Tensor, target_tokens: torch.Tensor) -> EvalSet:
    """Only the given predictions count: position ``positions[i]`` should predict
    ``target_tokens[i]`` (e.g. the answer token after a prompt's last token).

    tokens: ``[n, T]``; positions, target_tokens: ``[n]``.
    """
    tokens = tokens.long()
    targets = torch.full_like(tokens, IGNORE)
    targets[torch.arange(len(tokens)), positions.long()] = target_tokens.long()
    return EvalSet(tokens, targets)


def hook_name_of(sae: Any, hook_name: str | None = None) -> str:
    """The hook point an SAE reads: ``hook_name`` if given, else ``sae.cfg.metadata.hook_name``."""
    name = hook_name or getattr(getattr(getattr(sae, "cfg", None), "metadata", None), "hook_name", None)
    if not name:
        raise InputError("sae", "cfg.metadata.hook_name", "SAE names no hook point; pass hook_name")
    return name


def splice_hook(sae: Any, keep: torch.Tensor | None):
    """A hook replacing ``x [..., d_in]`` by ``decode(encode(x) * keep) + error``.

    keep: ``[d_sae]`` 0/1 mask (None = keep every feature, i.e. the identity up to rounding).
    """
    def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
        codes = sae.encode(x)
        recon = sae.decode(codes)
        kept = recon if keep is None else sae.decode(codes * keep.to(codes.dtype))
        # The sum is formed in the SAE's precision and cast back, so a bf16 model with a
        # float32 SAE still gets x back (to rounding) when nothing is ablated.
        return (kept + (x - recon)).to(x.dtype)
    return hook


def _row_loss_sums(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[b]`` summed cross entropy of each row's counted positions.

    logits ``[b, T, V]``, targets ``[b, T]``."""
    per_token = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                ignore_index=IGNORE, reduction="none")
    return per_token.view(targets.shape).sum(dim=1)


def delta_covariance(row_deltas: np.ndarray, row_counts: np.ndarray) -> np.ndarray:
    """Sampling covariance ``[k, k]`` of the k mean loss increases, prompts resampled.

    row_deltas: ``[n, k]`` per-prompt summed loss increase of each ablation (over the same
    prompts as the baseline, so paired); row_counts: ``[n]`` counted positions per prompt.
    Each delta is a ratio of sums; its linearised (cluster-robust) variance treats a prompt
    as the unit, so increases measured on the same prompts get their covariance too.
    """
    n, total = len(row_counts), float(row_counts.sum())
    if n < 2:
        return np.full((row_deltas.shape[1],) * 2, np.nan)
    means = row_deltas.sum(axis=0) / total
    residuals = row_deltas - np.outer(row_counts, means)
    return residuals.T @ residuals * (n / (n - 1)) / total**2


@torch.inference_mode()
def ablation_losses(model: Any, sae: Any, eval_set: EvalSet,
                    feature_sets: Mapping[str, Sequence[int]], hook_name: str | None = None,
                    batch_size: int = 32) -> dict[str, Any]:
    """Mean loss over counted positions: the model alone, with the SAE + error term spliced in
    (``baseline_loss``), and with each named feature set zero-ablated.

    Returns ``{model_loss, baseline_loss, n_targets, n_prompts, hook_name, sets: {name:
    {n_features, loss, delta, delta_se}}, delta_covariance: {names, matrix}}`` where ``delta =
    loss - baseline_loss`` and its standard error and covariance treat prompts as the
    sampling unit (:func:`delta_covariance`).
    """
    hook = hook_name_of(sae, hook_name)
    if eval_set.n_targets == 0:
        raise InputError("eval set", "targets", "no position counts towards the loss")
    d_sae = int(sae.cfg.d_sae) if hasattr(sae, "cfg") else int(sae.W_dec.shape[0])
    device = next(model.parameters()).device
    masks: dict[str, torch.Tensor | None] = {"__model__": None, "__baseline__": None}
    for name, features in feature_sets.items():
        idx = torch.as_tensor(list(features), dtype=torch.long)
        if len(idx) and (idx.min() < 0 or idx.max() >= d_sae):
            raise InputError("feature sets", name, f"feature index out of range [0, {d_sae})")
        keep = torch.ones(d_sae, device=device)
        keep[idx.to(device)] = 0.0
        masks[name] = keep
    rows: dict[str, list[np.ndarray]] = {name: [] for name in masks}
    for start in range(0, len(eval_set.tokens), batch_size):
        tokens = eval_set.tokens[start:start + batch_size].to(device)
        targets = eval_set.targets[start:start + batch_size].to(device)
        for name, keep in masks.items():
            hooks = [] if name == "__model__" else [(hook, splice_hook(sae, keep))]
            logits = model.run_with_hooks(tokens, fwd_hooks=hooks, return_type="logits")
            rows[name].append(_row_loss_sums(logits, targets).double().cpu().numpy())
    row_loss = {name: np.concatenate(parts) for name, parts in rows.items()}
    row_counts = (eval_set.targets != IGNORE).sum(dim=1).double().numpy()
    counted = row_counts > 0
    losses = {name: float(loss.sum()) / eval_set.n_targets for name, loss in row_loss.items()}
    baseline = losses["__baseline__"]
    names = list(feature_sets)
    row_deltas = np.stack([row_loss[name] - row_loss["__baseline__"] for name in names], axis=1)
    cov = delta_covariance(row_deltas[counted], row_counts[counted])
    return {"model_loss": losses["__model__"], "baseline_loss": baseline,
            "n_targets": eval_set.n_targets, "n_prompts": int(counted.sum()), "hook_name": hook,
            "sets": {name: {"n_features": len(set(feature_sets[name])), "loss": losses[name],
                            "delta": losses[name] - baseline,
                            "delta_se": float(np.sqrt(max(cov[j, j], 0.0)))}
                     for j, name in enumerate(names)},
            "delta_covariance": {"names": names, "matrix": cov.tolist()}}


def random_matched_set(pool: Sequence[int], size: int, seed: int) -> list[int]:
    """``size`` features drawn without replacement from ``pool`` (all of it if smaller)."""
    pool = sorted(set(int(p) for p in pool))
    picked = np.random.default_rng(seed).permutation(len(pool))[:max(0, size)]
    return sorted(pool[i] for i in picked)


def category_feature_sets(predicted: Mapping[str, Sequence[int]], all_features: Sequence[int],
                          seed: int, truth: Mapping[str, Sequence[int]] | None = None,
                          other_size: int | None = None) -> dict[str, list[int]]:
    """The sets to ablate: each category as predicted, ``other`` (a random set, matched in
    size to the mean category, of features predicted in no category) and, in the toy world,
    ``truth:<category>`` and ``truth:other`` from ground-truth membership.
    """
    sets = {name: sorted(set(map(int, feats))) for name, feats in predicted.items()}
    size = other_size if other_size is not None else round(np.mean([len(s) for s in sets.values()]))
    in_any = set().union(*sets.values()) if sets else set()
    sets["other"] = random_matched_set([f for f in all_features if f not in in_any], size, seed)
    if truth is not None:
        true_any = set().union(*(set(map(int, t)) for t in truth.values()))
        for name, feats in truth.items():
            sets[f"truth:{name}"] = sorted(set(map(int, feats)))
        sets["truth:other"] = random_matched_set(
            [f for f in all_features if f not in true_any], size, seed)
    return sets


def ablate_categories(model: Any, sae: Any, eval_set: EvalSet, classified: Mapping[str, str | Path],
                      descriptions: str | Path, seed: int = 0, batch_size: int = 32,
                      truth: Mapping[str, Sequence[int]] | None = None,
                      other_size: int | None = None) -> dict[str, Any]:
    """The stage: ablate each category as classified (files from :func:`saeflow.labels.classify.classify`),
    a random matched ``other`` set and, given toy ``truth``, the true sets; returns
    :func:`ablation_losses` plus the ``feature_sets`` used."""
    from saeflow.labels.classify import related_features
    from saeflow.formats.descriptions import read_descriptions

    predicted = {name: related_features(path) for name, path in classified.items()}
    features = [r["feature_index"] for r in read_descriptions(descriptions)]
    sets = category_feature_sets(predicted, features, seed, truth, other_size)
    return {**ablation_losses(model, sae, eval_set, sets, batch_size=batch_size),
            "feature_sets": sets, "seed": seed}


def eval_set_from_h5(path: str | Path, mode: str = "answer") -> EvalSet:
    """An eval set from an activations file (``tokens``, ``lengths``, ``meta/answer_token_id``).

    ``next_token``: every next-token position counts. ``answer``: the last real token of each
    prompt (``lengths - 1``) should predict that prompt's own one-token ``answer``, which
    extraction tokenised into ``meta/answer_token_id`` (an answer of several tokens already
    stopped extraction with the prompt file's line).
    """
    from saeflow.formats.hdf5 import open_h5, read_array

    if mode not in ("answer", "next_token"):
        raise InputError("config", "labels.ablation.eval",
                         f"unknown mode {mode!r} (answer or next_token)")
    with open_h5(path) as fh:
        tokens = torch.from_numpy(read_array(fh, "tokens", path).astype(np.int64))
        lengths = torch.from_numpy(read_array(fh, "lengths", path).astype(np.int64))
        if mode == "next_token":
            return next_token_eval(tokens, lengths)
        if "meta/answer_token_id" not in fh:
            raise InputError(path, "meta/answer_token_id", "missing: eval 'answer' needs an "
                             "'answer' in every prompt of the prompt set (or use eval: next_token)")
        answers = torch.from_numpy(read_array(fh, "meta/answer_token_id", path).astype(np.int64))
    return target_eval(tokens, lengths - 1, answers)


def ablation_stage(model_cfg: Mapping[str, Any], model_dir: str | Path | None,
                   sae_cfg: Mapping[str, Any], hook_name: str, sae_dir: str | Path | None,
                   activations: str | Path, descriptions: str | Path,
                   classified: Mapping[str, str | Path], ablation: Mapping[str, Any],
                   membership: str | Path | None, out: str | Path) -> None:
    """Rule ``ablate_categories``: seed, load the model and the ``hook_name`` SAE, and write
    :func:`ablate_categories` over the eval set of ``activations`` to ``out`` (ablation.json).

    ``classified``: category -> classified/{category}.json, in config order; ``ablation``:
    ``config["labels"]["ablation"]`` ({eval, batch_size, seed, device, other_size});
    ``membership``: the toy world's truth_membership.json (its true sets are ablated too), or
    None. ``model_dir``/``sae_dir``: None for pretrained ones.
    """
    from saeflow.core.io import read_json, write_json
    from saeflow.core.models import load_model
    from saeflow.core.runtime import resolve_device, seed_everything
    from saeflow.core.saes import load_sae

    seed_everything(ablation["seed"])
    device = resolve_device(ablation["device"])
    model = load_model(model_cfg, model_dir, device)
    sae = load_sae(sae_cfg, hook_name, sae_dir, device)
    truth = read_json(membership)["members"] if membership is not None else None
    eval_set = eval_set_from_h5(activations, ablation["eval"])
    result = ablate_categories(model, sae, eval_set, dict(classified), descriptions,
                               ablation["seed"], ablation["batch_size"], truth,
                               ablation["other_size"])
    write_json(out, result, {"ablation": ablation, "hook": hook_name})
