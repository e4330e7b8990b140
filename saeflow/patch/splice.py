"""SAEs and transcoders spliced into the model, their latents and errors as nodes.

A *site* is keyed by the hook its SAE reads (``sae.cfg.metadata.hook_name``), as sae-lens keys
``HookedSAETransformer.acts_to_saes``. An SAE writes back where it reads: the activation ``x``
is rebuilt as ``decode(f) + e`` with ``f = encode(x)`` and ``e = x - decode(f)``. A transcoder
(sae-lens's ``Transcoder``: ``cfg.metadata.hook_name_out`` set) reads the MLP's input and
writes its output: ``y`` at the output hook is rebuilt as ``decode(f) + e`` with
``f = encode(x_in)`` and ``e = y - decode(f)``, the error of width ``d_out``. The site's
nodes are the same either way: latents ``[B, T, d_sae]`` and the error ``[B, T, d_out]``
(flat whatever the hook's shape: attention ``hook_z`` SAEs read heads x d_head as one vector).

Why we add the error term ourselves: sae-lens computes it under ``no_grad``, so a gradient
through a downstream SAE would follow that SAE's Jacobian, while exact patching recomputes the
downstream error from the new activation (the downstream SAE is then the identity). So SAEs
are spliced with ``use_error_term=False`` and ``x - decode(f)`` added at ``hook_sae_output``,
with ``f`` the SAE's own code and the latent node a copy of it: ``d out / d node`` is the
decoder, ``d out / d e = I`` and ``d out / d x = I``. A transcoder is spliced by two hooks of
our own instead of sae-lens's wrapper: the wrapper replaces the output hook point, so the
MLP's own output (which the error needs) never reaches a hook; with ours ``d out / d x_in`` is
the MLP's Jacobian. Without the error term the spliced model *is* the reconstructed model.

Here: :func:`run_spliced` (a run with node edits; :class:`RunOptions` for partial runs, the
sites' outputs, frozen sites, leaf nodes and cached keys and values), :func:`spliced_metric`
(the metric from the final position's two answer logits, :func:`answer_logit_diff`),
:func:`shared_prefix` and :func:`frozen_prefix` (a run that starts where a pair's prompts
first differ), :func:`decoder_rows` (d decode / d latent),
:func:`prepare_saes`, :func:`to_sae_transformer`, and :class:`PatchRun`, what a stage
computes on, built once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from saeflow.core.errors import InputError
from saeflow.core.hooks import PER_HEAD
from saeflow.core.transcoders import is_transcoder, output_hook
from saeflow.patch.pairs import PairBatch, PatchConfig, check_batches

Edit = Callable[[str, Tensor], Tensor]  # (site, node tensor) -> edited node tensor


@dataclass
class SparseAct:
    """One site's nodes (after feature-circuits): latents ``act [..., d_sae]`` and the SAE
    error ``res [..., d_out]`` (``None`` when the error term is left out)."""

    act: Tensor
    res: Tensor | None = None

    def __sub__(self, other: SparseAct) -> SparseAct:
        return SparseAct(self.act - other.act, None if self.res is None else self.res - other.res)

    def __mul__(self, other: SparseAct) -> SparseAct:
        return SparseAct(self.act * other.act, None if self.res is None else self.res * other.res)

    def detach(self) -> SparseAct:
        return SparseAct(self.act.detach(), None if self.res is None else self.res.detach())


def site_outputs(saes: Mapping[str, Any]) -> dict[str, str]:
    """Each site's output hook (where its reconstruction enters the model)."""
    return {h: output_hook(sae) for h, sae in saes.items()}


def to_sae_transformer(model: Any) -> Any:
    """The same weights (shared, not copied) and tokenizer as a sae-lens
    ``HookedSAETransformer``, on the model's device."""
    from sae_lens import HookedSAETransformer

    if isinstance(model, HookedSAETransformer):
        return model
    out = HookedSAETransformer(model.cfg, move_to_device=False)
    out.load_state_dict(model.state_dict(), assign=True)  # shares storage: no second copy
    out.tokenizer = model.tokenizer  # assigned: set_tokenizer would reload it from its name
    out.move_model_modules_to_device()
    return out.eval()


