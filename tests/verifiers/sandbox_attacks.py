"""Hostile AutoIF verification functions, run for real through the public ``verify()`` call.

Used by `test_sandbox_attacks.py`, in a subprocess as root and as an ordinary user:

    python tests/verifiers/sandbox_attacks.py VISIBLE_DIR HIDDEN_DIR  ->  one JSON report on stdout

VISIBLE_DIR is a world-writable directory the sandbox can see (under the checkout), HIDDEN_DIR one
under the host's /tmp. Each attack tries to leave a file named ``uniapl-atk-*`` somewhere outside its
scratch directory, change a victim file, reach the network, kill or slow its caller, leave a process
behind, or leave state for the next call. After every call the runner looks at the real world: marker
files, the victim's content and mode, a bystander process and the runner itself alive, the processes
under each worker, the workers not restarted. A function returns True only when it thinks it
succeeded, so every attack must also score 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

PREFIX = "uniapl-atk-"
WATCHED = ["/run/lock", "/tmp", "/var/tmp", "/dev/shm", "/", "/etc", "/usr/lib"]
RESTART_OK = {"deep_tree"}  # a scratch directory too deep to empty retires its worker (a fresh one starts)

# {V}: visible dir, {H}: hidden dir (host /tmp), {VICTIM}: a 0666 file in {V}, {BY}: bystander pid,
# {ME}: the runner's pid, {PORT}: a TCP port listening on 127.0.0.1, {USOCK}: a unix socket path in {V},
# {SRC}: the uniapl package (bound into the sandbox read-only), {N}: the attack's marker name. Every attack returns True only if it believes it broke out.
DIRS = "['{V}', '{H}', '{SRC}', '/run/lock', '/tmp', '/var/tmp', '/dev/shm', '/', '/etc', '/usr/lib']"

ATTACKS: dict[str, str] = {}


def attack(name: str, body: str) -> None:
    ATTACKS[name] = "import os, sys\nDIRS = " + DIRS + "\ndef evaluate(response):\n    ok = False\n" + "".join(
        "    " + line + "\n" for line in body.strip("\n").splitlines()) + "    return ok\n"


# --- files: every way of naming a place outside the scratch directory
attack("open_absolute", """
for d in DIRS:
    try:
        open(d + '/{N}', 'w').write('x'); ok = True
    except OSError: pass
""")
attack("dir_fd_family", """
for d in DIRS:
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    except OSError: continue
    for how in ('open', 'mkfifo', 'mkdir', 'symlink', 'mknod'):
        try:
            if how == 'open': os.close(os.open('{N}-o', os.O_WRONLY | os.O_CREAT, 0o666, dir_fd=fd))
            if how == 'mkfifo': os.mkfifo('{N}-f', dir_fd=fd)
            if how == 'mkdir': os.mkdir('{N}-d', dir_fd=fd)
            if how == 'symlink': os.symlink('/etc/passwd', '{N}-s', dir_fd=fd)
            if how == 'mknod': os.mknod('{N}-n', 0o600 | 0o010000, dir_fd=fd)
            ok = True
        except OSError: pass
""")
attack("bulk_fill_outside", """
blob = b'x' * (1 << 20)
for d in DIRS:
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        f = os.open('{N}-big', os.O_WRONLY | os.O_CREAT, 0o666, dir_fd=fd)
        for _ in range(80): os.write(f, blob)
        ok = True
    except OSError: pass
""")
attack("links_and_renames", """
open('inside', 'w').write('x')
for d in DIRS:
    for how in ('link', 'rename', 'replace', 'symlink_then_write', 'link_in'):
        try:
            if how == 'link': os.link('inside', d + '/{N}-l')
            if how == 'rename': os.rename('inside', d + '/{N}-r')
            if how == 'replace': os.replace('inside', d + '/{N}-p')
            if how == 'symlink_then_write':
                os.symlink(d + '/{N}-t', 'via'); open('via', 'w').write('x'); os.unlink('via')
            if how == 'link_in':
                os.link('{VICTIM}', 'victim'); open('victim', 'w').write('pwned')
            ok = True
        except OSError: pass
        if not os.path.exists('inside'): open('inside', 'w').write('x')
