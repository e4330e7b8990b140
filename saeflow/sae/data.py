"""What sae-lens's runner reads when saeflow trains an SAE, in three forms (``sae.positions``,
``sae.pack``):

* **prompt windows** (``positions: all``, the default): every record as extraction feeds a
  prompt (``[BOS] + tokens(text)``), a record longer than the context cut into windows each led
  by BOS, right-padded into a tokenized dataset; pad and BOS are excluded from training, so the
  SAE sees every real token of the corpus in the context a study's prompts give it;
* **packed text** (``pack: true``): the text handed to sae-lens, which tokenizes it and packs
  records into windows of ``context_size`` tokens (BOS first, BOS between records) -- sae-lens's
  own way, for a corpus of long documents; its special tokens are excluded;
* **positions** (a list, the position grammar of extraction: ``final``, offsets, ``pos_<name>``
  fields of each record): the model runs over each record, the activations at those positions
  are written as a sae-lens cached-activations dataset, and the runner trains on it.

Each form counts the activations one pass gives, so a corpus too small for
``sae.training_tokens`` is one line before training starts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from saeflow.core.errors import InputError
from saeflow.core.io import Records, line_of
from saeflow.core.models import pad_batch
from saeflow.core.prompts import encode_prompts

log = logging.getLogger(__name__)
PACKED_CONTEXT = 128  # sae-lens's default context size, for pack: true without context_size


@dataclass(frozen=True)
class TrainingData:
    """What the runner reads: ``dataset`` (its ``override_dataset``: token windows or text),
    ``context_size`` (tokens a window; activations a row of the cache), ``exclude`` (token ids
    left out of training, or True: the tokenizer's special tokens), ``n_tokens`` (activations
    one pass over the data gives), ``activations`` (a cached-activations folder, positions
    only), ``store_batch_prompts`` (windows or cache rows a batch of the runner)."""

    dataset: Any
    context_size: int
    exclude: list[int] | bool
    n_tokens: int
    activations: str | None = None
    store_batch_prompts: int = 64

    @property
    def tokenized(self) -> bool:
        return "input_ids" in self.dataset.column_names


def special_ids(tokenizer: Any) -> tuple[int, list[int]]:
    """``(pad id, ids excluded from training)``: pad is the tokenizer's pad token, else its EOS,
    else BOS (never an ordinary token); pad and BOS are excluded."""
    pad = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id,
                           tokenizer.bos_token_id) if t is not None)
    return pad, [pad, tokenizer.bos_token_id]


def prompt_windows(tokenizer: Any, texts: Sequence[str], context_size: int | None,
                   n_ctx: int) -> list[list[int]]:
    """Each text as extraction feeds it (``[BOS] + tokens``), cut into windows of at most
    ``context_size`` tokens (None: the longest record), at most ``n_ctx``, each led by BOS."""
    sequences = encode_prompts(tokenizer, list(texts))
    width = min(context_size or max(len(s) for s in sequences), n_ctx)
    bos, out = tokenizer.bos_token_id, []
    for seq in sequences:
        body = seq[1:]
        out += [[bos, *body[i:i + width - 1]] for i in range(0, max(len(body), 1), width - 1)]
    return out


def window_tokens(tokenizer: Any, records: Iterable[dict[str, Any]], context_size: int | None,
                  n_ctx: int, need: int | None = None) -> tuple[torch.Tensor, list[int], int]:
    """Prompt windows of ``records``, right-padded: ``tokens [n, context]``, the ids excluded
    from training (pad, BOS) and the trainable tokens they hold. With ``need``, records are
    read only until their windows hold that many (a large corpus is not tokenized beyond what
    training reads)."""
    pad, excluded = special_ids(tokenizer)
    windows, n_tokens, chunk = [], 0, []
    for record in records:
        chunk.append(record["text"])
        if len(chunk) == 1024:
            n_tokens += _add_windows(windows, tokenizer, chunk, context_size, n_ctx, excluded)
            chunk = []
            if need is not None and n_tokens >= need:
                break
    if chunk:
        n_tokens += _add_windows(windows, tokenizer, chunk, context_size, n_ctx, excluded)
    tokens, _ = pad_batch(windows, pad)
    return tokens, excluded, n_tokens


def windows_data(tokenizer: Any, records: Iterable[dict[str, Any]], context_size: int | None,
                 n_ctx: int, need: int | None = None) -> TrainingData:
    """:func:`window_tokens` as the tokenized dataset the runner reads."""
    import datasets

    tokens, excluded, n_tokens = window_tokens(tokenizer, records, context_size, n_ctx, need)
    dataset = datasets.Dataset.from_dict({"input_ids": tokens.tolist()})
    return TrainingData(dataset, tokens.shape[1], excluded, n_tokens)


def _add_windows(windows: list[list[int]], tokenizer: Any, texts: list[str],
                 context_size: int | None, n_ctx: int, excluded: list[int]) -> int:
    new = prompt_windows(tokenizer, texts, context_size, n_ctx)
    windows += new
    banned = set(excluded)
    return sum(1 for w in new for t in w if t not in banned)


def packed_data(tokenizer: Any, dataset: Any, context_size: int | None, n_ctx: int,
                need: int | None = None) -> TrainingData:
    """``dataset`` (a ``text`` column) for sae-lens to tokenize and pack; its text tokens are
    counted (up to ``need``)."""
    n_tokens = 0
    for batch in dataset.select_columns(["text"]).iter(batch_size=1024):
        ids = tokenizer(batch["text"], add_special_tokens=False, return_attention_mask=False)
        n_tokens += sum(len(s) for s in ids["input_ids"])
        if need is not None and n_tokens >= need:
            break
    width = min(context_size or PACKED_CONTEXT, n_ctx)
    return TrainingData(dataset, width, True, n_tokens, store_batch_prompts=32)


@torch.no_grad()
def position_activations(model: Any, hook: str, records: Records, positions: Sequence[Any],
                         source: str, batch_size: int = 32) -> torch.Tensor:
    """Activations ``[N, d]`` (float32; a per-head hook flattened) of ``hook`` at ``positions``
    (the position grammar of extraction) of every record, record by record in order; a
    position absent by design (``pos_x: null``) gives no row, one outside a prompt is an error
    naming its line."""
    import numpy as np
    from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name

    from saeflow.core.positions import token_positions

    tokenizer = model.tokenizer
    sequences = encode_prompts(tokenizer, [r["text"] for r in records])
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    if lengths.max() > model.cfg.n_ctx:
        i = int(lengths.argmax())
        raise InputError(source, f"line {line_of(records, i)}.text", f"{lengths[i]} tokens "
                         f"exceed the model's context of {model.cfg.n_ctx}")
    pos, _ = token_positions(list(positions), records, lengths, source)
    pad = special_ids(tokenizer)[0]
    stop = extract_stop_at_layer_from_tlens_hook_name(hook)
    rows = []
    for start in tqdm(range(0, len(sequences), batch_size), desc=f"activations {hook}",
                      mininterval=10):
        tokens, _ = pad_batch(sequences[start:start + batch_size], pad)
        _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=[hook],
                                        stop_at_layer=stop)
        acts = cache[hook].flatten(2).float().cpu()
        where = torch.from_numpy(pos[start:start + batch_size]).long()
        prompt, column = torch.nonzero(where >= 0, as_tuple=True)
        rows.append(acts[prompt, where[prompt, column]])
    return torch.cat(rows)


def positions_data(acts: torch.Tensor, hook: str, dataset: Any, context_size: int | None,
                   folder: str | Path, seed: int) -> TrainingData:
    """``acts [N, d]`` shuffled (``seed``) into rows of ``context_size`` activations (None:
    128), written as a sae-lens cached-activations dataset (column ``hook``) in ``folder``;
    ``dataset``, the corpus's text, is what the runner is told the activations came from."""
    import datasets

    width = min(context_size or PACKED_CONTEXT, len(acts))
    order = torch.randperm(len(acts), generator=torch.Generator().manual_seed(seed))
    rows = acts[order][: len(acts) // width * width].reshape(-1, width, acts.shape[1])
    features = datasets.Features({hook: datasets.Array2D(shape=(width, acts.shape[1]),
                                                         dtype="float32")})
    cache = datasets.Dataset.from_dict({hook: rows.numpy()}, features=features)
    cache.save_to_disk(str(folder))
    log.info("cached %d activations at the training positions (%d rows of %d) in %s",
             len(acts), len(rows), width, folder)
    return TrainingData(dataset, width, False, len(acts), activations=str(folder),
                        store_batch_prompts=max(1, min(32, len(rows) // 2)))