def prepare_saes(model: Any, saes: Sequence[Any]) -> dict[str, Any]:
    """Key SAEs by ``sae.cfg.metadata.hook_name`` (checked against the model's hooks, a
    transcoder's output hook too) and move them to the model's device."""
    out: dict[str, Any] = {}
    writes: dict[str, str] = {}
    for sae in saes:
        name = sae.cfg.metadata.hook_name
        if not name:
            raise InputError("sae", "cfg.metadata.hook_name", "not set: cannot splice the SAE")
        for hook in {name, output_hook(sae)}:
            if hook not in model.hook_dict:
                raise InputError("sae", hook, "the model has no such hook (expected e.g. "
                                 f"blocks.0.hook_resid_post; layers 0..{model.cfg.n_layers - 1})")
        if name in out:
            raise InputError("sae", name, "two SAEs for one hook")
        target = output_hook(sae)
        if target in writes or (target != name and target in out):
            raise InputError("sae", target, f"written by two sites ({writes.get(target, target)} "
                             f"and {name}): a transcoder's output hook cannot carry an SAE too")
        if name in writes and writes[name] != name:
            raise InputError("sae", name, f"written by the transcoder {writes[name]}: a "
                             "transcoder's output hook cannot carry an SAE too")
        if is_transcoder(sae):
            if PER_HEAD.match(name):
                raise InputError("sae", name, "one vector per head: a transcoder reads one "
                                 "vector per position")
            if hasattr(sae, "W_skip"):  # decode() leaves the skip path out
                raise InputError("sae", name, f"{type(sae).__name__}: skip transcoders are "
                                 "not supported (their skip path is not in decode)")
        writes[target] = name
        out[name] = sae.to(model.cfg.device)
    if not out:
        raise InputError("sae", "<saes>", "no SAEs given")
    return out


@dataclass(frozen=True)
class PatchRun:
    """What a model-running patch stage computes on, built once (:meth:`build`): the model as
    a ``HookedSAETransformer``, its SAEs keyed by site (:func:`prepare_saes`), the pairs
    (checked to run on the model), the stage's config (``max_batch`` rows per forward pass,
    the bootstrap's ``n_bootstrap``, ``ci`` and ``seed``) and the alignment :attr:`width`."""

    model: Any
    saes: Mapping[str, Any]
    batches: Sequence[PairBatch]
    cfg: PatchConfig
    n_positions: int | None = None

    @property
    def width(self) -> int:
        """The columns of right-aligned per-position arrays: ``n_positions`` (a subset of the
        pairs keeps the alignment of all of them: ``dataclasses.replace(run, batches=...,
        n_positions=run.width)``), else the longest pair's length."""
        return self.n_positions or max(b.length for b in self.batches)

    @classmethod
    def build(cls, model: Any, saes: Sequence[Any], batches: Sequence[PairBatch],
              cfg: PatchConfig) -> PatchRun:
        """Splice ``saes`` into ``model`` (sharing its weights) and check ``batches`` on it."""
        model = to_sae_transformer(model)
        spliced = prepare_saes(model, saes)
        check_batches(model, batches)
        return cls(model, spliced, tuple(batches), cfg)


@dataclass(frozen=True)
class RunOptions:
    """How much of the forward pass a spliced run makes and what it keeps, beyond the node
    edits. ``outputs``: each site's spliced output (``decode(latents) + error``, at its output
    hook) is stored there. ``start_at_layer``: the run's input is the residual
    ``[B, T, d_model]`` entering that block (TransformerLens's ``start_at_layer``); only SAEs at
    or above it should be given. ``stop_at_layer``: the residual entering that block is
    returned instead of logits. ``frozen``: sites that pass their output on detached, so no
    gradient flows back through them (the stop gradients of direct edges,
    :mod:`saeflow.patch.edges`). ``leaf_nodes`` (with the error term only): each latent node
    is a leaf, cut from the encoder, and the error is ``x - decode(f)`` with the
    reconstruction held constant, so the backward pass runs no SAE encoder and through a site
    ``d out / d x = I`` exactly (the with-error splice's own Jacobian, which the default graph
    reaches as ``J + (I - J)``); the reconstruction is decoded once. Gradients with respect
    to the nodes are unchanged (up to float rounding); what is lost is the dependence of a
    latent on anything upstream, which only direct edges (:mod:`saeflow.patch.edges`) need.
    ``past_kv_cache``: a TransformerLens key-value cache the run reads the keys and values of
    earlier positions from (and appends its own to, unless frozen); ``tokens`` are then the
    positions after the cached ones, unpadded (every position attended)."""

    outputs: dict[str, Tensor] | None = None
    frozen: Collection[str] = ()
    start_at_layer: int | None = None
    stop_at_layer: int | None = None
    leaf_nodes: bool = False
    past_kv_cache: Any = None


