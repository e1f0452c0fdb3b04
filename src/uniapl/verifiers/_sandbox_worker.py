"""Sandbox worker ("zygote") for untrusted verification code. Run as a script, never imported by uniapl.

Started by `uniapl.verifiers.sandbox.SandboxPool` as ``python -I -B _sandbox_worker.py CONFIG_JSON``,
normally inside bubblewrap (`sandbox.py` builds the command: read-only root, own PID/network/IPC/UTS
namespaces, an empty environment, a size-limited tmpfs as the only writable directory). It loads the
modules verification functions use, then for every job read from stdin (one JSON line) forks a child
that drops to its own uid (when the worker is root), applies rlimits and a seccomp filter, runs the
untrusted function and reports one verdict on a private pipe. The worker answers each job with one
JSON line on stdout, then empties the scratch directory so that the next call starts from nothing.

Nothing here imports uniapl: the worker must not carry the trainer's state into the sandbox. The
protection does not rely on anything the child's Python does: every rule below is enforced by the
kernel (mounts, namespaces, uid, rlimits, seccomp), so ctypes, C extensions or raw syscalls meet the
same walls.
"""

import errno
import json
import os
import resource
import select
import shutil
import signal
import sys
import time

# --------------------------------------------------------------------------- seccomp filter

# Denied outright (EPERM). Process creation first: the child can neither fork, start threads, nor exec,
# so a call is exactly one process, killed at the end (no daemons, no fork bombs, nothing outlives it).
_DENY = (
    "fork", "vfork", "clone", "clone3", "execve", "execveat",
    # network and local IPC: no sockets at all (also none to host daemons' unix sockets), no SysV/POSIX IPC
    # objects that would outlive the call
    "socket", "socketpair", "shmget", "shmat", "semget", "msgget", "mq_open", "mq_unlink",
    # other processes and namespaces
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp", "pidfd_open",
    "pidfd_send_signal", "pidfd_getfd", "unshare", "setns", "ioprio_set", "migrate_pages", "move_pages",
    # filesystem topology and metadata channels between calls
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr", "name_to_handle_at", "open_by_handle_at", "setxattr", "lsetxattr",
    "fsetxattr", "removexattr", "lremovexattr", "fremovexattr", "fanotify_init", "memfd_create", "memfd_secret",
    # the kernel itself
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "keyctl", "add_key", "request_key", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "settimeofday",
    "clock_settime", "clock_adjtime", "adjtimex", "uselib", "vhangup", "sethostname", "setdomainname",
    "iopl", "ioperm", "lookup_dcookie",
)
# Allowed only when aimed at the calling process itself (argument 0 is a pid: equal to its own pid).
_SELF_ONLY = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
# Allowed only with pid 0 (= itself) as argument 0 (setpriority: argument 1).
_PID0_ONLY = (("prlimit64", 0), ("sched_setaffinity", 0), ("sched_setscheduler", 0), ("sched_setparam", 0),
              ("sched_setattr", 0), ("setpriority", 1))
# fcntl / ioctl commands that route signals to another process or inject terminal input.
_F_SETOWN, _F_SETSIG, _F_SETOWN_EX = 8, 10, 15
_IOCTL_DENY = (0x5412, 0x8901, 0x8902, 0x5410)  # TIOCSTI, FIOSETOWN, SIOCSPGRP, TIOCSPGRP


def _load_seccomp(seccomp):
    """Install the filter on the calling (child) process. Raises if the kernel refuses."""
    pid = os.getpid()
    deny = seccomp.ERRNO(errno.EPERM)
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in _DENY:
        try:
            f.add_rule(deny, name)
        except Exception:  # not a system call on this architecture
            pass
    for name in _SELF_ONLY:
        f.add_rule(deny, name, seccomp.Arg(0, seccomp.NE, pid))
    for name, arg in _PID0_ONLY:
        f.add_rule(deny, name, seccomp.Arg(arg, seccomp.NE, 0))
    for cmd in (_F_SETOWN, _F_SETSIG, _F_SETOWN_EX):
        f.add_rule(deny, "fcntl", seccomp.Arg(1, seccomp.EQ, cmd))
    for cmd in _IOCTL_DENY:
        f.add_rule(deny, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, cmd))
    f.load()  # also sets no_new_privs