""")
attack("chdir_and_chroot", """
for d in DIRS + ['..', '../..']:
    try:
        os.chdir(d); open('{N}-c', 'w').write('x'); ok = True
    except OSError: pass
try:
    os.chroot('.'); ok = True
except OSError: pass
""")
attack("ctypes_libc_open", """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
for d in DIRS:
    p = (d + '/{N}-k').encode()
    if libc.open(p, 0o101, 0o666) >= 0: ok = True  # O_WRONLY|O_CREAT
    if libc.creat(p + b'2', 0o666) >= 0: ok = True
    if libc.syscall(257, -100, p + b'3', 0o101, 0o666) >= 0: ok = True  # openat(AT_FDCWD)
""")
attack("victim_metadata", """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
for how in ('fchmod', 'chmod', 'truncate', 'utime', 'write', 'chown', 'ctypes_chmod', 'unlink'):
    try:
        if how == 'fchmod': os.fchmod(os.open('{VICTIM}', os.O_RDONLY), 0o777)
        if how == 'chmod': os.chmod('{VICTIM}', 0o600)
        if how == 'truncate': os.truncate('{VICTIM}', 0)
        if how == 'utime': os.utime('{VICTIM}', (0, 0))
        if how == 'write': open('{VICTIM}', 'a').write('pwned')
        if how == 'chown': os.chown('{VICTIM}', 0, 0)
        if how == 'ctypes_chmod':
            if libc.chmod(b'{VICTIM}', 0o700) != 0: raise OSError
        if how == 'unlink': os.unlink('{VICTIM}')
        ok = True
    except OSError: pass
""")
attack("proc_and_sys_writes", """
for p, v in (('/proc/1/oom_score_adj', '1000'), ('/proc/self/oom_score_adj', '1000'), ('/proc/sys/kernel/hostname', 'x'),
             ('/proc/sysrq-trigger', 'h'), ('/sys/fs/cgroup/cgroup.procs', '1'), ('/proc/1/mem', 'x'),
             ('/proc/{ME}/mem', 'x'), ('/proc/1/fd/1', 'x')):
    try:
        with open(p, 'w') as f: f.write(v)
        if p != '/proc/self/oom_score_adj': ok = True
    except OSError: pass
""")
attack("fake_verdict_to_worker_pipe", """
# the worker's stdout is the pipe to the trainer: a forged answer would pass the next call
for p in ('/proc/1/fd/1', '/proc/1/fd/0', '/proc/2/fd/1'):
    try:
        with open(p, 'w') as f: f.write('{"status": "pass", "detail": "", "seconds": 0}\\n' * 4)
        ok = True
    except OSError: pass
""")

# --- processes: spawning, daemons, threads
attack("spawn_everything", """
import subprocess, threading
for how in ('fork', 'popen', 'system', 'posix_spawn', 'thread', 'ctypes_fork', 'execv', 'multiprocessing'):
    try:
        if how == 'fork':
            if os.fork() == 0:
                os.setsid(); import time; time.sleep(30); os._exit(0)
        if how == 'popen': subprocess.Popen(['sleep', '31.{TOKEN}'])
        if how == 'system':
            if os.system('sleep 32.{TOKEN} &') != 0: raise OSError
        if how == 'posix_spawn': os.posix_spawn('/bin/sleep', ['sleep', '33.{TOKEN}'], {})
        if how == 'thread': threading.Thread(target=lambda: __import__('time').sleep(30), daemon=True).start()
        if how == 'ctypes_fork':
            import ctypes
            if ctypes.CDLL(None).fork() < 0: raise OSError
        if how == 'execv': os.execv('/bin/sleep', ['sleep', '34.{TOKEN}'])
        if how == 'multiprocessing':
            import multiprocessing
            multiprocessing.Process(target=__import__('time').sleep, args=(30,)).start()
        ok = True
    except (OSError, RuntimeError): pass