def run_spliced(model: Any, saes: Mapping[str, Any], tokens: Tensor, with_error: bool,
                edit_latents: Edit | None = None, edit_error: Edit | None = None,
                options: RunOptions = RunOptions()) -> tuple[Tensor, dict[str, SparseAct]]:
    """Run ``tokens [B, T]`` with every SAE spliced in; return ``logits [B, T, d_vocab]`` and
    each site's nodes (the tensors that flowed forward, after the optional edits); a partial
    run, the spliced outputs and frozen sites as ``options`` (:class:`RunOptions`) say."""
    nodes: dict[str, SparseAct] = {}
    hooks = []
    for name, sae in saes.items():
        splice = _transcoder_hooks if is_transcoder(sae) else _splice_hooks
        hooks += splice(name, sae, with_error, nodes, edit_latents, edit_error, options)
    wrapped = [sae for sae in saes.values() if not is_transcoder(sae)]
    # with a cache, a mask of ones: else TransformerLens infers one from the pad token's id
    cached = {} if options.past_kv_cache is None else {
        "past_kv_cache": options.past_kv_cache,
        "attention_mask": torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)}
    with model.saes(saes=wrapped, use_error_term=False):
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks,
                                      start_at_layer=options.start_at_layer,
                                      stop_at_layer=options.stop_at_layer, **cached)
    return logits, nodes


def shared_prefix(batch: PairBatch) -> int:
    """Positions every pair's clean and corrupted prompts share from the start (their tokens,
    so, with causal attention, every activation), at most ``T - 1``."""
    differs = (batch.clean != batch.corrupted).any(0)
    return int(differs.int().argmax()) if bool(differs.any()) else batch.length - 1


def prefix_cache(model: Any, n: int) -> Any:
    """An empty TransformerLens key-value cache for ``n`` prompts, which a run fills."""
    from transformer_lens import TransformerLensKeyValueCache

    return TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, n)


def frozen_prefix(cache: Any, length: int) -> Any:
    """The first ``length`` positions of ``cache``, detached, read-only; None without one."""
    from transformer_lens import TransformerLensKeyValueCache, TransformerLensKeyValueCacheEntry

    if cache is None:
        return None
    entries = [TransformerLensKeyValueCacheEntry(e.past_keys[:, :length].detach(),
                                                 e.past_values[:, :length].detach(), frozen=True)
               for e in cache.entries]
    return TransformerLensKeyValueCache(entries, cache.previous_attention_mask[:, :length],
                                        frozen=True)


def after_prefix(suffix: SparseAct, full: SparseAct, start: int) -> SparseAct:
    """``full``'s first ``start`` positions, then ``suffix`` (a run of the positions after)."""
    if not start:
        return suffix
    res = None if suffix.res is None else torch.cat([full.res[:, :start], suffix.res], 1)
    return SparseAct(torch.cat([full.act[:, :start], suffix.act], 1), res)


