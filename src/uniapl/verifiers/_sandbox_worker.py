"""Sandbox worker ("zygote") for untrusted verification code. Standard library only; run as a script.

Started by `uniapl.verifiers.sandbox.SandboxPool` as ``python -I -B _sandbox_worker.py CONFIG_JSON``.
It isolates itself once (network and mount namespaces when the kernel allows), then for every job read
from stdin (one JSON line) forks a child that drops privileges, applies resource limits, installs an
audit hook, runs the untrusted function, and reports one verdict on a private pipe. The worker answers
each job with one JSON line on stdout.

Nothing here imports uniapl: the worker must not carry the trainer's state into the sandbox.
"""

import json
import os
import resource
import select
import signal
import sys
import time

# --------------------------------------------------------------------------- one-time isolation

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 16384, 1 << 18
PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def _isolate(cfg):
    """Enter new network (+ mount) namespaces; returns what was achieved."""
    info = {"netns": False, "private_tmp": False, "uid_drop": False, "root": os.geteuid() == 0}
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        flags = CLONE_NEWNET | CLONE_NEWNS
        if os.geteuid() != 0:
            flags |= CLONE_NEWUSER  # unprivileged user namespace, where the kernel allows it
        if libc.unshare(flags) == 0:
            info["netns"] = True
            if os.geteuid() == 0 and libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0:
                ok = True
                for d in PRIVATE_TMP_DIRS:
                    if os.path.isdir(d):
                        opts = ("size=%dm,mode=1777" % cfg["tmpfs_mb"]).encode()
                        ok &= libc.mount(b"tmpfs", d.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts) == 0
                info["private_tmp"] = bool(ok)
        elif libc.unshare(CLONE_NEWNET | (0 if os.geteuid() == 0 else CLONE_NEWUSER)) == 0:
            info["netns"] = True
    except Exception as e:  # no ctypes, no libc, seccomp...: the in-process guards remain
        info["isolate_error"] = repr(e)
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]
    info["uid_drop"] = os.geteuid() == 0
    return info


# --------------------------------------------------------------------------- the child

_BLOCKED_EVENTS = (
    "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
    "os.kill", "os.killpg", "signal.pthread_kill", "pty.spawn", "os.startfile", "os.chroot", "os.setuid",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.remote_exec", "os.add_dll_directory",
    "webbrowser.open", "http.client.connect", "urllib.Request", "sqlite3.connect", "sqlite3.enable_load_extension",
    "resource.setrlimit", "resource.prlimit", "mmap.__new__",
)
_BLOCKED_PREFIXES = ("socket.", "ctypes.", "ftplib.", "smtplib.", "poplib.", "imaplib.", "nntplib.", "telnetlib.")
_BLOCKED_IMPORTS = frozenset((
    "ctypes", "_ctypes", "cffi", "socket", "_socket", "ssl", "_ssl", "subprocess", "_posixsubprocess",
    "multiprocessing", "_multiprocessing", "pty", "select", "selectors", "signal", "_signal", "resource",
    "fcntl", "termios", "mmap", "asyncio", "urllib.request", "http.client", "requests", "httpx",
))
_PATH_EVENTS = {
    "os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.mkdir": (0,), "os.chmod": (0,),
    "os.chown": (0,), "os.link": (0, 1), "os.symlink": (0, 1), "os.truncate": (0,), "os.utime": (0,),
    "os.chflags": (0,), "os.lchflags": (0,), "os.mkfifo": (0,), "os.mknod": (0,), "os.setxattr": (0,),
    "os.removexattr": (0,), "shutil.rmtree": (0,), "shutil.chown": (0,),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _install_guard(scratch, report_fd):
    realpath, fspath, fsdecode, write, exit_ = os.path.realpath, os.fspath, os.fsdecode, os.write, os._exit
    allowed_prefix = scratch + os.sep

    def inside(path):
        if isinstance(path, int):
            return True  # an fd already open
        try:
            p = realpath(fsdecode(fspath(path)))
        except Exception:
            return False
        return p == scratch or p.startswith(allowed_prefix) or p == "/dev/null"

    def violation(event):
        try:
            write(report_fd, b"V" + event.encode("utf-8", "replace")[:200])
        finally:
            exit_(3)

    def hook(event, args):
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writing = (isinstance(flags, int) and flags & _WRITE_FLAGS) or (
                isinstance(mode, str) and any(c in mode for c in "wax+"))
            if writing and not inside(path):
                violation("open for writing outside the scratch directory")
            return
        if event == "import":
            name = args[0] if args else ""
            if name in _BLOCKED_IMPORTS or name.split(".")[0] in _BLOCKED_IMPORTS:
                violation("import " + str(name))
            return
        if event in _BLOCKED_EVENTS or event.startswith(_BLOCKED_PREFIXES):
            violation(event)
        idx = _PATH_EVENTS.get(event)
        if idx is not None:
            for i in idx:
                if i < len(args) and not inside(args[i]):
                    violation(event + " outside the scratch directory")

    sys.addaudithook(hook)


def _child(job, cfg, info, slot, report_fd):
    """Runs in the forked child; never returns."""
    code = b"E"
    detail = b""
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, report_fd)
        os.closerange(report_fd + 1, 65536)
        scratch = os.path.realpath(job["scratch"])
        os.chdir(scratch)
        uid = cfg["base_uid"] + slot
        limits = [
            (resource.RLIMIT_AS, job["memory_mb"] * 1024 * 1024),
            (resource.RLIMIT_CPU, int(job["timeout_s"]) + 1),
            (resource.RLIMIT_FSIZE, job["max_file_mb"] * 1024 * 1024),
            (resource.RLIMIT_NOFILE, 64),
            (resource.RLIMIT_CORE, 0),
        ]
        if info["uid_drop"]:
            limits.append((resource.RLIMIT_NPROC, 1))  # the child itself: no fork, no thread
        for what, value in limits:
            resource.setrlimit(what, (value, value))
        if info["uid_drop"]:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        os.environ.clear()
        os.environ.update({"TMPDIR": scratch, "HOME": scratch, "LANG": "C.UTF-8", "PATH": "/nonexistent"})
        sys.dont_write_bytecode = True
        sys.stdout = sys.stderr = open(os.devnull, "w")
        _install_guard(scratch, report_fd)
        namespace = {"__name__": "__sandbox__", "__builtins__": __builtins__}
        exec(compile(job["source"], "<verification function>", "exec"), namespace)
        fn = namespace.get(job["entry"])
        if not callable(fn):
            code, detail = b"E", ("no function %r in the source" % job["entry"]).encode()
        else:
            result = fn(*job["args"])
            code = b"1" if result is True else b"0"
    except MemoryError:
        code, detail = b"M", b"MemoryError"
    except RecursionError:
        code, detail = b"E", b"RecursionError"
    except BaseException as e:  # noqa: BLE001 - anything the function raises is a failed check
        code = b"E"
        try:
            detail = (type(e).__name__ + ": " + str(e)[:300]).encode("utf-8", "replace")
        except BaseException:
            detail = b"exception"
    try:
        os.write(report_fd, code + detail)
    finally:
        os._exit(0)


