"""Where a training job keeps its progress, so a killed job resumes.

``results/{experiment}/checkpoints/sae/{hook}/`` (:func:`work_folder`) holds, while a job runs:
``fingerprint.json`` (what is being trained: a checkpoint of other settings is never resumed),
sae-lens's checkpoints ``<tokens>/`` (sae-lens's own layout: weights, optimizer and scheduler
state, activation scaler, data position; only the latest is kept), the cached activations of
positions training ``activations/``, and the finished SAE ``final/`` before it is moved to the
rule's output. A job that finishes removes the folder; a killed one leaves it for the next.

A checkpoint is complete once its ``runner_cfg.json`` (the last file sae-lens writes) parses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
COMPLETE_MARK = "runner_cfg.json"


def work_folder(out_dir: str | Path) -> Path:
    """The job folder of the SAE ``results/{experiment}/sae/{hook}``:
    ``results/{experiment}/checkpoints/sae/{hook}``."""
    out = Path(out_dir)
    return out.parent.parent / "checkpoints" / "sae" / out.name


def fingerprint(settings: dict[str, Any]) -> str:
    """A digest of everything that decides the trained SAE (config sections, corpus identity,
    the model's weight hashes)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prepare(folder: Path, digest: str) -> Path | None:
    """Make ``folder`` this training's (``digest``); return its latest complete checkpoint to
    resume from, or None. A folder of other settings is cleared first."""
    mark = folder / "fingerprint.json"
    if folder.exists():
        try:
            same = json.loads(mark.read_text()).get("fingerprint") == digest
        except (OSError, ValueError, AttributeError):
            same = False
        if not same:
            log.info("%s holds another training's progress: cleared", folder)
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mark.write_text(json.dumps({"fingerprint": digest}) + "\n")
    shutil.rmtree(folder / "final", ignore_errors=True)
    return latest(folder)


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``folder``, ``(tokens trained, path)``, oldest first."""
    found = []
    for path in folder.iterdir() if folder.is_dir() else []:
        if not (path.is_dir() and path.name.isdigit()):
            continue
        try:
            json.loads((path / COMPLETE_MARK).read_text())
        except (OSError, ValueError):
            continue
        found.append((int(path.name), path))
    return sorted(found)


def latest(folder: Path) -> Path | None:
    found = checkpoints(folder)
    return found[-1][1] if found else None


def prune(folder: Path, keep: Path) -> None:
    """Remove every checkpoint in ``folder`` but ``keep`` (incomplete ones included)."""
    for path in folder.iterdir():
        if path.is_dir() and path.name.isdigit() and path != keep:
            shutil.rmtree(path, ignore_errors=True)


def thresholds(total: int, every: int | None, done: int) -> list[int]:
    """Token counts after which a checkpoint is written: every ``every`` tokens up to ``total``
    (none when training is no longer than one interval), those above ``done``."""
    if not every or every >= total:
        return []
    return [t for t in range(every, total, every) if t > done]
