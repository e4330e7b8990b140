"""Where a TransformerLens hook point sits in the forward pass, from its name alone (no
transformer_lens import: the config checks use it at parse time)."""

from __future__ import annotations

import re

# Where a hook sits inside a block, in forward order: residual in, attention, the mid residual,
# MLP, residual out. Unknown hooks of a block sort after the attention ones, by name.
_WITHIN_BLOCK = (("hook_resid_pre", 0), ("ln1.", 1), ("attn.", 2), ("hook_attn_in", 1),
                 ("hook_q_input", 1), ("hook_k_input", 1), ("hook_v_input", 1),
                 ("hook_attn_out", 3), ("hook_resid_mid", 4), ("ln2.", 5), ("hook_mlp_in", 5),
                 ("mlp.", 6), ("hook_mlp_out", 7), ("hook_resid_post", 8))
# Hooks with one vector per head: a transcoder reads one vector per position
PER_HEAD = re.compile(r"blocks\.\d+\.attn\.hook_(q|k|v|z|result)$")


def forward_rank(hook: str) -> tuple[int, int, str]:
    """A sort key in forward order: by layer (``blocks.{L}.``), then where in the block;
    hooks outside the blocks (embeddings) first."""
    m = re.match(r"blocks\.(\d+)\.(.*)", hook)
    if m is None:
        return (-1, 0, hook)
    rank = next((r for prefix, r in _WITHIN_BLOCK if m.group(2).startswith(prefix)), 3)
    return (int(m.group(1)), rank, hook)
