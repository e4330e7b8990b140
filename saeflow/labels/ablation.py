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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from saeflow.core.errors import InputError
from saeflow.core.hooks import resume_layer

if TYPE_CHECKING:
    from saeflow.core.bundle import ModelSAEs

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


def start_layer(model: Any, hook: str) -> int | None:
    """The block a forward from ``hook``'s activation starts at, or None where it cannot: a
    hook off the residual stream (:func:`saeflow.core.hooks.resume_layer`: a residual hook's
    activation is the model's whole state there, ``blocks.L.hook_resid_pre`` feeds block L,
    ``blocks.L.hook_resid_post`` block L + 1), shortformer position embeddings (added in every
    block) or a left-padding tokenizer (TransformerLens rebuilds that attention mask only from
    tokens)."""
    layer = resume_layer(hook)
    cfg = getattr(model, "cfg", None)
    if layer is None or cfg is None or getattr(cfg, "positional_embedding_type", None) == "shortformer":
        return None
    if getattr(getattr(model, "tokenizer", None), "padding_side", "right") == "left":
        return None
    return layer


def spliced(sae: Any, codes: torch.Tensor, error: torch.Tensor, keep: torch.Tensor,
            dtype: torch.dtype) -> torch.Tensor:
    """``decode(codes * keep) + error`` for m masks at once: ``[m * b, T, d_in]``, mask-major.

    codes: ``[b, T, d_sae]``; error: ``[b, T, d_in]`` (``x - decode(codes)``); keep: ``[m, d_sae]``.
    """
    m = keep.shape[0]
    kept = sae.decode((codes[None] * keep.to(codes.dtype)[:, None, None, :]).flatten(0, 1))
    # The sum is formed in the SAE's precision and cast back, so a bf16 model with a
    # float32 SAE still gets x back (to rounding) when nothing is ablated.
    return (kept + error.repeat(m, *([1] * (error.ndim - 1)))).to(dtype)


def _downstream(model: Any, hook: str, start: int | None, tokens: torch.Tensor,
                acts: torch.Tensor) -> torch.Tensor:
    """Logits ``[m * b, T, V]`` with ``acts`` (``[m * b, T, d]``) in place of ``hook``'s
    activation: from the hook's layer on where :func:`start_layer` allows, else a full
    forward of the repeated ``tokens`` (``[b, T]``) whose hook returns ``acts``."""
    if start is not None:
        return model(acts, start_at_layer=start, return_type="logits")
    rows = tokens.repeat(acts.shape[0] // tokens.shape[0], 1)
    return model.run_with_hooks(rows, fwd_hooks=[(hook, lambda x, hook: acts)], return_type="logits")


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
                    batch_size: int = 32, sets_per_pass: int = 1) -> dict[str, Any]:
    """Mean loss over counted positions: the model alone, with the SAE + error term spliced in
    (``baseline_loss``), and with each named feature set zero-ablated.

    Each prompt batch runs the model once up to the hook and encodes there once; the
    ablations then run from the hook on, ``sets_per_pass`` masks stacked per forward (many
    sets cost ``len(sets) / sets_per_pass`` downstream passes of ``sets_per_pass * batch_size``
    rows). Returns ``{model_loss, baseline_loss, n_targets, n_prompts, hook_name, sets: {name:
    {n_features, loss, delta, delta_se}}, delta_covariance: {names, matrix}}`` where ``delta =
    loss - baseline_loss`` and its standard error and covariance treat prompts as the
    sampling unit (:func:`delta_covariance`).
    """
    hook = hook_name_of(sae, hook_name)
    # a transcoder reads ``hook`` (the MLP's input) and is spliced where it writes
    out = (sae.cfg.metadata.hook_name_out if hasattr(sae, "cfg") else None) or hook
    if eval_set.n_targets == 0:
        raise InputError("eval set", "targets", "no position counts towards the loss")
    d_sae = int(sae.cfg.d_sae) if hasattr(sae, "cfg") else int(sae.W_dec.shape[0])
    device = next(model.parameters()).device
    names = list(feature_sets)
    keep = torch.ones(len(names) + 1, d_sae, device=device)  # row 0: the baseline, nothing ablated
    for j, name in enumerate(names, 1):
        idx = torch.as_tensor(list(feature_sets[name]), dtype=torch.long)
        if len(idx) and (idx.min() < 0 or idx.max() >= d_sae):
            raise InputError("feature sets", name, f"feature index out of range [0, {d_sae})")
        keep[j, idx.to(device)] = 0.0
    start = start_layer(model, out)
    # The model is causal, so positions after a row's last counted one change nothing: batches
    # of prompts of similar length (sorted) are cut there, which saves the padding's compute.
    counted_at = eval_set.targets != IGNORE
    ends = (counted_at * torch.arange(1, counted_at.shape[1] + 1)).max(dim=1).values
    order = torch.argsort(ends, stable=True)
    row_model = np.zeros(len(order))
    row_sets = np.zeros((len(keep), len(order)))  # baseline, then each set; prompts in order
    for first in range(0, len(order), batch_size):
        rows = order[first:first + batch_size]
        width = max(1, int(ends[rows].max()))
        tokens = eval_set.tokens[rows, :width].to(device)
        targets = eval_set.targets[rows, :width].to(device)
        logits, cache = model.run_with_cache(tokens, names_filter=[hook, out],
                                             return_type="logits")
        row_model[rows.numpy()] = _row_loss_sums(logits, targets).double().cpu().numpy()
        x, y = cache[hook], cache[out]
        codes = sae.encode(x)
        error = y - sae.decode(codes).reshape(y.shape)
        for j in range(0, len(keep), max(1, sets_per_pass)):
            masks = keep[j:j + max(1, sets_per_pass)]
            logits = _downstream(model, out, start, tokens, spliced(sae, codes, error, masks, y.dtype))
            losses = _row_loss_sums(logits, targets.repeat(len(masks), 1)).view(len(masks), -1)
            row_sets[j:j + len(masks), rows.numpy()] = losses.double().cpu().numpy()
    row_counts = (eval_set.targets != IGNORE).sum(dim=1).double().numpy()
    counted = row_counts > 0
    losses = row_sets.sum(axis=1) / eval_set.n_targets
    baseline = float(losses[0])
    row_deltas = (row_sets[1:] - row_sets[0]).T
    cov = delta_covariance(row_deltas[counted], row_counts[counted])
    return {"model_loss": float(row_model.sum()) / eval_set.n_targets, "baseline_loss": baseline,
            "n_targets": eval_set.n_targets, "n_prompts": int(counted.sum()), "hook_name": hook,
            "sets": {name: {"n_features": len(set(feature_sets[name])), "loss": float(losses[j + 1]),
                            "delta": float(losses[j + 1]) - baseline,
                            "delta_se": float(np.sqrt(max(cov[j, j], 0.0)))}
                     for j, name in enumerate(names)},
            "delta_covariance": {"names": names, "matrix": cov.tolist()}}


