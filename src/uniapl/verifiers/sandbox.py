"""Running untrusted verification code (AutoIF's model-written ``evaluate(response)`` functions).

Every call runs in a fresh child process forked from a long-lived worker ("zygote", see
`_sandbox_worker`), which is a separate Python interpreter started with ``-I`` (no user site, no
PYTHONPATH) and a minimal environment. A function that misbehaves scores 0 and training goes on.

What isolates, on Linux, as far as the kernel allows (``SandboxPool.isolation`` reports it):

* **Time**: a wall-clock limit (the worker kills the child's process group) and ``RLIMIT_CPU``.
* **Memory**: ``RLIMIT_AS`` (a huge allocation raises MemoryError or kills the child).
* **Processes**: when the pool runs as root, each worker's children run under their own unprivileged
  uid with ``RLIMIT_NPROC=1``: they cannot fork or start threads at all (fork bomb: kernel-enforced).
  Otherwise fork/exec/spawn are refused by the audit hook below, and the process group is killed.
* **Network**: the worker enters a new, empty network namespace (``unshare``; as root, or with
  unprivileged user namespaces): no interface but a down loopback, so no connection can be made.
  In-process, creating any socket is also refused.
* **Files**: as root, the child runs as an unprivileged uid (the kernel denies writes to files it does
  not own), and ``/tmp``, ``/var/tmp`` and ``/dev/shm`` are private tmpfs mounts that vanish with the
  worker. ``RLIMIT_FSIZE`` caps any file it writes. In-process, an audit hook (``sys.addaudithook``,
  which cannot be removed) ends the run as a violation on any open-for-writing, rename, remove, mkdir,
  chmod... outside the per-call scratch directory, on socket/ctypes/fork/exec/kill events, and on
  imports of ctypes, socket, subprocess, multiprocessing and similar.

Limits of the guarantee: the audit hook is a Python-level guard (C extensions already loaded could
bypass it; ctypes, the usual route, is refused). The kernel-level layers (namespaces, uid drop,
rlimits) are what a determined attacker meets; without root and without user namespaces only the
rlimits and the in-process guard remain. A function can still *read* files readable by the sandbox
uid; with no network and a one-bit answer there is no channel to send them anywhere.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["SandboxConfig", "SandboxResult", "SandboxPool", "default_pool", "run_verification_function"]

_WORKER = Path(__file__).with_name("_sandbox_worker.py")


# Loaded by each worker before any job: after the uid drop a child may not be able to read the
# interpreter's files (e.g. a Python under /root), so what verification functions commonly import is
# loaded up front.
PREIMPORT = (
    "re", "json", "string", "math", "cmath", "collections", "collections.abc", "itertools", "functools",
    "operator", "unicodedata", "statistics", "textwrap", "difflib", "datetime", "calendar", "random",
    "typing", "dataclasses", "enum", "fractions", "decimal", "numbers", "heapq", "bisect", "copy", "html",
    "html.parser", "csv", "io", "keyword", "hashlib", "base64", "string", "time", "locale", "codecs",
    "encodings.idna", "langdetect",
)


@dataclass(frozen=True)
class SandboxConfig:
    timeout_s: float = 2.0  # wall-clock limit per call
    memory_mb: int = 512  # address-space limit of the child
    max_file_mb: int = 8  # largest file the child may write (in its scratch directory)
    tmpfs_mb: int = 64  # size of the private /tmp of a worker (root only)
    workers: int = 2
    entry: str = "evaluate"  # name of the function to call
    preimport: tuple[str, ...] = PREIMPORT
    max_source_chars: int = 100_000


@dataclass
class SandboxResult:
    status: str  # pass | fail | error | violation | memory | timeout | killed
    detail: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "pass"


class _Worker:
    def __init__(self, cfg: SandboxConfig, slot: int, base_uid: int):
        self.cfg, self.slot, self.base_uid = cfg, slot, base_uid
        self.proc: subprocess.Popen | None = None
        self.isolation: dict = {}
        self._start()

    def _start(self) -> None:
        wcfg = {"slot": self.slot, "base_uid": self.base_uid, "tmpfs_mb": self.cfg.tmpfs_mb, "preimport": list(self.cfg.preimport)}
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-B", str(_WORKER), json.dumps(wcfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env, cwd="/", start_new_session=True, close_fds=True,
        )
        hello = self._read_line(60.0)
        if hello is None:
            self.kill()
            raise RuntimeError("sandbox worker did not start")
        self.isolation = json.loads(hello).get("hello", {})

    def _read_line(self, timeout: float) -> str | None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            buf += chunk
        return buf.decode("utf-8")

    def run(self, source: str, args: list, *, entry: str, timeout_s: float) -> SandboxResult:
        job = {
            "source": source, "entry": entry, "args": args, "timeout_s": timeout_s,
            "memory_mb": self.cfg.memory_mb, "max_file_mb": self.cfg.max_file_mb,
        }
        for attempt in (0, 1):
            try:
                if self.proc is None or self.proc.poll() is not None:
                    self._start()
                assert self.proc is not None and self.proc.stdin is not None
                self.proc.stdin.write((json.dumps(job) + "\n").encode("utf-8"))
                self.proc.stdin.flush()
                line = self._read_line(timeout_s + 15.0)
                if line is None:
                    raise TimeoutError("sandbox worker did not answer")
                r = json.loads(line)
                return SandboxResult(r["status"], r.get("detail", ""), r.get("seconds", 0.0))
            except (OSError, TimeoutError, ValueError, RuntimeError) as e:
                log.warning("sandbox worker %d failed (%s); restarting it", self.slot, e)
                self.kill()
                if attempt:
                    return SandboxResult("error", f"sandbox worker failed: {e}")
        return SandboxResult("error", "unreachable")

    def kill(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, 9)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5)
            except Exception:
                pass
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    if f:
                        f.close()
                except OSError:
                    pass
        self.proc = None


class SandboxPool:
    """A pool of sandbox workers; `run` / `run_many` call untrusted ``entry(*args)`` functions."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        base_uid = 3_000_000 + (os.getpid() % 100_000) * 16
        self._workers = [_Worker(self.config, slot, base_uid) for slot in range(max(1, self.config.workers))]
        self._idle: queue.Queue[_Worker] = queue.Queue()
        for w in self._workers:
            self._idle.put(w)
        self._closed = False

    @property
    def isolation(self) -> dict:
        """What the kernel granted the first worker (netns, private_tmp, uid_drop, root)."""
        return dict(self._workers[0].isolation)

    def run(self, source: str, *args, entry: str | None = None, timeout_s: float | None = None) -> SandboxResult:
        if self._closed:
            raise RuntimeError("sandbox pool is closed")
        if not isinstance(source, str):
            return SandboxResult("error", f"source should be a str, got {type(source).__name__}")
        if len(source) > self.config.max_source_chars:
            return SandboxResult("error", f"source longer than {self.config.max_source_chars} characters")
        try:
            json.dumps(list(args))
        except (TypeError, ValueError) as e:
            return SandboxResult("error", f"arguments are not JSON: {e}")
        worker = self._idle.get()
        try:
            return worker.run(source, list(args), entry=entry or self.config.entry,
                              timeout_s=timeout_s if timeout_s is not None else self.config.timeout_s)
        finally:
            self._idle.put(worker)

    def run_many(self, calls: Sequence[tuple[str, Sequence]], *, entry: str | None = None) -> list[SandboxResult]:
        """[(source, args)] -> results, spread over the workers."""
        if len(self._workers) == 1 or len(calls) <= 1:
            return [self.run(src, *args, entry=entry) for src, args in calls]
        with ThreadPoolExecutor(max_workers=len(self._workers)) as ex:
            return list(ex.map(lambda c: self.run(c[0], *c[1], entry=entry), calls))

    def close(self) -> None:
        self._closed = True
        for w in self._workers:
            w.kill()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_default: SandboxPool | None = None
_default_pid = 0
_default_lock = threading.Lock()


def default_pool() -> SandboxPool:
    """The process-wide pool used by the ``autoif:code`` checker (started on first use; a forked
    process gets its own, never its parent's workers)."""
    global _default, _default_pid
    with _default_lock:
        if _default is None or _default._closed or _default_pid != os.getpid():
            _default = SandboxPool()
            _default_pid = os.getpid()
            atexit.register(_default.close)
        return _default


def run_verification_function(source: str, response: str, *, pool: SandboxPool | None = None) -> bool:
    """True only if the untrusted ``evaluate(response)`` returns exactly True within the limits."""
    return (pool or default_pool()).run(source, response).passed