def _rmtree(path):
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            try:
                os.unlink(os.path.join(root, name))
            except OSError:
                pass
        for name in dirs:
            p = os.path.join(root, name)
            try:
                if os.path.islink(p):
                    os.unlink(p)
                else:
                    os.rmdir(p)
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def _run_job(job, cfg, info, slot, counter):
    import tempfile

    scratch = tempfile.mkdtemp(prefix="uniapl-sbx-%d-%d-" % (slot, counter))
    if info["uid_drop"]:
        os.chown(scratch, cfg["base_uid"] + slot, cfg["base_uid"] + slot)
    job["scratch"] = scratch
    r, w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(job, cfg, info, slot, w)
    os.close(w)
    deadline = start + job["timeout_s"]
    chunks = []
    status = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            status = "timeout"
            break
        ready, _, _ = select.select([r], [], [], left)
        if not ready:
            continue
        data = os.read(r, 4096)
        if not data:
            break
        chunks.append(data)
        if sum(len(c) for c in chunks) > 8192:
            break
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            kill()
        except OSError:
            pass
    _, wait_status = os.waitpid(pid, 0)
    os.close(r)
    _rmtree(scratch)
    seconds = time.monotonic() - start
    raw = b"".join(chunks)
    if status is None:
        code, detail = raw[:1], raw[1:].decode("utf-8", "replace")
        status = {b"1": "pass", b"0": "fail", b"E": "error", b"V": "violation", b"M": "memory"}.get(code, "killed")
        if status == "killed":
            detail = "exited without a verdict (status %d)" % wait_status
    else:
        detail = "wall-clock limit %.1f s" % job["timeout_s"]
    return {"status": status, "detail": detail, "seconds": round(seconds, 4)}


def main():
    cfg = json.loads(sys.argv[1])
    slot = cfg["slot"]
    os.environ.update({"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    # After the uid drop the child can import only what an unprivileged user can read (the interpreter
    # may live under /root), and after isolation /tmp is a private tmpfs (a checkout or virtual
    # environment under /tmp vanishes). So the commonly used modules are loaded first, before isolating.
    for name in cfg.get("preimport", []):
        try:
            __import__(name)
        except Exception:
            pass
    if "langdetect" in sys.modules:
        try:
            from langdetect import DetectorFactory, detector_factory

            DetectorFactory.seed = 0
            detector_factory.init_factory()
        except Exception:
            pass
    info = _isolate(cfg)
    out = sys.stdout
    out.write(json.dumps({"hello": info}) + "\n")
    out.flush()
    counter = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        counter += 1
        try:
            reply = _run_job(json.loads(line), cfg, info, slot, counter)
        except Exception as e:  # the worker itself must survive anything a job does
            reply = {"status": "error", "detail": "worker: %r" % (e,), "seconds": 0.0}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