def random_matched_set(pool: Sequence[int], size: int, seed: int) -> list[int]:
    """``size`` features drawn without replacement from ``pool`` (all of it if smaller)."""
    pool = sorted(set(int(p) for p in pool))
    picked = np.random.default_rng(seed).permutation(len(pool))[:max(0, size)]
    return sorted(pool[i] for i in picked)


def draw_name(name: str, i: int) -> str:
    """The key of draw ``i`` of a random set measured several times (:func:`pool_draws`)."""
    return f"{name}@{i}"


def category_feature_sets(predicted: Mapping[str, Sequence[int]], all_features: Sequence[int],
                          seed: int, truth: Mapping[str, Sequence[int]] | None = None,
                          other_size: int | None = None, other_draws: int = 1) -> dict[str, list[int]]:
    """The sets to ablate: each category as predicted, ``other`` (a random set, matched in
    size to the mean category, of features predicted in no category) and, in the toy world,
    ``truth:<category>`` and ``truth:other`` from ground-truth membership.

    ``other_draws`` > 1: each random set is drawn that many times (seeds ``seed + i``, keys
    ``other@i``), for :func:`pool_draws` to average; one draw of a few features from a pool of
    very unequal features (many all but dead, a few strong) is a noisy stand-in for the pool.
    """
    sets = {name: sorted(set(map(int, feats))) for name, feats in predicted.items()}
    size = other_size if other_size is not None else round(np.mean([len(s) for s in sets.values()]))

    def draws(name: str, pool: list[int]) -> dict[str, list[int]]:
        if other_draws <= 1:
            return {name: random_matched_set(pool, size, seed)}
        return {draw_name(name, i): random_matched_set(pool, size, seed + i) for i in range(other_draws)}

    in_any = set().union(*sets.values()) if sets else set()
    sets.update(draws("other", [f for f in all_features if f not in in_any]))
    if truth is not None:
        true_any = set().union(*(set(map(int, t)) for t in truth.values()))
        for name, feats in truth.items():
            sets[f"truth:{name}"] = sorted(set(map(int, feats)))
        sets.update(draws("truth:other", [f for f in all_features if f not in true_any]))
    return sets


