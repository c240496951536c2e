"""Reaching the Hugging Face Hub for a target given by its id.

When the Hub cannot be reached (no network, DNS down, a firewall), ``huggingface_hub``
retries each request for about 50 s, printing "Retrying in 8s" lines, before the error.
:func:`hub_kwargs` probes the endpoint once per process (a TCP connection, 5 s at most)
and, when it is unreachable, asks ``from_pretrained`` for the local cache only: a cached
model loads at once, and a missing one fails at once, with :func:`unreachable_note`
saying why. Nothing is probed with ``HF_HUB_OFFLINE`` set (the cache only already), behind
a proxy (a direct connection would fail where the proxy works), or for local folders.
:func:`hub_failure` tells why a Hub call failed (network, login, no such repository).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from eagle3kit.errors import error_chain

_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")


def is_hub_id(path: str, legacy: bool = False) -> bool:
    """``org/name`` that is not a local path; with ``legacy``, also a bare ``name`` (``gpt2``:
    ``from_pretrained`` looks one up on the Hub when no such folder exists)."""
    text = str(path)
    slashes = (0, 1) if legacy else (1,)
    return (bool(text) and not Path(text).expanduser().exists() and text.count("/") in slashes
            and not text.startswith((".", "/", "~")))


@functools.lru_cache(maxsize=1)
def hub_unreachable() -> str | None:
    """Why the Hub's endpoint cannot be reached (``"huggingface.co:443: Name or service
    not known"``), or None when it can, or when that is not ours to decide."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as error:
        return f"{host}:{port}: {error.strerror or error}"
    return None


def hub_kwargs(path: str) -> dict[str, Any]:
    """``from_pretrained`` arguments for ``path``: the local cache only when it is a Hub
    id and the Hub cannot be reached."""
    return {"local_files_only": True} if is_hub_id(path, legacy=True) and hub_unreachable() else {}


def unreachable_note(path: str) -> str:
    """What to add to a loading error about ``path`` when the Hub could not be reached."""
    if not is_hub_id(path, legacy=True):
        return ""
    why = hub_unreachable()
    return f" The Hugging Face Hub cannot be reached ({why}), so only the local cache was looked in." if why else ""


@contextlib.contextmanager
def cache_only() -> Iterator[None]:
    """Within it, ``datasets`` and ``huggingface_hub`` make no request, as under
    ``HF_HUB_OFFLINE=1``: a cached dataset loads at once, a missing one fails at once
    (both read the variable only when imported, so their flags are set here)."""
    import datasets.config
    import huggingface_hub.constants

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def absolute_target(path: str) -> str:
    """A model as another process, started in another folder, finds it: an existing local
    folder as an absolute path, anything else (a Hub id) as given."""
    local = Path(path).expanduser()
    return str(local.resolve()) if local.is_dir() else path


#: Exception class names (any library: requests, httpx, huggingface_hub, the builtins) that mean
#: the Hub could not be reached, as against refused.
_NETWORK_ERRORS = {"ConnectionError", "ConnectError", "ConnectTimeout", "NetworkError", "TimeoutException", "Timeout",
                   "TimeoutError", "ProxyError", "OfflineModeIsEnabled"}
_NETWORK_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                   errno.ENETDOWN, errno.ETIMEDOUT}


def hub_failure(error: BaseException) -> str | None:
    """What made a Hugging Face Hub call fail, looking through the errors it wraps: ``"network"``
    (no connection, DNS, a timeout, offline mode), ``"auth"`` (not logged in or no access: 401,
    403, a gated repository, no token), ``"missing"`` (no such repository), or None."""
    cached_only = False  # huggingface_hub's "not in the cache, and the Hub gave nothing": why, if a cause says
    for error in error_chain(error):
        names = {kind.__name__ for kind in type(error).__mro__}
        cached_only = cached_only or "LocalEntryNotFoundError" in names
        status = getattr(getattr(error, "response", None), "status_code", None)
        if names & {"GatedRepoError", "LocalTokenNotFoundError"}:
            return "auth"
        if "RepositoryNotFoundError" in names:
            return "missing"
        if status in (401, 403):
            return "auth"
        code = getattr(error, "errno", None)
        if names & _NETWORK_ERRORS or isinstance(error, socket.gaierror) or code in _NETWORK_ERRNOS:
            return "network"
    return "network" if cached_only else None
