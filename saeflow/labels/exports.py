"""Neuronpedia's public explanation exports, downloaded into a local cache as sae-lens fetches
weights: ``<base_url>/<modelId>/<source>/explanations/batch-<i>.jsonl.gz``, batch after batch
until the store answers that there is no next one.

A batch is written to a temporary name, checked there as the importer will read it
(:func:`saeflow.formats.neuronpedia.check_batch`: whole gzip, JSON rows) and only then
renamed into the cache; one that fails (an HTML error page, a truncated stream) is deleted,
so a rerun fetches it again and never reads a bad copy. A cached batch that fails the same
check (a copy left by an older saeflow) is fetched again too. A connection that drops
mid-body is retried ``max_retries`` times with doubling delays from ``backoff_s``
(``labels.describe.max_retries`` / ``backoff_s``), then one line naming the batch; an
interrupted download resumes where it stopped. An unreachable store is one line at once (no
retry loop): point ``labels.describe.folder`` at a copy made elsewhere to work offline.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tqdm import tqdm

from saeflow.core.errors import InputError
from saeflow.core.io import atomic_path
from saeflow.formats.neuronpedia import check_batch

log = logging.getLogger(__name__)
# S3 answers a missing key with 403 (listing not allowed) or 404: both mean "no next batch".
END_OF_BATCHES = (403, 404)


def export_folder(cache_dir: str | Path, model_id: str, source: str) -> Path:
    """Where the batches of ``model_id``/``source`` are cached."""
    return Path(cache_dir) / model_id / source / "explanations"


def _get(url: str, timeout: float, max_retries: int, backoff_s: float) -> bytes | None:
    """The body at ``url``; None when the store says there is none. A body cut off
    mid-transfer is fetched again, up to ``max_retries`` times after the first attempt."""
    problem = ""
    for attempt in range(max_retries + 1):
        if attempt:
            log.warning("%s: attempt %d failed (%s); retrying", url, attempt, problem)
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except urllib.error.HTTPError as err:
            if err.code in END_OF_BATCHES:
                return None
            raise InputError(url, "response", f"HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            raise InputError(url, "<network>", f"unreachable ({getattr(err, 'reason', err)}); "
                             "set labels.describe.folder to a local copy of the exports") from None
        except http.client.HTTPException as err:
            raise InputError(url, "response", f"not an HTTP response ({type(err).__name__}: "
                             f"{err})") from None
        with response:
            try:
                return response.read()
            except http.client.IncompleteRead as err:
                problem = (f"connection dropped after {len(err.partial)} of "
                           f"{len(err.partial) + (err.expected or 0)} bytes")
            except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
                problem = f"connection dropped mid-body ({type(err).__name__}: {err})"
    raise InputError(url, "<body>", f"the connection dropped mid-body on all {max_retries + 1} "
                     f"attempts (last: {problem}); rerun to resume, or raise "
                     "labels.describe.max_retries")


def _cached(path: Path) -> bool:
    """Whether ``path`` holds a batch that passes the check; a bad one is deleted."""
    if not path.exists():
        return False
    try:
        check_batch(path.read_bytes(), path)
        return True
    except InputError as err:
        log.warning("%s; deleting the cached copy and fetching it again", err)
        path.unlink()
        return False


def fetch_explanations(base_url: str, model_id: str, source: str, cache_dir: str | Path,
                       timeout: float = 30.0, max_retries: int | None = None,
                       backoff_s: float | None = None) -> dict[str, Any]:
    """Download every explanation batch not yet cached; returns the manifest
    ``{folder, model_id, source, batches: [{name, sha256, bytes}], downloaded}``.
    ``max_retries`` / ``backoff_s``: None takes labels.describe's schema default."""
    from saeflow.core.config import schema_defaults

    defaults = schema_defaults("labels.describe")
    retries = defaults["max_retries"] if max_retries is None else max_retries
    backoff = defaults["backoff_s"] if backoff_s is None else backoff_s
    folder = export_folder(cache_dir, model_id, source)
    folder.mkdir(parents=True, exist_ok=True)
    batches, downloaded = [], 0
    progress = tqdm(desc=f"neuronpedia {model_id}/{source}", unit="batch", mininterval=2.0)
    for i in itertools.count():
        name = f"batch-{i}.jsonl.gz"
        path = folder / name
        if not _cached(path):
            url = f"{base_url.rstrip('/')}/{model_id}/{source}/explanations/{name}"
            data = _get(url, timeout, retries, backoff)
            if data is None:
                break
            with atomic_path(path) as tmp:  # checked under a temporary name, then renamed
                tmp.write_bytes(data)
                check_batch(tmp.read_bytes(), url)
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
                            retry: dict[str, Any], out: str | Path) -> None:
    """Rule ``fetch_neuronpedia``: :func:`fetch_explanations` into ``cache_dir``, a dropped
    connection retried as ``retry`` says (``{max_retries, backoff_s}`` of labels.describe);
    the manifest (cached folder, each batch's sha256) to ``out``
    (labels/neuronpedia_exports.json)."""
    from saeflow.core.io import write_json

    manifest = fetch_explanations(base_url, model_id, source, cache_dir,
                                  max_retries=retry["max_retries"], backoff_s=retry["backoff_s"])
    write_json(out, manifest, {"url": base_url, "source": source})