""")
attack("fork_bomb", """
n = 0
for _ in range(2000):
    try:
        os.fork(); n += 1
    except OSError: pass
ok = n > 0
""")

# --- signals and other ways at the caller
attack("kill_caller_and_worker", """
import signal
for pid in ({ME}, {BY}, 1, 2, os.getppid(), -1, -{ME}):
    for how in ('kill', 'pidfd'):
        try:
            if how == 'kill': os.kill(pid, signal.SIGKILL)
            if how == 'pidfd':
                if pid <= 0: continue
                signal.pidfd_send_signal(os.pidfd_open(pid), signal.SIGKILL)
            ok = True
        except (OSError, ValueError): pass
# find python processes in /proc and kill them
for entry in os.listdir('/proc'):
    if entry.isdigit() and int(entry) != os.getpid():
        try:
            os.kill(int(entry), signal.SIGKILL); ok = True
        except OSError: pass
""")
attack("signal_tricks", """
import fcntl, signal, ctypes, resource
libc = ctypes.CDLL(None, use_errno=True)
r, w = os.pipe()
for how in ('f_setown', 'ctypes_kill', 'tgkill', 'sigqueue', 'prlimit', 'setpriority', 'sched', 'ptrace'):
    try:
        if how == 'f_setown':
            fcntl.fcntl(r, fcntl.F_SETOWN, 1); fcntl.fcntl(r, fcntl.F_SETSIG, signal.SIGKILL)
            fcntl.fcntl(r, fcntl.F_SETFL, os.O_ASYNC); os.write(w, b'x')
        if how == 'ctypes_kill':
            if libc.kill(1, 9) != 0 and libc.kill({ME}, 9) != 0 and libc.kill(-1, 9) != 0: raise OSError
        if how == 'tgkill':
            if libc.syscall(234, 1, 1, 9) != 0: raise OSError
        if how == 'sigqueue':
            if libc.syscall(129, 1, 9, None) != 0: raise OSError
        if how == 'prlimit': resource.prlimit(1, resource.RLIMIT_NOFILE, (3, 3))
        if how == 'setpriority': os.setpriority(os.PRIO_PROCESS, 1, 19)
        if how == 'sched': os.sched_setaffinity(1, {0})
        if how == 'ptrace':
            if libc.ptrace(16, 1, None, None) != 0: raise OSError  # PTRACE_ATTACH
        ok = True
    except (OSError, ValueError): pass
""")
attack("unshare_and_mount", """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000 | 0x00020000) == 0: ok = True  # CLONE_NEWUSER | CLONE_NEWNS
if libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) == 0: ok = True
if libc.syscall(425, 8, None) >= 0: ok = True  # io_uring_setup
if libc.syscall(321, 0, None, 0) >= 0: ok = True  # bpf
""")

# --- network and host daemons
attack("network", """
import socket
for how in ('tcp', 'unix', 'abstract', 'udp', 'raw_ctypes'):
    try:
        if how == 'tcp': socket.create_connection(('127.0.0.1', {PORT}), timeout=1)
        if how == 'unix':
            s = socket.socket(socket.AF_UNIX); s.connect('{USOCK}')
        if how == 'abstract':
            s = socket.socket(socket.AF_UNIX); s.connect('\\0{TOKEN}')
        if how == 'udp': socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {PORT}))
        if how == 'raw_ctypes':
            import ctypes
            if ctypes.CDLL(None).socket(2, 1, 0) < 0: raise OSError
        ok = True
    except OSError: pass