# --------------------------------------------------------------------------- the child


def _confine(job, cfg, seccomp, scratch):
    """Everything between fork and the untrusted code: the child's own session, no inherited files,
    rlimits, its own uid (root worker), an environment holding nothing of the parent, seccomp."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.chdir(scratch)
    limits = [
        (resource.RLIMIT_AS, job["memory_mb"] * 1024 * 1024),
        (resource.RLIMIT_CPU, int(job["timeout_s"]) + 1),
        (resource.RLIMIT_FSIZE, job["max_file_mb"] * 1024 * 1024),
        (resource.RLIMIT_NOFILE, 64),
        (resource.RLIMIT_CORE, 0),
    ]
    for what, value in limits:
        resource.setrlimit(what, (value, value))
    uid = cfg.get("child_uid")
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    os.environ.clear()
    os.environ.update({"TMPDIR": scratch, "HOME": scratch, "LANG": "C.UTF-8", "PATH": "/nonexistent"})
    sys.dont_write_bytecode = True
    sys.stdout = sys.stderr = open(os.devnull, "w")
    if seccomp is not None:
        _load_seccomp(seccomp)
    elif cfg["require_seccomp"]:
        raise OSError("seccomp is not available")


def _child(job, cfg, seccomp, scratch, report_fd):
    """Runs in the forked child; never returns."""
    code, detail = b"E", b""
    try:
        os.closerange(3, report_fd)
        os.closerange(report_fd + 1, 65536)
        try:
            _confine(job, cfg, seccomp, scratch)
        except BaseException as e:  # noqa: BLE001
            os.write(report_fd, b"S" + ("confinement failed: %r" % (e,)).encode()[:300])
            os._exit(0)
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
        except BaseException:  # noqa: BLE001
            detail = b"exception"
    try:
        os.write(report_fd, code + detail[:400])
    finally:
        os._exit(0)


# --------------------------------------------------------------------------- the scratch directory


def _wipe(root):
    """Empty `root` (the child is dead: nothing writes any more). True when it is empty afterwards."""

    def unlock(func, path, exc_info):  # a directory the child made unreadable: open it up, retry once
        try:
            os.chmod(os.path.dirname(path) or path, 0o700)
            os.chmod(path, 0o700)
            func(path)
        except OSError:
            pass

    try:
        os.chmod(root, 0o755)
        for entry in os.scandir(root):
            if entry.is_dir(follow_symlinks=False):
                os.chmod(entry.path, 0o700)
                shutil.rmtree(entry.path, onerror=unlock)
            else:
                os.unlink(entry.path)
        os.utime(root, (0, 0))
        return not os.listdir(root)
    except (OSError, RecursionError):
        return False


def _call_dir(cfg) -> str:
    """A fresh directory for one call inside the scratch tmpfs, owned by the call's uid when root drops to one."""
    scratch = os.path.join(cfg["scratch"], "call")
    os.mkdir(scratch, 0o700)
    if cfg.get("child_uid") is not None:
        os.chown(scratch, cfg["child_uid"], cfg["child_uid"])
    return scratch


def _run_job(job, cfg, seccomp, counter):
    root = cfg["scratch"]
    scratch = _call_dir(cfg)
    r, w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(job, cfg, seccomp, scratch, w)
    os.close(w)
    deadline = start + job["timeout_s"]
    chunks, size, status = [], 0, None
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
        size += len(data)
        if size > 8192:  # bounded output: a verdict is one byte and a short message
            break
    try:
        os.kill(pid, signal.SIGKILL)  # the child cannot fork: it is the only process of the call
    except OSError:
        pass
    _, wait_status = os.waitpid(pid, 0)
    os.close(r)
    clean = _wipe(root)
    seconds = time.monotonic() - start
    raw = b"".join(chunks)
    if status is None:
        code, detail = raw[:1], raw[1:].decode("utf-8", "replace")
        status = {b"1": "pass", b"0": "fail", b"E": "error", b"M": "memory", b"S": "error"}.get(code, "killed")
        if status == "killed":
            detail = "exited without a verdict (status %d)" % wait_status
    else:
        detail = "wall-clock limit %.1f s" % job["timeout_s"]
    reply = {"status": status, "detail": detail[:500], "seconds": round(seconds, 4)}
    if not clean:
        reply["retire"] = "scratch directory could not be emptied"
    return reply


