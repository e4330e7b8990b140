"""Latent contexts: for chosen latents of one SAE, the prompts where each fires most, samples
from its activation quantiles and, on request, prompts where it never fires; each a window of
tokens with the latent's activation on every token. Read from the CSR codes on disk (no forward
pass). The dashboards (:mod:`saeflow.latents.stage`) and auto-interpretation
(:mod:`saeflow.labels.autointerp`) both read them through this contract::

    latent_contexts(codes, activations, tokenizer, hook, latents, settings=None)
        -> {latent: {
              "latent": int,
              "max_activation": float,        # over the corpus (0.0: never fires)
              "n_active_prompts": int,        # prompts where it fires on some token
              "n_active_tokens": int,         # tokens where it fires
              "n_tokens": int,                # real tokens of the corpus
              "top": [context, ...],          # settings.top_k prompts, strongest first
              "quantiles": [{"quantile": q,   # 0 = the strongest group
                             "lo": float, "hi": float,   # its prompts' max_activation range
                             "n_prompts": int, "examples": [context, ...]}, ...],
              "non_activating": [context, ...]}}   # settings.n_random prompts where it is 0

    context = {"prompt": int, "tokens": [str], "activations": [float], "max_activation": float}

``codes``: a codes file (``codes/{prompt_set}.h5``); ``activations``: the same prompt set's
activations file (its ``tokens``, ``lengths`` and ``positions``); ``tokenizer``: anything with
``decode(list[int]) -> str`` (a Hugging Face tokenizer, ``model.tokenizer``); ``hook``: the SAE
site; ``latents``: latent indices (int, below ``d_sae``); ``settings``: :class:`ContextSettings`.

One context per prompt, as delphi pools each context window to its maximum
(``delphi/latents/constructors.py``, ``pool_max_activation_windows``): ``prompt`` is the row of
the prompt set, ``tokens`` a window of the prompt (``settings.left`` tokens before its
maximum, the maximum, ``settings.right`` after, clipped to the prompt; a non-activating
context's window sits around a random token), each token decoded on its own as delphi's
``batch_decode`` does, ``activations`` the latent's activation on each of those tokens (0.0
where it is off), ``max_activation`` the largest of the prompt (the earliest token on a tie).
Quantiles are delphi's (``delphi/latents/samplers.py``, ``split_quantiles``): the activating
prompts sorted by ``max_activation``, split into ``n_quantiles`` groups of equal count
(``np.array_split``; empty groups left out), ``per_quantile`` drawn at random from each (all of a
smaller group); top and quantile samples may share prompts, as there. Non-activating contexts
are delphi's ``random`` source (``random_non_activating_windows``), which its detection and
fuzzing scorers need. Draws are seeded by ``(settings.seed, latent)``, so a latent's contexts
do not depend on which other latents are asked for.

The codes must hold every real token of the prompts (``extraction.positions: all``); else an
InputError names the activations file (a per-token window needs every token's code).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saeflow.core.errors import InputError
from saeflow.formats.activations import open_activations
from saeflow.formats.codes import code_shape, read_code_columns
from saeflow.formats.hdf5 import read_array

Context = dict[str, Any]


@dataclass(frozen=True)
class ContextSettings:
    """How many contexts of each kind, and their window (config ``dashboards``)."""

    top_k: int = 20
    n_quantiles: int = 10
    per_quantile: int = 5
    n_random: int = 0
    left: int = 16
    right: int = 4
    seed: int = 0


@dataclass(frozen=True)
class Corpus:
    """A prompt set's tokens: ``tokens [n, T]``, ``lengths [n]`` and ``positions [n, P]`` (the
    token stored at each codes column), read from its activations file ``path``."""

    tokens: np.ndarray
    lengths: np.ndarray
    positions: np.ndarray
    path: str

    @classmethod
    def read(cls, path: str | Path) -> Corpus:
        """The corpus of an activations file; an InputError unless its stored positions are
        every real token of every prompt."""
        with open_activations(path) as h5:
            tokens = np.asarray(read_array(h5, "tokens", path), dtype=np.int64)
            lengths = np.asarray(read_array(h5, "lengths", path), dtype=np.int64)
            positions = np.asarray(read_array(h5, "positions", path), dtype=np.int64)
        valid = positions >= 0
        counts = valid.sum(axis=1)
        ordered = np.sort(np.where(valid, positions, np.iinfo(np.int64).max), axis=1)
        cols = np.arange(positions.shape[1])[None, :]
        in_order = np.all((cols >= counts[:, None]) | (ordered == cols), axis=1)
        covered = (counts == lengths) & in_order
        if not covered.all():
            i = int(np.flatnonzero(~covered)[0])
            raise InputError(path, "positions", f"prompt {i} has {int(counts[i])} stored positions "
                             f"for {int(lengths[i])} tokens: latent contexts need the SAE codes of "
                             "every token (extraction.positions: all)")
        return cls(tokens, lengths, positions, str(path))

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())


@dataclass(frozen=True)
class LatentActivations:
    """The non-zeros of ``latents [k]`` over a corpus: latent ``j``'s are
    ``prompt/token/value[offsets[j]:offsets[j + 1]]``, sorted by prompt then token."""

    latents: np.ndarray
    offsets: np.ndarray
    prompt: np.ndarray
    token: np.ndarray
    value: np.ndarray
    n_tokens: int

    def of(self, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Latent ``latents[j]``'s (prompt, token, value) arrays."""
        lo, hi = self.offsets[j], self.offsets[j + 1]
        return self.prompt[lo:hi], self.token[lo:hi], self.value[lo:hi]


