"""Transcoders as sites: a sae-lens ``Transcoder`` reads one hook (the MLP's input) and writes
another (its output). What every stage asks of a loaded SAE or transcoder: which hook it
writes, and whether it sits where the config says (``sae.hooks``, ``sae.transcoders``).
Training one is :mod:`saeflow.sae.transcoder`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from saeflow.core.errors import InputError


def output_hook(sae: Any) -> str:
    """The hook an SAE writes: its own for an SAE, ``hook_name_out`` for a transcoder."""
    return sae.cfg.metadata.hook_name_out or sae.cfg.metadata.hook_name


def is_transcoder(sae: Any) -> bool:
    return output_hook(sae) != sae.cfg.metadata.hook_name


def check_site(sae: Any, hook: str, sae_cfg: Mapping[str, Any], source: Any) -> None:
    """The SAE ``sae.hooks`` assigns to ``hook`` reads it, and writes where
    ``sae.transcoders`` says (its own hook unless it is listed there)."""
    if sae.cfg.metadata.hook_name != hook:
        raise InputError(source, "metadata.hook_name", f"{sae.cfg.metadata.hook_name!r}, but "
                         f"config sae.hooks assigns this SAE to {hook!r}")
    expected = (sae_cfg.get("transcoders") or {}).get(hook, hook)
    if output_hook(sae) != expected:
        what = (f"a transcoder writing {output_hook(sae)!r}" if is_transcoder(sae)
                else "an SAE writing the hook it reads")
        raise InputError(source, "metadata.hook_name_out", f"{what}, but config "
                         f"sae.transcoders.{hook} says {expected!r}")


