"""Running untrusted verification code (AutoIF's model-written ``evaluate(response)`` functions).

The guarantee comes from the kernel, not from Python: each worker of the pool is a Python interpreter
started inside bubblewrap (``bwrap``), and every call runs in a fresh child forked from it
(`_sandbox_worker`). What a call can and cannot do (``SandboxPool.isolation`` reports what the
kernel granted; ``docs/verifiers.md`` has the full table):

* **Files**: the sandbox's root is an empty tmpfs holding only ``/usr``, ``/etc``, ``/bin``, ``/lib*``
  and the Python directories (interpreter, standard library, site-packages), all read-only; the only
  writable place is the call's scratch directory on a size-limited tmpfs, emptied after every call.
  ``RLIMIT_FSIZE`` caps a file. Paths, descriptors, ``dir_fd``, links, renames, ctypes: the kernel
  answers ``EROFS`` (or ``ENOENT``: home directories, ``/run``, the host's ``/tmp`` are not there).
* **Processes**: own PID namespace (the worker is its PID 1; nothing of the host is visible or
  signallable); seccomp denies fork, clone (threads too), exec, ptrace, pidfd and any signal not aimed
  at the caller itself, so a call is one process and nothing outlives it.
* **Network**: own empty network namespace, and seccomp denies ``socket`` (no unix sockets to host
  daemons either).
* **Identity**: as root, bwrap runs without a user namespace and the child drops to its own unprivileged
  uid; as an ordinary user, bwrap uses an unprivileged user namespace and the worker is made
  non-dumpable. The environment is empty (no tokens or keys of the parent).
* **Resources**: wall-clock kill, ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_NOFILE``, bounded output.

Where the machine gives none of this (no bwrap, namespaces refused, no seccomp), the pool refuses to
start (`SandboxUnavailable`) unless the user opts in with ``verifiers.sandbox: unsafe`` (or the
environment variable ``UNIAPL_SANDBOX=unsafe``): then the code runs with rlimits, seccomp and the
uid drop where available, without the filesystem, PID and network isolation, and a loud warning.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from uniapl.infra.schema import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "SandboxConfig", "SandboxResult", "SandboxPool", "SandboxUnavailable", "default_pool", "configure",
    "sandbox_mode", "run_verification_function", "MODES",
]

_WORKER = Path(__file__).with_name("_sandbox_worker.py")
MODES = ("kernel", "unsafe")
ENV_MODE = "UNIAPL_SANDBOX"
SCRATCH = "/tmp/uniapl-scratch"  # inside the sandbox
SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # read-only in the sandbox
MAX_REPLY = 65536  # bytes of one worker answer

# Loaded by each worker before any job and shared by the forked children (a root worker's child has its
# own uid and may not be able to read the interpreter's files; it also saves every call the import).
PREIMPORT = (
    "re", "json", "string", "math", "cmath", "collections", "collections.abc", "itertools", "functools",
    "operator", "unicodedata", "statistics", "textwrap", "difflib", "datetime", "calendar", "random",
    "typing", "dataclasses", "enum", "fractions", "decimal", "numbers", "heapq", "bisect", "copy", "html",
    "html.parser", "csv", "io", "keyword", "hashlib", "base64", "time", "locale", "codecs",
    "encodings.idna", "tempfile", "langdetect",
)


class SandboxUnavailable(ConfigError):
    """The kernel isolation cannot be had on this machine and the user did not opt in to ``unsafe``."""


_configured_mode: str | None = None


def configure(mode: str | None) -> None:
    """Set the process-wide mode (``verifiers.sandbox`` of the config); the environment variable
    ``UNIAPL_SANDBOX`` overrides it. A change closes the default pool (the next call starts one anew)."""
    global _configured_mode
    if mode is not None and mode not in MODES:
        raise ConfigError(f"key 'verifiers.sandbox': {mode!r} is not one of {', '.join(MODES)}")
    if mode != _configured_mode:
        _configured_mode = mode
        with _default_lock:
            if _default is not None:
                _default.close()


def sandbox_mode() -> str:
    env = os.environ.get(ENV_MODE, "").strip()
    if env:
        if env not in MODES:
            raise ConfigError(f"environment variable {ENV_MODE}={env!r}: allowed values are {', '.join(MODES)}")
        return env
    return _configured_mode or "kernel"


@dataclass(frozen=True)
class SandboxConfig:
    timeout_s: float = 2.0  # wall-clock limit per call
    memory_mb: int = 512  # address-space limit of the child
    max_file_mb: int = 8  # largest file the child may write (in its scratch directory)
    scratch_mb: int = 64  # size of the scratch tmpfs of a worker (all files of one call together)
    workers: int = 2
    entry: str = "evaluate"  # name of the function to call
    preimport: tuple[str, ...] = PREIMPORT
    max_source_chars: int = 100_000
    mode: str | None = None  # kernel | unsafe; None: sandbox_mode() (config key, then UNIAPL_SANDBOX)


@dataclass
class SandboxResult:
    status: str  # pass | fail | error | memory | timeout | killed
    detail: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "pass"


def _python_paths() -> list[str]:
    """Directories the worker needs (interpreter, standard library, site-packages, this file), bound
    read-only at the same place; the rest of the host's files are not in the sandbox at all."""
    wanted = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, str(_WORKER.parent),
              os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable))}
    wanted |= {p for p in sys.path if p and os.path.isdir(p)}
    paths = set()
    for p in wanted:
        for q in {os.path.abspath(p), os.path.realpath(p)}:
            # never a whole top-level directory such as /tmp (a script run from there) or / itself
            if os.path.isdir(q) and q.count("/") >= 2 and not SCRATCH.startswith(q + "/"):
                paths.add(q)
    out: list[str] = []
    for p in sorted(paths):
        if not any(p.startswith(o + "/") for o in out + list(SYSTEM_DIRS)):
            out.append(p)
    return out