def pool_draws(result: Mapping[str, Any], name: str) -> dict[str, Any]:
    """:func:`ablation_losses` output with the draws ``name@0..`` of one random set (same
    pool, same size) replaced by ``name``: their mean increase, and a variance that adds the
    spread between draws (which features were drawn) to the prompts' sampling noise.

    The covariance of the mean with every other set is the mean of the draws' covariances;
    the spread between draws also holds part of their measurement noise, counted twice, so
    the pooled variance errs on the wide side. No draws of ``name``: ``result`` unchanged.
    """
    names = list(result["delta_covariance"]["names"])
    drawn = [n for n in names if n.startswith(f"{name}@")]
    if not drawn:
        return dict(result)
    kept = [n for n in names if n not in drawn]
    combine = np.zeros((len(kept) + 1, len(names)))  # rows: kept sets, then the pooled mean
    for i, n in enumerate(kept):
        combine[i, names.index(n)] = 1.0
    combine[-1, [names.index(n) for n in drawn]] = 1.0 / len(drawn)
    cov = combine @ np.asarray(result["delta_covariance"]["matrix"], dtype=float) @ combine.T
    deltas = np.array([result["sets"][n]["delta"] for n in drawn])
    between = float(deltas.var(ddof=1)) / len(deltas) if len(deltas) > 1 else 0.0
    cov[-1, -1] += between
    sets = {n: result["sets"][n] for n in kept}
    delta = float(deltas.mean())
    sets[name] = {"n_features": round(np.mean([result["sets"][n]["n_features"] for n in drawn])),
                  "loss": result["baseline_loss"] + delta, "delta": delta,
                  "delta_se": float(np.sqrt(max(cov[-1, -1], 0.0))),
                  "draws": {"n": len(drawn), "deltas": deltas.tolist(),
                            "between_se": float(np.sqrt(between))}}
    return {**result, "sets": sets, "delta_covariance": {"names": [*kept, name], "matrix": cov.tolist()}}


@dataclass(frozen=True)
class AblationSettings:
    """``labels.ablation``, typed (keys, defaults and meaning: the schema,
    workflow/schemas/config.schema.yaml). ``eval``: which predictions count
    (:func:`eval_set_from_h5`); ``seed``: of the random ``other`` sets; ``other_size``: their
    size (None: the categories' mean); ``other_draws``: how many are drawn and pooled."""

    eval: str
    batch_size: int
    seed: int
    device: str
    other_size: int | None
    other_draws: int

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, source: str = "config") -> AblationSettings:
        """From ``labels.ablation`` as validated; an unknown or missing key is an InputError."""
        from saeflow.core.config import strict_fields

        return cls(**strict_fields(cls, values, "labels.ablation", source))


def ablate_categories(model: Any, sae: Any, eval_set: EvalSet, classified: Mapping[str, str | Path],
                      descriptions: str | Path, settings: AblationSettings,
                      truth: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """The stage: ablate each category as classified (files from :func:`saeflow.labels.classify.classify`),
    a random matched ``other`` set (``settings.other_draws`` draws, pooled) and, given toy
    ``truth``, the true sets; returns :func:`ablation_losses` plus the ``feature_sets`` used."""
    from saeflow.labels.classify import related_features
    from saeflow.formats.descriptions import read_descriptions

    predicted = {name: related_features(path) for name, path in classified.items()}
    features = [r["feature_index"] for r in read_descriptions(descriptions)]
    sets = category_feature_sets(predicted, features, settings.seed, truth, settings.other_size,
                                 settings.other_draws)
    result = ablation_losses(model, sae, eval_set, sets, batch_size=settings.batch_size)
    result = pool_draws(pool_draws(result, "other"), "truth:other")
    return {**result, "feature_sets": sets, "seed": settings.seed}


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
        from saeflow.formats.activations import require_stored_answers

        require_stored_answers(fh, path, "labels.ablation.eval 'answer' (or use eval: "
                               "next_token)")
        answers = torch.from_numpy(read_array(fh, "meta/answer_token_id", path).astype(np.int64))
    return target_eval(tokens, lengths - 1, answers)


def ablate_categories_stage(models: ModelSAEs, activations: str | Path, descriptions: str | Path,
                            classified: Mapping[str, str | Path], ablation: Mapping[str, Any],
                            membership: str | Path | None, out: str | Path) -> None:
    """Rule ``ablate_categories``: seed, load the model and the SAE of the labelled hook
    (``models``, one hook), and write :func:`ablate_categories` over the eval set of
    ``activations`` to ``out`` (ablation.json).

    ``classified``: category -> classified/{category}.json, in config order; ``ablation``:
    ``config["labels"]["ablation"]`` (:class:`AblationSettings`); ``membership``: the toy
    world's truth_membership.json (its true sets are ablated too), or None.
    """
    from saeflow.core.io import read_json, write_json
    from saeflow.core.runtime import resolve_device, seed_everything

    settings = AblationSettings.from_dict(ablation)
    seed_everything(settings.seed)
    device = resolve_device(settings.device)
    model, (sae,) = models.load(device)
    truth = read_json(membership)["members"] if membership is not None else None
    eval_set = eval_set_from_h5(activations, settings.eval)
    result = ablate_categories(model, sae, eval_set, dict(classified), descriptions, settings, truth)
    write_json(out, result, {"ablation": ablation, "hook": models.hooks[0]})