# --------------------------------------------------------------------------- start-up


def _nondumpable():
    """PR_SET_DUMPABLE 0: a process of the same uid (the child, in a user namespace) cannot ptrace this
    worker nor open its /proc/PID/{mem,fd,environ}: the job pipes stay the worker's own."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(4, 0, 0, 0, 0) == 0


def _probe(cfg, seccomp):
    """Fork one child through the same confinement and check, from inside, what the kernel enforces."""
    job = {"memory_mb": 256, "timeout_s": 2, "max_file_mb": 1}
    root = cfg["scratch"]
    scratch = _call_dir(cfg)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        out = {}
        try:
            _confine(job, cfg, seccomp, scratch)
            for name, attempt in (("fork", os.fork), ("kill_worker", lambda: os.kill(os.getppid() or 1, 0))):
                try:
                    attempt()
                    out[name] = "allowed"
                except OSError as e:
                    out[name] = errno.errorcode.get(e.errno, str(e.errno))
            try:
                os.open("/etc/.uniapl-sandbox-probe", os.O_WRONLY | os.O_CREAT, 0o600)
                out["write_etc"] = "allowed"
                os.unlink("/etc/.uniapl-sandbox-probe")
            except OSError as e:
                out["write_etc"] = errno.errorcode.get(e.errno, str(e.errno))
            out["uid"] = os.getuid()
        except BaseException as e:  # noqa: BLE001
            out["error"] = repr(e)
        os.write(w, json.dumps(out).encode()[:4000])
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    _wipe(root)
    try:
        return json.loads(data.decode())
    except ValueError:
        return {"error": "probe child gave no answer"}


def _isolation(cfg, seccomp):
    info = {"root": os.geteuid() == 0, "pid": os.getpid(), "uid_drop": cfg.get("child_uid") is not None}
    info["pidns"] = os.getpid() == 1
    info["readonly_root"] = bool(os.statvfs("/").f_flag & os.ST_RDONLY)
    try:
        import socket

        info["netns"] = [n for _, n in socket.if_nameindex()] == ["lo"]
    except OSError:
        info["netns"] = False
    info["nondumpable"] = _nondumpable()
    info["seccomp_lib"] = seccomp is not None
    info["probe"] = _probe(cfg, seccomp)
    p = info["probe"]
    info["seccomp"] = p.get("fork") == "EPERM" and "error" not in p
    return info


def main():
    cfg = json.loads(sys.argv[1])
    # The parent's import path (site-packages of its environment): the modules below come from there.
    sys.path[:] = [p for p in cfg.get("sys_path", []) if isinstance(p, str)] or sys.path
    # Loaded once here, shared by every forked child: a child may not be able to read the interpreter's
    # files (root worker: the child has its own uid), and it saves each call the import time.
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
    try:
        import pyseccomp as seccomp
    except Exception:  # the library or libseccomp.so.2 is missing
        seccomp = None
    os.chmod(cfg["scratch"], 0o755)
    info = _isolation(cfg, seccomp)
    out = sys.stdout
    out.write(json.dumps({"hello": info}) + "\n")
    out.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # nothing a job does can fill the parent's log
    counter = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        counter += 1
        try:
            reply = _run_job(json.loads(line), cfg, seccomp, counter)
        except Exception as e:  # the worker itself must survive anything a job does
            reply = {"status": "error", "detail": "worker: %r" % (e,), "seconds": 0.0, "retire": "worker error"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
        if reply.get("retire"):
            break  # the pool starts a fresh worker (fresh namespaces and scratch) for the next call


if __name__ == "__main__":
    main()