def _bwrap_command(cfg: SandboxConfig, as_root: bool) -> list[str]:
    bwrap = os.environ.get("UNIAPL_BWRAP") or shutil.which("bwrap") or next(
        (p for p in ("/usr/bin/bwrap", "/bin/bwrap") if os.path.exists(p)), "")
    if not os.path.isfile(bwrap):
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed: install it (Debian: apt-get install bubblewrap), or set "
            "verifiers.sandbox: unsafe (UNIAPL_SANDBOX=unsafe) to run untrusted code without kernel isolation")
    cmd = [bwrap]
    if as_root:  # no user namespace: the worker keeps what it needs to drop the child to its own uid
        cmd += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
                "--cap-drop", "ALL"]
        for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL"):
            cmd += ["--cap-add", cap]
    else:
        cmd += ["--unshare-all", "--unshare-user"]
    cmd += ["--as-pid-1", "--new-session", "--clearenv", "--setenv", "LANG", "C.UTF-8",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "PYTHONHASHSEED", "0"]
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        cmd += ["--setenv", var, "1"]
    # The root is an empty tmpfs holding only the system (/usr, /etc, /lib...) and the Python directories,
    # all read-only: home directories, checkouts, data, /run (daemons' sockets), the host's /tmp are absent.
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            cmd += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            cmd += ["--ro-bind", d, d]
    cmd += ["--tmpfs", "/tmp"]  # first: Python directories under /tmp (a checkout there) are bound onto it
    made: set[str] = set()
    for p in _python_paths():
        # the directories above it are new, empty and traversable (as the host's /root may not be)
        parts = p.split("/")[1:-1]
        for i in range(1, len(parts) + 1):
            d = "/" + "/".join(parts[:i])
            if d not in made and d != "/tmp" and not any(d == s or d.startswith(s + "/") for s in SYSTEM_DIRS):
                made.add(d)
                cmd += ["--perms", "0755", "--dir", d]
        cmd += ["--ro-bind", p, p]
    cmd += ["--dev", "/dev", "--proc", "/proc", "--ro-bind-try", "/proc/sys", "/proc/sys",
            "--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger",
            "--size", str(cfg.scratch_mb * 1024 * 1024), "--tmpfs", SCRATCH,
            "--remount-ro", "/tmp", "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/", "--"]
    return cmd