def check_latents(latents: Sequence[int], d_sae: int, path: str | Path, field: str) -> np.ndarray:
    """``latents`` as a distinct int64 array within ``0..d_sae - 1``, else an InputError naming
    ``path`` and ``field`` (the config key or file field that asked for them)."""
    arr = np.asarray([int(x) for x in latents], dtype=np.int64)
    bad = arr[(arr < 0) | (arr >= d_sae)]
    if len(bad):
        raise InputError(path, field, f"latent {int(bad[0])} is outside the SAE's width "
                         f"0..{d_sae - 1}")
    if len(np.unique(arr)) != len(arr):
        raise InputError(path, field, "a latent is listed twice")
    return arr


def gather_latents(codes: str | Path, hook: str, latents: Sequence[int], corpus: Corpus,
                   field: str = "latents") -> LatentActivations:
    """The non-zeros of ``latents`` of ``hook`` in ``codes``, read once in slices
    (:func:`saeflow.formats.codes.read_code_columns`), placed on the corpus's tokens."""
    n, n_pos, d_sae = code_shape(codes, hook)
    if (n, n_pos) != corpus.positions.shape:
        raise InputError(codes, f"codes/{hook}", f"{n} prompts x {n_pos} positions, but "
                         f"{corpus.path} stores {corpus.positions.shape}")
    wanted = check_latents(latents, d_sae, codes, field)
    slot, rows, values, _ = read_code_columns(codes, hook, wanted)
    prompt, col = np.divmod(rows, n_pos)
    offsets = np.searchsorted(slot, np.arange(len(wanted) + 1), side="left")
    return LatentActivations(wanted, offsets, prompt, corpus.positions[prompt, col], values,
                             corpus.n_tokens)


def token_decoder(tokenizer: Any) -> Callable[[Sequence[int]], list[str]]:
    """Token ids -> one string per token, each decoded on its own and cached. A SentencePiece
    piece marked with a leading ``▁`` keeps its space (``decode`` of a single piece drops it)."""
    cache: dict[int, str] = {}
    pieces = getattr(tokenizer, "convert_ids_to_tokens", None)

    def one(t: int) -> str:
        text = tokenizer.decode([t])
        piece = pieces(t) if pieces else None
        if isinstance(piece, str) and piece.startswith("\u2581") and not text.startswith(" "):
            text = " " + text
        return text

    def decode(ids: Sequence[int]) -> list[str]:
        out = []
        for t in ids:
            t = int(t)
            if t not in cache:
                cache[t] = one(t)
            out.append(cache[t])
        return out

    return decode


def _window(corpus: Corpus, prompt: int, centre: int, settings: ContextSettings,
            entries: tuple[np.ndarray, np.ndarray], decode: Callable[[Sequence[int]], list[str]]
            ) -> Context:
    """The context of ``prompt`` around token ``centre``; ``entries``: the latent's (token,
    value) non-zeros in this prompt."""
    lo = max(0, centre - settings.left)
    hi = min(int(corpus.lengths[prompt]), centre + settings.right + 1)
    acts = np.zeros(hi - lo, dtype=np.float64)
    tokens, values = entries
    inside = (tokens >= lo) & (tokens < hi)
    acts[tokens[inside] - lo] = values[inside]
    return {"prompt": int(prompt), "tokens": decode(corpus.tokens[prompt, lo:hi]),
            "activations": [round(float(a), 6) for a in acts],
            "max_activation": round(float(values.max()), 6) if len(values) else 0.0}


