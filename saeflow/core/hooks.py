"""TransformerLens hook names, parsed in one place: which block a hook sits in, where in the
forward pass, and what it holds. No transformer_lens import: the config checks use it at parse
time. Every ``blocks.{L}.`` pattern of saeflow lives here."""

from __future__ import annotations

import re

_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
# Where a hook sits inside a block, in forward order: residual in, attention, the mid residual,
# MLP, residual out. Unknown hooks of a block sort after the attention ones, by name.
_WITHIN_BLOCK = (("hook_resid_pre", 0), ("ln1.", 1), ("attn.", 2), ("hook_attn_in", 1),
                 ("hook_q_input", 1), ("hook_k_input", 1), ("hook_v_input", 1),
                 ("hook_attn_out", 3), ("hook_resid_mid", 4), ("ln2.", 5), ("hook_mlp_in", 5),
                 ("mlp.", 6), ("hook_mlp_out", 7), ("hook_resid_post", 8))
# Hooks with one vector per head: a transcoder reads one vector per position
PER_HEAD = re.compile(r"blocks\.\d+\.attn\.hook_(q|k|v|z|result)$")
# Hooks whose activation is added to the residual stream as it is (d_model wide)
_WRITES_RESIDUAL = {"hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_mlp_out",
                    "hook_attn_out"}
EMBEDDINGS = ("hook_embed", "hook_pos_embed")


def split_block(hook: str) -> tuple[int | None, str]:
    """``(L, name inside the block)`` of ``blocks.{L}.{name}``; ``(None, hook)`` outside the
    blocks (``hook_embed``, ``ln_final.hook_normalized``)."""
    m = _BLOCK.fullmatch(hook)
    return (int(m.group(1)), m.group(2)) if m else (None, hook)


def block_of(hook: str) -> int | None:
    """The block a hook point sits in (``blocks.{L}.``), None outside the blocks."""
    return split_block(hook)[0]


def forward_rank(hook: str) -> tuple[int, int, str]:
    """A sort key in forward order: by layer (``blocks.{L}.``), then where in the block;
    hooks outside the blocks (embeddings) first."""
    layer, rest = split_block(hook)
    if layer is None:
        return (-1, 0, hook)
    rank = next((r for prefix, r in _WITHIN_BLOCK if rest.startswith(prefix)), 3)
    return (layer, rank, hook)


def resume_layer(hook: str) -> int | None:
    """The block a forward pass starts at when ``hook``'s activation is the whole residual
    input: ``L`` for ``blocks.L.hook_resid_pre``, ``L + 1`` for ``blocks.L.hook_resid_post``;
    None for any other hook (inside a block, the mid residual, outside the blocks)."""
    layer, rest = split_block(hook)
    if layer is None or rest not in ("hook_resid_pre", "hook_resid_post"):
        return None
    return layer + (rest == "hook_resid_post")


def writes_residual(hook: str) -> bool:
    """Whether ``hook``'s activation is what it adds to the residual stream, as it is: the
    residual itself, an MLP's or attention block's output, the embeddings."""
    layer, rest = split_block(hook)
    return rest in _WRITES_RESIDUAL if layer is not None else hook in EMBEDDINGS


def attention_z_layer(hook: str) -> int | None:
    """``L`` for ``blocks.L.attn.hook_z`` (per-head outputs before W_O), else None."""
    layer, rest = split_block(hook)
    return layer if rest == "attn.hook_z" else None


def layer_label(hook: str) -> str:
    """``L3`` for a hook of block 3; the hook's own name outside the blocks."""
    layer = block_of(hook)
    return f"L{layer}" if layer is not None else hook
