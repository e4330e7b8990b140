"""Neuronpedia's public explanation exports, downloaded into a local cache as sae-lens fetches
weights: ``<base_url>/<modelId>/<source>/explanations/batch-<i>.jsonl.gz``, batch after batch
until the store answers that there is no next one.

Each batch is checked (it must decompress) and written atomically, so an interrupted download
resumes where it stopped and never leaves a half batch that later reads as complete. An
unreachable store is one line at once (no retry loop): point ``labels.describe.folder`` at a
copy made elsewhere to work offline.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tqdm import tqdm

from saeflow.core.errors import InputError
from saeflow.core.io import atomic_path

log = logging.getLogger(__name__)
# S3 answers a missing key with 403 (listing not allowed) or 404: both mean "no next batch".
END_OF_BATCHES = (403, 404)


def export_folder(cache_dir: str | Path, model_id: str, source: str) -> Path:
    """Where the batches of ``model_id``/``source`` are cached."""
    return Path(cache_dir) / model_id / source / "explanations"


def _get(url: str, timeout: float) -> bytes | None:
    """The body at ``url``; None when the store says there is none."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as err:
        if err.code in END_OF_BATCHES:
            return None
        raise InputError(url, "response", f"HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        raise InputError(url, "<network>", f"unreachable ({getattr(err, 'reason', err)}); "
                         "set labels.describe.folder to a local copy of the exports") from None


def fetch_explanations(base_url: str, model_id: str, source: str, cache_dir: str | Path,
                       timeout: float = 30.0) -> dict[str, Any]:
    """Download every explanation batch not yet cached; returns the manifest
    ``{folder, model_id, source, batches: [{name, sha256, bytes}], downloaded}``."""
    folder = export_folder(cache_dir, model_id, source)
    folder.mkdir(parents=True, exist_ok=True)
    batches, downloaded = [], 0
    progress = tqdm(desc=f"neuronpedia {model_id}/{source}", unit="batch", mininterval=2.0)
    for i in itertools.count():
        name = f"batch-{i}.jsonl.gz"
        path = folder / name
        if not path.exists():
            url = f"{base_url.rstrip('/')}/{model_id}/{source}/explanations/{name}"
            data = _get(url, timeout)
            if data is None:
                break
            try:
                gzip.decompress(data)
            except (OSError, EOFError) as err:
                raise InputError(url, "<body>", f"not a gzip batch ({err})") from None
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            downloaded += 1
        blob = path.read_bytes()
        batches.append({"name": name, "sha256": hashlib.sha256(blob).hexdigest(),
                        "bytes": len(blob)})
        progress.update(1)
    progress.close()
    if not batches:
        raise InputError(f"{base_url.rstrip('/')}/{model_id}/{source}/explanations/",
                         "batch-0.jsonl.gz", "no explanation export for this model and source "
                         "(check labels.describe.model_id and source)")
    log.info("%d batches in %s (%d downloaded now)", len(batches), folder, downloaded)
    return {"folder": str(folder), "model_id": model_id, "source": source,
            "batches": batches, "downloaded": downloaded}


def fetch_neuronpedia_stage(base_url: str, model_id: str, source: str, cache_dir: str | Path,
                out: str | Path) -> None:
    """Rule ``fetch_neuronpedia``: :func:`fetch_explanations` into ``cache_dir``; the manifest
    (cached folder, each batch's sha256) to ``out`` (labels/neuronpedia_exports.json)."""
    from saeflow.core.io import write_json

    manifest = fetch_explanations(base_url, model_id, source, cache_dir)
    write_json(out, manifest, {"url": base_url, "source": source})