class _Worker:
    def __init__(self, cfg: SandboxConfig, mode: str, slot: int, child_uid: int | None):
        self.cfg, self.mode, self.slot, self.child_uid = cfg, mode, slot, child_uid
        self.proc: subprocess.Popen | None = None
        self._host_scratch: str | None = None
        self.isolation: dict = {}
        self._start()

    def _start(self) -> None:
        wcfg = {"slot": self.slot, "child_uid": self.child_uid, "preimport": list(self.cfg.preimport),
                "sys_path": [p for p in sys.path if p and os.path.isdir(p)],
                "require_seccomp": self.mode == "kernel"}
        if self.mode == "kernel":
            wcfg["scratch"] = SCRATCH
            prefix = _bwrap_command(self.cfg, as_root=self.child_uid is not None)
        else:  # made here, removed here (kill): the worker itself may be SIGKILLed
            self._host_scratch = tempfile.mkdtemp(prefix="uniapl-sbx-")
            wcfg["scratch"] = self._host_scratch
            prefix = []
        cmd = prefix + [sys.executable, "-I", "-B", str(_WORKER), json.dumps(wcfg)]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        with tempfile.TemporaryFile() as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         env=env, cwd="/", start_new_session=True, close_fds=True)
            hello = self._read_line(60.0)
            if hello is None:
                self.kill()
                err.seek(0)
                msg = err.read()[-2000:].decode("utf-8", "replace").strip() or "no answer"
                if self.mode == "kernel":
                    raise SandboxUnavailable(
                        f"the kernel sandbox for untrusted code could not start ({msg}); it needs bubblewrap with "
                        "namespaces (as root, or unprivileged user namespaces) and seccomp. Set "
                        "verifiers.sandbox: unsafe (UNIAPL_SANDBOX=unsafe) to run it without kernel isolation")
                raise RuntimeError(f"sandbox worker did not start: {msg}")
        self.isolation = json.loads(hello).get("hello", {})
        self.isolation.update(mode=self.mode, launcher=("bwrap" if prefix else "none"),
                              private_tmp=bool(prefix))  # the sandbox's /tmp is its own (kernel mode)
        if self.mode == "kernel":
            missing = [k for k in ("readonly_root", "pidns", "netns", "seccomp", "nondumpable") if not self.isolation.get(k)]
            probe = self.isolation.get("probe", {})
            if probe.get("write_etc") != "EROFS" or probe.get("kill_worker") != "EPERM":
                missing.append(f"probe {probe}")
            if missing:
                self.kill()
                raise SandboxUnavailable(
                    f"the kernel sandbox started without {', '.join(missing)}; set verifiers.sandbox: unsafe "
                    "(UNIAPL_SANDBOX=unsafe) to run untrusted code without kernel isolation")

    def _read_line(self, timeout: float) -> str | None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or len(buf) > MAX_REPLY:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            buf += chunk
        return buf.decode("utf-8", "replace")

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
                if r.get("retire"):  # the worker could not restore a clean state: never reuse it
                    log.info("sandbox worker %d retired: %s", self.slot, r["retire"])
                    self.kill()
                return SandboxResult(str(r["status"]), str(r.get("detail", ""))[:500], float(r.get("seconds", 0.0)))
            except SandboxUnavailable:
                raise
            except (OSError, TimeoutError, ValueError, RuntimeError, KeyError) as e:
                log.warning("sandbox worker %d failed (%s); restarting it", self.slot, e)
                self.kill()
                if attempt:
                    return SandboxResult("error", f"sandbox worker failed: {e}")
        return SandboxResult("error", "unreachable")

    def kill(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, 9)  # bwrap and, with it, the whole PID namespace
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
        if self._host_scratch:
            shutil.rmtree(self._host_scratch, ignore_errors=True)
            self._host_scratch = None


_warned_unsafe = False


def _warn_unsafe(isolation: dict) -> None:
    global _warned_unsafe
    msg = ("UNSAFE SANDBOX: verifiers.sandbox is 'unsafe': model-written verification code runs WITHOUT "
           "kernel isolation (no read-only filesystem, no PID or network namespace"
           + ("" if isolation.get("seccomp") else ", no seccomp") + "). It can write files this user can "
           "write and see other processes. Use it only on a machine you can throw away.")
    log.warning(msg)
    if not _warned_unsafe:
        _warned_unsafe = True
        print("\n" + "!" * 100 + "\n" + msg + "\n" + "!" * 100 + "\n", file=sys.stderr, flush=True)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


class SandboxPool:
    """A pool of sandbox workers; `run` / `run_many` call untrusted ``entry(*args)`` functions."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self.mode = self.config.mode or sandbox_mode()
        if self.mode not in MODES:
            raise ConfigError(f"key 'verifiers.sandbox': {self.mode!r} is not one of {', '.join(MODES)}")
        root = os.geteuid() == 0
        base_uid = 3_000_000 + (os.getpid() % 100_000) * 16
        self._workers: list[_Worker] = []
        try:
            for slot in range(max(1, self.config.workers)):
                self._workers.append(_Worker(self.config, self.mode, slot, base_uid + slot if root else None))
        except BaseException:
            for w in self._workers:
                w.kill()
            raise
        if self.mode == "unsafe":
            _warn_unsafe(self._workers[0].isolation)
        self._idle: queue.Queue[_Worker] = queue.Queue()
        for w in self._workers:
            self._idle.put(w)
        self._closed = False

    @property
    def isolation(self) -> dict:
        """What the kernel granted the first worker: mode, launcher, readonly_root, pidns, netns, seccomp,
        uid_drop, nondumpable, root, and the probe child's own observations."""
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
_default_lock = threading.RLock()


def default_pool() -> SandboxPool:
    """The process-wide pool used by the ``autoif:code`` checker (started on first use; a forked
    process gets its own, never its parent's workers). Raises `SandboxUnavailable` (a `ConfigError`)
    where the kernel sandbox cannot start and ``unsafe`` was not chosen."""
    global _default, _default_pid
    with _default_lock:
        if _default is None or _default._closed or _default_pid != os.getpid() or _default.mode != sandbox_mode():
            if _default is not None and _default_pid == os.getpid():
                _default.close()
            _default = SandboxPool()
            _default_pid = os.getpid()
            atexit.register(_default.close)
        return _default


def run_verification_function(source: str, response: str, *, pool: SandboxPool | None = None) -> bool:
    """True only if the untrusted ``evaluate(response)`` returns exactly True within the limits."""
    return (pool or default_pool()).run(source, response).passed
