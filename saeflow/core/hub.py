"""Fail fast when pretrained weights need the Hugging Face hub and it cannot be reached.

The hub clients retry for minutes before giving up; a researcher on an offline node wants
one clear line at once. Weights already in the local cache still load (offline mode).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

from saeflow.core.errors import InputError

DEFAULT_ENDPOINT = "https://huggingface.co"


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT)


def hub_reachable(endpoint: str | None = None, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub's host opens within ``timeout`` seconds."""
    url = urlparse(endpoint or hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _go_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:  # huggingface_hub reads the flag at import time
        import huggingface_hub.constants as hf_constants

        hf_constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass


@contextlib.contextmanager
def hub_access(what: str, field: str, timeout: float = 3.0) -> Iterator[bool]:
    """Load ``what`` inside this block. If the hub is unreachable, loaders run offline (cached
    weights still load) and any failure becomes one line saying the hub is unreachable."""
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable(timeout=timeout)
    if offline:
        _go_offline()
    try:
        yield offline
    except (OSError, ValueError) as err:
        # Offline misses surface as OSError (LocalEntryNotFoundError, transformers' "couldn't
        # connect") or ValueError; other errors (bad shapes, broken files) pass through as is.
        if not offline:
            raise
        first_line = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise InputError("config", field,
                         f"cannot load {what!r}: the Hugging Face hub at {hub_endpoint()} is "
                         f"unreachable and it is not in the local cache "
                         f"({type(err).__name__}: {first_line})") from err