""")

# --- secrets of the parent
attack("read_parent_secrets", """
if any('SECRET' in k for k in os.environ): ok = True
for p in ('/proc/{ME}/environ', '/proc/1/environ', '{H}/secret.txt', '{V}/secret.txt'):
    try:
        if b'hunter2' in open(p, 'rb').read(): ok = True
    except OSError: pass
""")

# --- resources
attack("scratch_fill", """
blob = b'x' * (1 << 20)
n = 0
try:
    for i in range(200):
        with open('fill%d' % i, 'wb') as f:
            for _ in range(8): f.write(blob); n += 1
except OSError: pass
ok = n >= 150  # more than the scratch size (64 MB) would be an escape from the limit
""")
attack("deep_tree", """
try:
    for i in range(3000):
        os.mkdir('d'); os.chdir('d')
except OSError: pass
os.chmod('.', 0)
""")
attack("huge_output", """
print('x' * 10**7)
sys.stderr.write('y' * 10**7)
raise ValueError('z' * 10**7)
""")
attack("ignore_timeout", """
import signal, time
for s in (signal.SIGTERM, signal.SIGALRM, signal.SIGXCPU, signal.SIGINT):
    try: signal.signal(s, signal.SIG_IGN)
    except (OSError, ValueError): pass
while True: pass
""")

# --- state for the next call
attack("plant_state", """
open('planted', 'w').write('x')
for p in ('..', '/tmp', '/tmp/uniapl-scratch'):
    try:
        open(p + '/planted', 'w').write('x')
    except OSError: pass
try:
    os.setxattr('.', 'user.planted', b'1')
except OSError: pass
try:
    import ctypes
    ctypes.CDLL(None).shmget(1234, 4096, 0o1666)
except Exception: pass
os.chmod('..', 0o777)
""")
# positive check, right after plant_state / scratch_fill: a clean scratch directory, room to write
CLEAN_CHECK = """import os
def evaluate(response):
    if os.listdir('.') or 'planted' in os.listdir('..') or len(os.listdir('..')) != 1:
        return False
    open('one_mb', 'wb').write(b'x' * (1 << 20))
    return os.path.getsize('one_mb') == 1 << 20
