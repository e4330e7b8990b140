"""SAEs: load pretrained or saved ones, checked against the config. Measuring them is
:mod:`saeflow.evaluate`; training one is :mod:`saeflow.sae.train`.

Anything with ``encode``/``decode`` and ``cfg.metadata.hook_name`` serves the later stages.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sae_lens import SAE

from saeflow.core.errors import InputError

log = logging.getLogger(__name__)


def load_sae_dir(directory: str | Path, device: str = "cpu") -> SAE:
    if not (Path(directory) / "cfg.json").exists():
        raise InputError(Path(directory) / "cfg.json", "<file>", "missing: not an SAE directory")
    return SAE.load_from_disk(str(directory), device=device).eval()


def load_sae(sae_cfg: dict[str, Any], hook_name: str, sae_dir: str | Path | None,
             device: str = "cpu") -> SAE:
    """The SAE a config assigns to ``hook_name``: trained/local from disk, or from the hub;
    checked to read that hook and to write where ``sae.transcoders`` says."""
    from saeflow.core.transcoders import check_site

    sae = _load_sae(sae_cfg, hook_name, sae_dir, device)
    source = sae_dir if sae_cfg["source"] == "train" else (
        sae_cfg["paths"].get(hook_name) if sae_cfg["source"] == "local"
        else f"{(sae_cfg.get('releases') or {}).get(hook_name) or sae_cfg.get('release')}/"
             f"{sae_cfg['ids'].get(hook_name)}")
    check_site(sae, hook_name, sae_cfg, source)
    return sae


def _load_sae(sae_cfg: dict[str, Any], hook_name: str, sae_dir: str | Path | None,
              device: str = "cpu") -> SAE:
    if sae_cfg["source"] in ("train", "local"):
        directory = sae_dir if sae_cfg["source"] == "train" else sae_cfg["paths"].get(hook_name)
        if directory is None:
            raise InputError("config", f"sae.paths.{hook_name}", "no SAE directory given")
        return load_sae_dir(directory, device)
    if sae_cfg["source"] == "pretrained":
        from saeflow.core.hub import hub_access

        sae_id = sae_cfg["ids"].get(hook_name)
        if sae_id is None:
            raise InputError("config", f"sae.ids.{hook_name}", "no pretrained SAE id for this hook")
        # Gemma Scope ships residual, attention and MLP SAEs as separate releases
        release = (sae_cfg.get("releases") or {}).get(hook_name) or sae_cfg.get("release")
        if release is None:
            raise InputError("config", f"sae.releases.{hook_name}",
                             "no sae-lens release for this hook (sae.release or sae.releases)")
        with hub_access(f"{release}/{sae_id}", f"sae.ids.{hook_name}"):
            return SAE.from_pretrained(release, sae_id, device=device).eval()
    raise InputError("config", "sae.source", f"unknown source {sae_cfg['source']!r}")
