"""Clients for a served POLAR (``name: polar_server``).

Protocols, one POST per batch of encoded texts (see ``polar.format_input``):

    lmdeploy  POST {url}/pooling   {"model": m, "input": [texts]}  -> {"data": [{"data": score}, ...]}
    vllm      POST {url}/pooling   {"model": m, "input": [texts]}  -> {"data": [{"index": i, "data": [[s], ...]}, ...]}
              (``vllm serve --task reward``: per-token rewards; the score is the last token's, ``data[-1][0]``)
    sglang    POST {url}/classify  {"model": m, "text": [texts]}   -> [{"embedding": [score, ...]}, ...]

Each request has a timeout (``server.timeout_s``). Connection errors, timeouts, HTTP 408/429/5xx and
malformed answers are retried ``server.max_retries`` times with exponential backoff
(``backoff_s``, doubled each time, capped at ``max_backoff_s``), all attempts together within
``server.max_total_s``; other HTTP errors (a wrong model name, a bad request) fail at once. When every
attempt fails, ``PolarServerError`` says where, how often and why. Training checks the server before
any work (`PolarHTTPClient.check`: one tiny request within ``server.check_timeout_s``).
Proxies from the environment are ignored (the server is normally on the cluster network).
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from typing import Any, Sequence

import torch
from torch import Tensor

from uniapl.infra.errors import UserError
from uniapl.infra.schema import ConfigError

from .config import DiscriminatorConfig, ServerConfig
from .polar import PolarEncoder, load_tokenizer
from .registry import register_discriminator
from .text import Prompt

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class PolarServerError(UserError, RuntimeError):
    """The POLAR server could not be reached or kept failing."""


class _Retryable(Exception):
    pass


def _scalar(x: Any) -> float:
    """The last element of nested lists (vLLM reward: data[-1][0]; lmdeploy: a float or [float])."""
    while isinstance(x, (list, tuple)):
        if not x:
            raise ValueError("empty score list")
        x = x[-1]
    return float(x)


class PolarHTTPClient:
    """POSTs encoded texts to a served reward model and returns one float per text."""

    def __init__(self, url: str, *, backend: str = "lmdeploy", model: str | None = None, timeout_s: float = 60.0,
                 max_retries: int = 3, backoff_s: float = 0.5, max_backoff_s: float = 8.0, api_key: str | None = None,
                 max_total_s: float = 120.0, check_timeout_s: float = 10.0):
        if backend not in ("lmdeploy", "vllm", "sglang"):
            raise ValueError(f"server backend must be lmdeploy, vllm or sglang, got {backend!r}")
        if not url:
            raise ConfigError("key 'discriminator.server.url': discriminator 'polar_server' needs the server's url, "
                              "e.g. http://127.0.0.1:30000")
        self.url = (url if "://" in url else f"http://{url}").rstrip("/")
        self.backend = backend
        self.model = model
        self.timeout_s = float(timeout_s)
        self.max_retries = max(0, int(max_retries))
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.api_key = api_key
        self.max_total_s = float(max_total_s)
        self.check_timeout_s = float(check_timeout_s)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.requests = 0
        self.failures = 0

    @classmethod
    def from_config(cls, cfg: ServerConfig, default_model: str | None = None) -> "PolarHTTPClient":
        api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        return cls(cfg.url or "", backend=cfg.backend, model=cfg.model or default_model, timeout_s=cfg.timeout_s,
                   max_retries=cfg.max_retries, backoff_s=cfg.backoff_s, max_backoff_s=cfg.max_backoff_s, api_key=api_key,
                   max_total_s=cfg.max_total_s, check_timeout_s=cfg.check_timeout_s)

    @property
    def endpoint(self) -> str:
        return f"{self.url}/classify" if self.backend == "sglang" else f"{self.url}/pooling"

    def _payload(self, texts: list[str]) -> dict[str, Any]:
        body: dict[str, Any] = {"text": texts} if self.backend == "sglang" else {"input": texts}
        if self.model:
            body["model"] = self.model
        return body

    def _parse(self, answer: Any, n: int) -> list[float]:
        if self.backend == "sglang":
            items = answer if isinstance(answer, list) else [answer]
            scores = [_scalar(e["embedding"][0]) for e in items]
        else:
            items = list(answer["data"])
            if all(isinstance(e, dict) and "index" in e for e in items):
                items.sort(key=lambda e: e["index"])
            scores = [_scalar(e["data"]) for e in items]
        if len(scores) != n:
            raise ValueError(f"server returned {len(scores)} scores for {n} inputs")
        return scores

    def _post_once(self, texts: list[str], timeout: float | None = None) -> list[float]:
        data = json.dumps(self._payload(texts)).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
        try:
            with self._opener.open(req, timeout=timeout or self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            body = e.read()[:300].decode(errors="replace")
            if e.code in _RETRY_STATUS:
                raise _Retryable(f"HTTP {e.code}: {body}") from e
            raise PolarServerError(f"{self.endpoint} answered HTTP {e.code} (not retried): {body}") from e
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise _Retryable(f"{type(reason).__name__}: {reason}") from e
        try:
            return self._parse(json.loads(raw), len(texts))
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise _Retryable(f"malformed answer ({e}): {raw[:200]!r}") from e

    def score_texts(self, texts: Sequence[str], *, max_total_s: float | None = None) -> list[float]:
        """One score per text; retried as the class says, all attempts within `max_total_s` (default
        ``server.max_total_s``)."""
        texts = list(texts)
        if not texts:
            return []
        budget = self.max_total_s if max_total_s is None else max_total_s
        t0 = time.monotonic()
        errors: list[str] = []
        for attempt in range(self.max_retries + 1):
            left = budget - (time.monotonic() - t0)
            if left <= 0:
                break
            self.requests += 1
            try:
                return self._post_once(texts, timeout=min(self.timeout_s, left))
            except _Retryable as e:
                self.failures += 1
                errors.append(str(e))
                if attempt == self.max_retries:
                    break
                wait = min(self.max_backoff_s, self.backoff_s * (2**attempt))
                if time.monotonic() - t0 + wait >= budget:
                    break
                log.warning("POLAR server %s attempt %d/%d failed (%s); retrying in %.2fs",
                            self.endpoint, attempt + 1, self.max_retries + 1, e, wait)
                time.sleep(wait)
        raise PolarServerError(
            f"POLAR server {self.endpoint} ({self.backend}) failed {len(errors)} attempts in "
            f"{time.monotonic() - t0:.1f}s (timeout {self.timeout_s}s each, {budget:g}s in all); last error: "
            f"{errors[-1] if errors else 'none'}. Is the server running and is discriminator.server.url right?"
        )

    def check(self) -> None:
        """One tiny request, retried within ``check_timeout_s``: a server that is down or silent is found
        before any work starts, with one message (PolarServerError). ``check_timeout_s`` 0 skips it."""
        if self.check_timeout_s <= 0:
            return
        try:
            self.score_texts(["uniapl startup check"], max_total_s=self.check_timeout_s)
        except PolarServerError as e:
            raise PolarServerError(
                f"discriminator.server.url: the POLAR server at {self.url} did not answer within "
                f"discriminator.server.check_timeout_s={self.check_timeout_s:g}s; start it (see docs/discriminators.md) "
                f"or fix the url. {e}"
            ) from None


@register_discriminator("polar_server")
class PolarServerScorer:
    """POLAR behind an HTTP server. With ``tokenizer_path`` (or ``model_path``) inputs are truncated here
    exactly as POLAR's client does; without, they are sent untruncated."""

    def __init__(self, cfg: DiscriminatorConfig, *, tokenizer: Any = None):
        self.cfg = cfg
        tok_path = cfg.tokenizer_path or cfg.model_path
        if tokenizer is None and tok_path:
            tokenizer = load_tokenizer(tok_path, cfg.trust_remote_code)
        if tokenizer is None:
            log.warning("polar_server: no tokenizer_path/model_path, inputs are sent without POLAR's truncation")
        self.encoder = PolarEncoder(tokenizer, cfg.polar, cfg.cache_size)
        default_model = tok_path.rstrip("/").split("/")[-1] if tok_path else None
        self.client = PolarHTTPClient.from_config(cfg.server, default_model)

    def score(self, prompts: Sequence[Prompt], references: Sequence[str], candidates: Sequence[str]) -> Tensor:
        texts = self.encoder.encode_batch(prompts, references, candidates)
        return torch.tensor(self.client.score_texts(texts), dtype=torch.float32)