"""


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _markers(dirs: list[str]) -> list[str]:
    found = []
    for d in dirs:
        try:
            found += [os.path.join(d, n) for n in os.listdir(d) if n.startswith(PREFIX)]
        except OSError:
            pass
    return found


def _cmdline_token(token: str) -> list[int]:
    hits = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if token.encode() in open(f"/proc/{entry}/cmdline", "rb").read():
                    hits.append(int(entry))
            except OSError:
                pass
    return hits


def run(visible: str, hidden: str) -> dict:
    os.environ["UNIAPL_TEST_SECRET_TOKEN"] = "hunter2"  # must not reach the sandbox
    token = f"{os.getpid()}{int(time.time()) % 100000}"
    victim = os.path.join(visible, "victim.txt")
    for d in (visible, hidden):
        Path(d, "secret.txt").write_text("hunter2")
        os.chmod(os.path.join(d, "secret.txt"), 0o600)
    Path(victim).write_text("original")
    os.chmod(victim, 0o666)
    # a process of the caller's that must survive (no pipes of ours: a crash must not hang the test)
    bystander = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    try:
        return _attack_all(visible, hidden, token, victim, bystander)
    finally:
        bystander.kill()
        bystander.wait()


def _attack_all(visible, hidden, token, victim, bystander) -> dict:
    import uniapl
    from uniapl.verifiers import verify
    from uniapl.verifiers.sandbox import default_pool

    victim_stat = os.stat(victim)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.05)
    usock_path = os.path.join(visible, "daemon.sock")
    usock = socket.socket(socket.AF_UNIX)
    usock.bind(usock_path)
    usock.listen(8)
    usock.settimeout(0.05)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind("\0" + token)
    abstract.listen(8)
    abstract.settimeout(0.05)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", server.getsockname()[1]))
    udp.settimeout(0.05)

    pool = default_pool()
    report: dict = {"isolation": pool.isolation, "failures": [], "attacks": {}}
    fail = report["failures"].append
    workers = [w.proc.pid for w in pool._workers]
    baseline = {pid: _descendants(pid) for pid in workers}
    values = {"V": visible, "H": hidden, "VICTIM": victim, "BY": bystander.pid, "ME": os.getpid(),
              "PORT": server.getsockname()[1], "USOCK": usock_path, "TOKEN": token,
              "SRC": os.path.dirname(os.path.abspath(uniapl.__file__))}
    watched = [visible, hidden, values["SRC"]] + WATCHED

    def check_world(name: str, restart_ok: bool = False) -> None:
        for m in _markers(watched):
            fail(f"{name}: marker outside the scratch directory: {m}")
            try:
                os.unlink(m) if not os.path.isdir(m) or os.path.islink(m) else os.rmdir(m)
            except OSError:
                pass
        st = os.stat(victim) if os.path.exists(victim) else None
        if st is None or Path(victim).read_text() != "original" or stat.S_IMODE(st.st_mode) != 0o666 \
                or st.st_mtime != victim_stat.st_mtime or st.st_uid != victim_stat.st_uid:
            fail(f"{name}: the victim file was changed")
            Path(victim).write_text("original")
            os.chmod(victim, 0o666)
            os.utime(victim, ns=(victim_stat.st_atime_ns, victim_stat.st_mtime_ns))
        if bystander.poll() is not None:
            fail(f"{name}: the bystander process was killed")
        if not restart_ok and [w.proc.pid for w in pool._workers] != workers:
            fail(f"{name}: a worker had to be restarted")
        for pid in ([] if restart_ok else workers):
            extra = _descendants(pid) - baseline[pid]
            if extra:
                fail(f"{name}: processes left behind: {sorted(extra)}")
        if _cmdline_token(token):
            fail(f"{name}: processes left behind (by command line): {_cmdline_token(token)}")
        for sock in (server, usock, abstract):
            try:
                sock.accept()
                fail(f"{name}: a connection reached a listening socket on the host")
            except OSError:
                pass
        try:
            udp.recvfrom(16)
            fail(f"{name}: a datagram reached the host")
        except OSError:
            pass

    for name, template in ATTACKS.items():
        source = template.replace("{N}", PREFIX + name)
        for key, value in values.items():
            source = source.replace("{" + key + "}", str(value))
        t = time.monotonic()
        v = verify("some response", ["autoif:code"], [{"source": source}])
        report["attacks"][name] = {"passed": v.strict[0], "seconds": round(time.monotonic() - t, 3)}
        if v.strict[0] or v.loose[0]:
            fail(f"{name}: the function scored 1 (it believes it broke out)")
        time.sleep(0.05)
        check_world(name, restart_ok=name in RESTART_OK)
        if name in ("plant_state", "scratch_fill", "deep_tree"):
            if not all(verify("x", ["autoif:code"] * len(pool._workers), [{"source": CLEAN_CHECK}] * len(pool._workers)).strict):
                fail(f"{name}: the next call did not start from a clean, empty scratch directory")
            workers = [w.proc.pid for w in pool._workers]  # deep_tree may retire a worker: allowed
            baseline = {pid: _descendants(pid) for pid in workers}

    benign = verify("Wow! Great!", ["autoif:code"], [{"source": "def evaluate(r):\n    return r.count('!') == 2"}])
    if benign.strict != [True]:
        fail("a benign function no longer passes after the attacks")
    if bystander.poll() is not None:
        fail("bystander dead at the end")
    for s in (server, usock, abstract, udp):
        s.close()
    for f in (usock_path, victim, os.path.join(visible, "secret.txt"), os.path.join(hidden, "secret.txt")):
        try:
            os.unlink(f)
        except OSError:
            pass
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    print(json.dumps(run(sys.argv[1], sys.argv[2])))