def prompt_maxima(prompts: np.ndarray, tokens: np.ndarray, values: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per activating prompt of one latent (its non-zeros grouped by prompt): ``(prompt,
    token of the maximum, maximum)``, sorted by maximum descending, then prompt. The earliest
    token wins a tie."""
    if not len(prompts):
        return (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64),
                np.zeros(0, dtype=np.float32))
    starts = np.flatnonzero(np.r_[True, prompts[1:] != prompts[:-1]])
    group = np.cumsum(np.r_[True, prompts[1:] != prompts[:-1]]) - 1
    peak = np.maximum.reduceat(values, starts)
    at_peak = np.where(values == peak[group], tokens, np.iinfo(np.int64).max)
    token = np.minimum.reduceat(at_peak, starts)
    ranking = np.lexsort((prompts[starts], -peak))
    return prompts[starts][ranking], token[ranking], peak[ranking]


def contexts_of(acts: LatentActivations, j: int, corpus: Corpus, settings: ContextSettings,
                decode: Callable[[Sequence[int]], list[str]]) -> dict[str, Any]:
    """The record of latent ``acts.latents[j]`` (the module docstring's shape)."""
    latent = int(acts.latents[j])
    prompts, tokens, values = acts.of(j)
    order_prompt, order_token, order_max = prompt_maxima(prompts, tokens, values)
    bounds = np.searchsorted(prompts, np.arange(len(corpus.lengths) + 1))
    rng = np.random.default_rng([settings.seed, latent])

    def context(k: int) -> Context:
        p = int(order_prompt[k])
        window = (tokens[bounds[p]:bounds[p + 1]], values[bounds[p]:bounds[p + 1]])
        return _window(corpus, p, int(order_token[k]), settings, window, decode)

    quantiles = []
    groups = np.array_split(np.arange(len(order_prompt)), max(1, settings.n_quantiles))
    for q, group in enumerate(g for g in groups if len(g)):
        pick = np.sort(rng.choice(group, min(settings.per_quantile, len(group)), replace=False))
        quantiles.append({"quantile": q, "lo": round(float(order_max[group[-1]]), 6),
                          "hi": round(float(order_max[group[0]]), 6), "n_prompts": int(len(group)),
                          "examples": [context(int(k)) for k in pick]})
    off = np.setdiff1d(np.arange(len(corpus.lengths)), order_prompt)
    off = off[corpus.lengths[off] > 0]
    silent = np.sort(rng.choice(off, min(settings.n_random, len(off)), replace=False))
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
    return {"latent": latent,
            "max_activation": round(float(order_max[0]), 6) if len(order_max) else 0.0,
            "n_active_prompts": int(len(order_prompt)), "n_active_tokens": int(len(values)),
            "n_tokens": int(acts.n_tokens),
            "top": [context(k) for k in range(min(settings.top_k, len(order_prompt)))],
            "quantiles": quantiles,
            "non_activating": [_window(corpus, int(p), int(rng.integers(corpus.lengths[p])),
                                       settings, empty, decode) for p in silent]}


def latent_contexts(codes: str | Path, activations: str | Path, tokenizer: Any, hook: str,
                    latents: Sequence[int], settings: ContextSettings | None = None,
                    per_read: int | None = None) -> dict[int, dict[str, Any]]:
    """Top, quantile and non-activating contexts of each of ``latents`` (the module docstring
    gives the arguments and the returned shape); the codes of ``per_read`` latents at a time
    (all at once by default), the corpus read once."""
    settings = settings or ContextSettings()
    corpus = Corpus.read(activations)
    decode = token_decoder(tokenizer)
    per_read = per_read or max(len(latents), 1)
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(latents), per_read):
        acts = gather_latents(codes, hook, latents[start:start + per_read], corpus)
        out.update({int(latent): contexts_of(acts, j, corpus, settings, decode)
                    for j, latent in enumerate(acts.latents)})
    return out