def answer_logit_diff(model: Any, resid: Tensor, clean_answer: Tensor, corrupted_answer: Tensor
                      ) -> Tensor:
    """:func:`~saeflow.patch.pairs.logit_diff` of ``model``'s logits, from ``resid [n, T,
    d_model]``, the residual leaving the last block: ``ln_final`` of the final position and the
    two answers' columns of the unembedding, soft cap included, so neither the other positions'
    logits nor TransformerLens's ``Unembed`` (a transposed copy of ``W_U`` on every call: 2.4 GB
    at gemma-2's d_vocab) are ever built."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    x = resid[:, -1:]
    if model.cfg.normalization_type is not None:
        x = model.ln_final(x)
    x = x[:, 0]  # [n, d_model]
    cols = torch.stack([clean_answer, corrupted_answer], 1).to(x.device)  # [n, 2]
    w = model.W_U.T[cols]  # [n, 2, d_model]
    logits = torch.einsum("nd,nkd->nk", x, w.to(x.dtype)) + model.b_U[cols].to(x.dtype)
    logits = apply_softcap(logits, model.cfg.output_logits_soft_cap)
    return logits[:, 0] - logits[:, 1]


def spliced_metric(model: Any, saes: Mapping[str, Any], tokens: Tensor, batch: PairBatch,
                   with_error: bool, options: RunOptions = RunOptions()
                   ) -> tuple[Tensor, dict[str, SparseAct]]:
    """The metric ``[B]`` of ``tokens [B, T]`` with the SAEs spliced in (answers from
    ``batch``: its pairs, or ``B / n`` stacked copies of them) and the sites' nodes, as
    :func:`run_spliced` with ``options``; the logits only where the
    metric reads them (:func:`answer_logit_diff`)."""
    resid, nodes = run_spliced(model, saes, tokens, with_error, options=replace(
        options, stop_at_layer=model.cfg.n_layers))
    k = tokens.shape[0] // len(batch)
    return answer_logit_diff(model, resid, batch.clean_answer.repeat(k),
                             batch.corrupted_answer.repeat(k)), nodes


def decoder_rows(sae: Any, latents: Sequence[int]) -> Tensor:
    """``[K, d_model]``: d decode / d latent for ``latents``. sae-lens decoders are affine
    (``f @ W_dec + b_dec``, any normalisation a fixed scale), so each row is
    ``decode(e_i) - decode(0)``, whatever the SAE class."""
    d_sae = sae.cfg.d_sae
    device, dtype = sae.W_dec.device, sae.W_dec.dtype
    basis = torch.zeros(len(latents), d_sae, device=device, dtype=dtype)
    basis[torch.arange(len(latents)), torch.as_tensor(list(latents), dtype=torch.long)] = 1
    zero = torch.zeros(1, d_sae, device=device, dtype=dtype)
    return (sae.decode(basis) - sae.decode(zero)).reshape(len(latents), -1)


def _latent_node(name: str, f: Tensor, edit_latents: Edit | None, leaf: bool = False
                 ) -> Tensor:
    # its own tensor, so d metric / d node holds the error term fixed; a leaf: cut from f
    node = f.detach().clone() if leaf else f.clone()
    if torch.is_grad_enabled() and not node.requires_grad:
        node.requires_grad_()  # frozen weights: still differentiate w.r.t. the nodes
    return edit_latents(name, node) if edit_latents is not None else node


def _error_node(name: str, err: Tensor, edit_error: Edit | None) -> Tensor:
    if torch.is_grad_enabled() and not err.requires_grad:
        err.requires_grad_()
    return edit_error(name, err) if edit_error is not None else err


def _splice_hooks(name: str, sae: Any, with_error: bool, nodes: dict[str, SparseAct],
                  edit_latents: Edit | None, edit_error: Edit | None,
                  options: RunOptions = RunOptions()) -> list[tuple[str, Any]]:
    """An SAE inside sae-lens's wrapper at its hook: hooks on the wrapper's own points."""
    state: dict[str, Tensor] = {}
    leaf = options.leaf_nodes and with_error

    def on_input(x: Tensor, hook: Any) -> Tensor:
        state["x"] = x
        return x

    def on_latents(f: Tensor, hook: Any) -> Tensor:
        state["f"] = f
        node = _latent_node(name, f, edit_latents, leaf)
        nodes[name] = SparseAct(node)
        return node

    def on_output(out: Tensor, hook: Any) -> Tensor:
        if with_error:
            # flat [B, T, d_in] like the SAE's input, whatever the hook's shape (hook_z's
            # [B, T, heads, d_head]), so every site's error node is one vector per position
            x = state["x"]
            if leaf:  # decode(f) is out itself unless the latents were edited
                recon = out if edit_latents is None else sae.decode(state["f"])
                err = x - recon.detach().reshape(x.shape)
            else:
                err = x - sae.decode(state["f"]).reshape(x.shape)
            err = _error_node(name, err, edit_error)
            nodes[name].res = err
            out = out + err.reshape(out.shape)
        if options.outputs is not None:
            options.outputs[name] = out
        return out.detach() if name in options.frozen else out

    return [(f"{name}.hook_sae_input", on_input), (f"{name}.hook_sae_acts_post", on_latents),
            (f"{name}.hook_sae_output", on_output)]


def _transcoder_hooks(name: str, sae: Any, with_error: bool, nodes: dict[str, SparseAct],
                      edit_latents: Edit | None, edit_error: Edit | None,
                      options: RunOptions = RunOptions()) -> list[tuple[str, Any]]:
    """A transcoder: its input read at ``name``, the MLP's output at its output hook replaced
    by ``decode(node) + (y - decode(f))``."""
    state: dict[str, Tensor] = {}
    leaf = options.leaf_nodes and with_error

    def on_input(x: Tensor, hook: Any) -> Tensor:
        state["x"] = x
        return x

    def on_output(y: Tensor, hook: Any) -> Tensor:
        if "x" not in state:
            raise InputError("sae", name, f"the transcoder's input hook did not fire before "
                             f"{hook.name} (e.g. hook_mlp_in needs use_hook_mlp_in)")
        f = sae.encode(state.pop("x").to(sae.dtype))
        node = _latent_node(name, f, edit_latents, leaf)
        nodes[name] = SparseAct(node)
        out = sae.decode(node)
        if with_error:
            # in the transcoder's precision, as an SAE's error: y comes back to rounding
            y_flat = y.reshape(*y.shape[:2], -1).to(out.dtype)
            if leaf:
                recon = out if edit_latents is None else sae.decode(f)
                err = y_flat - recon.detach()
            else:
                err = y_flat - sae.decode(f)
            err = _error_node(name, err, edit_error)
            nodes[name].res = err
            out = out + err
        out = out.to(y.dtype).reshape(y.shape)
        if options.outputs is not None:
            options.outputs[name] = out
        return out.detach() if name in options.frozen else out

    return [(name, on_input), (output_hook(sae), on_output)]
