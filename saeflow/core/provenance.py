"""Provenance: every result file records the config it used, package versions and git commit."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

TRACKED_PACKAGES = (
    "saeflow", "torch", "transformer-lens", "sae-lens", "transformers", "tokenizers",
    "numpy", "h5py", "scikit-learn", "pandas", "snakemake",
)


@functools.cache
def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@functools.cache
def git_commit(repo: str | None = None) -> str:
    """HEAD of the checkout holding this code, with ``-dirty`` when tracked files changed."""
    cwd = repo or str(Path(__file__).resolve().parent.parent)
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("SAEFLOW_GIT_COMMIT", "unknown")


def provenance(config: dict[str, Any] | None) -> dict[str, Any]:
    """The record embedded in every output: the config section used, versions, commit."""
    return {"config": config or {}, "versions": package_versions(), "git_commit": git_commit()}


def provenance_json(config: dict[str, Any] | None) -> str:
    return json.dumps(provenance(config), sort_keys=True, default=str)
