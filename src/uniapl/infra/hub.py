"""Checks that a model or dataset named in a config can be loaded, made before any work starts.

A name is a local path (it exists, or it looks like one: absolute, ``./``, ``~``, or more than one
``/``) or a Hugging Face hub id (``org/name``). A hub id already in the local cache is fine. Otherwise
the hub must be reachable: with ``HF_HUB_OFFLINE=1`` it is not, and without it a 3-second TCP check of
the endpoint (``HF_ENDPOINT``, default huggingface.co) decides, instead of transformers' half a minute
of retries followed by two tracebacks.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from uniapl.infra.schema import ConfigError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
REACH_TIMEOUT_S = 3.0


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co"


def hub_reachable(timeout: float = REACH_TIMEOUT_S) -> tuple[bool, str]:
    """(reachable, why not): a TCP connection to the hub endpoint within `timeout` seconds (DNS included)."""
    url = urlparse(_endpoint())
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    result: list[str] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append("")
        except OSError as e:
            result.append(f"{type(e).__name__}: {e}")

    t = threading.Thread(target=connect, daemon=True)
    t.start()
    t.join(timeout)
    if not result:
        return False, f"no answer from {host}:{port} within {timeout:.0f} s"
    return (not result[0]), result[0]


def _cached(repo_id: str, revision: str | None, repo_type: str) -> bool:
    try:
        from huggingface_hub import scan_cache_dir, try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return False
    if repo_type == "model":
        hit = try_to_load_from_cache(repo_id, "config.json", revision=revision)
        if isinstance(hit, str):
            return True
    try:
        return any(r.repo_id == repo_id and r.repo_type == repo_type for r in scan_cache_dir().repos)
    except Exception:  # no cache directory yet, or an unreadable one
        return False


def looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", "\\")) or name.count("/") > 1 or not _HUB_ID.match(name)


def check_source(name: str, key: str, *, kind: str = "model", revision: str | None = None) -> None:
    """Raise ConfigError naming `key` unless `name` is loadable: an existing local model/dataset, or a hub
    id that is cached or whose hub is reachable. Says how to fix it."""
    what = key if " " in key else f"key '{key}'"  # a config key, or a phrase naming a CLI argument
    p = Path(name).expanduser()
    if p.exists():
        if kind == "model" and p.is_dir() and not (p / "config.json").is_file() and not list(p.glob("*.gguf")):
            raise ConfigError(f"{what}: {name} is a directory but holds no model (no config.json)")
        return
    if looks_like_path(name):
        raise ConfigError(f"{what}: {kind} path {name} does not exist")
    repo_type = "model" if kind == "model" else "dataset"
    if _cached(name, revision, repo_type):
        return
    fix = (f"download it where the hub is reachable (huggingface-cli download {'--repo-type dataset ' if kind != 'model' else ''}"
           f"{name}) into the cache (HF_HOME), or give a local path")
    if is_offline():
        raise ConfigError(f"{what}: {name} is not a local path and not in the Hugging Face cache, and "
                          f"HF_HUB_OFFLINE is set; {fix}")
    ok, why = hub_reachable()
    if not ok:
        raise ConfigError(f"{what}: {name} is not a local path, not in the Hugging Face cache, and the hub "
                          f"({_endpoint()}) cannot be reached ({why}); {fix}")


__all__ = ["check_source", "hub_reachable", "is_offline", "looks_like_path"]
