"""Untrusted AutoIF verification code: hostile functions score 0 and the pool keeps working."""

import os
import socket
import time

import pytest

from uniapl.verifiers import verify
from uniapl.verifiers.sandbox import SandboxConfig, SandboxPool

RESPONSE = "Hello there, this is a plain English sentence."


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(SandboxConfig(timeout_s=1.5, memory_mb=384, workers=2)) as p:
        yield p


def _good(pool):
    return pool.run("def evaluate(response):\n    return 'plain' in response", RESPONSE)


def test_benign_function_passes_and_fails(pool):
    assert _good(pool).passed
    assert pool.run("def evaluate(response):\n    return len(response) > 10**6", RESPONSE).status == "fail"
    # only a real True passes (AutoIF functions return bools)
    assert pool.run("def evaluate(response):\n    return 1", RESPONSE).status == "fail"
    # helper functions and preloaded modules work
    src = "import re, string\ndef n(r):\n    return len(re.findall(r'\\w+', r))\ndef evaluate(response):\n    return n(response) == 8"
    assert pool.run(src, RESPONSE).passed
    # a standard-library module the worker did not load beforehand (a root worker's child has its own uid)
    src = "import zipfile, io\ndef evaluate(response):\n    return zipfile.is_zipfile(io.BytesIO(b'no'))"
    assert pool.run(src, RESPONSE).status == "fail"


def test_language_detection_is_available_and_seeded(pool):
    src = "from langdetect import detect\ndef evaluate(response):\n    return detect(response) == 'en'"
    assert all(pool.run(src, RESPONSE).passed for _ in range(3))


def test_infinite_loop_times_out(pool):
    t = time.monotonic()
    r = pool.run("def evaluate(response):\n    while True:\n        pass", RESPONSE)
    assert r.status == "timeout" and not r.passed
    assert time.monotonic() - t < 10
    assert _good(pool).passed  # the worker survived


def test_fork_bomb_is_contained(pool):
    src = "import os\ndef evaluate(response):\n    while True:\n        os.fork()"
    r = pool.run(src, RESPONSE)
    assert not r.passed and r.status == "error" and "PermissionError" in r.detail
    # a fork bomb hiding the exception: the kernel refused every fork (threads too)
    src = ("import os, threading\ndef evaluate(response):\n    n = 0\n    for _ in range(1000):\n        try:\n"
           "            os.fork(); n += 1\n        except OSError:\n            pass\n    try:\n"
           "        threading.Thread(target=print).start(); n += 1\n    except RuntimeError:\n        pass\n    return n == 0")
    assert pool.run(src, RESPONSE).passed
    assert _good(pool).passed


def test_huge_allocation_fails(pool):
    assert pool.run("def evaluate(response):\n    x = 'a' * 10**10\n    return True", RESPONSE).status == "memory"
    src = "def evaluate(response):\n    keep = []\n    while True:\n        keep.append(bytearray(10**7))"
    assert not pool.run(src, RESPONSE).passed
    assert _good(pool).passed


def test_file_write_outside_scratch_is_refused(pool, tmp_path):
    target = tmp_path / "pwned.txt"
    src = f"def evaluate(response):\n    open({str(target)!r}, 'w').write('x')\n    return True"
    r = pool.run(src, RESPONSE)
    assert r.status == "error" and ("No such file" in r.detail or "Read-only" in r.detail), r
    src = f"import os\ndef evaluate(response):\n    try:\n        os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\n        return True\n    except BaseException:\n        return False"
    assert not pool.run(src, RESPONSE).passed
    src = "import os\ndef evaluate(response):\n    os.remove('/etc/hostname')\n    return True"
    assert not pool.run(src, RESPONSE).passed
    assert not target.exists()
    # the scratch directory itself is writable
    src = "def evaluate(response):\n    open('notes.txt', 'w').write(response)\n    return open('notes.txt').read() == response"
    assert pool.run(src, RESPONSE).passed


def test_socket_is_refused(pool):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    try:
        src = f"import socket\ndef evaluate(response):\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n    return True"
        assert not pool.run(src, RESPONSE).passed
        src = f"def evaluate(response):\n    import _socket\n    s = _socket.socket()\n    s.connect(('127.0.0.1', {port}))\n    return True"
        assert not pool.run(src, RESPONSE).passed
        accept()
        assert not accepted
    finally:
        server.close()


def test_ctypes_and_process_escapes_are_refused(pool):
    for src in (
        # ctypes is importable: the kernel, not an import list, says no (fork returns -1 here)
        "import ctypes\ndef evaluate(response):\n    return ctypes.CDLL(None).fork() >= 0",
        "import subprocess\ndef evaluate(response):\n    subprocess.run(['true'])\n    return True",
        "import os\ndef evaluate(response):\n    return os.system('true') == 0",
        "import os, signal\ndef evaluate(response):\n    os.kill(os.getppid(), signal.SIGKILL)\n    return True",
    ):
        assert not pool.run(src, RESPONSE).passed, src
    assert _good(pool).passed


def test_broken_sources_fail(pool):
    assert pool.run("def evaluate(response) return", RESPONSE).status == "error"
    assert pool.run("x = 1", RESPONSE).status == "error"
    assert pool.run("def evaluate(response):\n    raise SystemExit(0)", RESPONSE).status == "error"
    assert pool.run("def evaluate(response):\n    return evaluate(response)", RESPONSE).status == "error"


def test_run_many_in_parallel(pool):
    good = "def evaluate(response):\n    return response.startswith('a')"
    calls = [(good, ["a b"]), (good, ["b"])] * 10 + [("def evaluate(r):\n    while True: pass", ["x"])]
    out = pool.run_many(calls)
    assert [r.passed for r in out[:20]] == [True, False] * 10
    assert out[-1].status == "timeout"


def test_isolation_report_is_honest(pool):
    iso = pool.isolation
    assert iso["mode"] == "kernel" and iso["launcher"] == "bwrap"
    assert iso["pidns"] and iso["netns"] and iso["readonly_root"] and iso["seccomp"]
    # what the probe child saw from inside: the kernel, not Python, said no
    assert iso["probe"]["fork"] == "EPERM" and iso["probe"]["write_etc"] == "EROFS"
    assert iso["uid_drop"] == (os.geteuid() == 0)
    if os.geteuid() == 0:
        assert iso["probe"]["uid"] != 0


def test_one_call_cannot_affect_the_next(pool):
    plant = "import os\ndef evaluate(response):\n    open('left', 'w').write('x')\n    os.mkdir('dir')\n    return True"
    look = "import os\ndef evaluate(response):\n    return os.listdir('.') == [] and os.listdir('..') == ['call']"
    for _ in range(2):  # both workers
        assert pool.run(plant, RESPONSE).passed
        assert pool.run(look, RESPONSE).passed
        assert pool.run(look, RESPONSE).passed


def test_environment_is_empty(pool):
    os.environ["UNIAPL_TEST_TOKEN"] = "secret"
    try:
        with SandboxPool(SandboxConfig(workers=1)) as p:
            src = "import os\ndef evaluate(response):\n    return sorted(os.environ) == ['HOME', 'LANG', 'PATH', 'TMPDIR']"
            assert p.run(src, RESPONSE).passed
    finally:
        del os.environ["UNIAPL_TEST_TOKEN"]


def test_refuses_without_kernel_isolation_unless_unsafe(monkeypatch):
    from uniapl.infra.schema import ConfigError
    from uniapl.verifiers.sandbox import SandboxUnavailable

    monkeypatch.setenv("UNIAPL_BWRAP", "/nonexistent/bwrap")  # as on a machine without bubblewrap
    with pytest.raises(SandboxUnavailable, match="verifiers.sandbox: unsafe"):
        SandboxPool(SandboxConfig(workers=1))
    assert issubclass(SandboxUnavailable, ConfigError)  # the CLI reports it as one message, exit status 2
    monkeypatch.setenv("UNIAPL_SANDBOX", "unsafe")
    with pytest.warns(RuntimeWarning, match="UNSAFE SANDBOX"):
        with SandboxPool(SandboxConfig(workers=1)) as p:
            assert p.isolation["mode"] == "unsafe" and p.isolation["launcher"] == "none"
            assert p.run("def evaluate(response):\n    return True", RESPONSE).passed
            # seccomp still applies where the library is there
            if p.isolation["seccomp"]:
                assert not p.run("import os\ndef evaluate(response):\n    os.fork()\n    return True", RESPONSE).passed
    monkeypatch.setenv("UNIAPL_SANDBOX", "sloppy")
    with pytest.raises(ConfigError, match="UNIAPL_SANDBOX"):
        SandboxPool(SandboxConfig(workers=1))


def test_verify_raises_instead_of_scoring_zero_when_refused(monkeypatch):
    from uniapl.verifiers import sandbox
    from uniapl.verifiers.sandbox import SandboxUnavailable

    monkeypatch.setenv("UNIAPL_BWRAP", "/nonexistent/bwrap")
    monkeypatch.setattr(sandbox, "_default", None)
    with pytest.raises(SandboxUnavailable):
        verify("x!", ["autoif:code"], [{"source": "def evaluate(r):\n    return True"}])
    monkeypatch.setattr(sandbox, "_default", None)


def test_config_key_sets_the_mode(monkeypatch):
    from uniapl.config import load_config
    from uniapl.infra.schema import ConfigError
    from uniapl.verifiers import sandbox

    monkeypatch.delenv("UNIAPL_SANDBOX", raising=False)
    monkeypatch.setattr(sandbox, "_configured_mode", None)
    try:
        cfg = load_config(None, ["verifiers.sandbox=unsafe"])
        assert cfg.verifiers.sandbox == "unsafe"
        assert sandbox.sandbox_mode() == "kernel"  # loading a config changes nothing; running it does
        sandbox.configure(cfg.verifiers.sandbox)  # what pipeline.run_training does first
        assert sandbox.sandbox_mode() == "unsafe"
        sandbox.configure(load_config(None, []).verifiers.sandbox)
        assert sandbox.sandbox_mode() == "kernel"
        with pytest.raises(ConfigError, match="verifiers.sandbox"):
            load_config(None, ["verifiers.sandbox=off"])
    finally:
        sandbox.configure(None)


def test_autoif_checker_through_verify():
    ok = "def evaluate(response):\n    return response.count('!') >= 2"
    loop = "def evaluate(response):\n    while True: pass"
    v = verify("Wow! Great!", ["autoif:code", "autoif:code"], [{"source": ok}, {"source": ok}])
    assert v.strict == [True, True] and v.loose == [True, True]
    v = verify("Wow!", ["autoif:code"], [{"source": ok}])
    assert v.strict == [False] and v.loose == [False]
    from uniapl.verifiers.sandbox import default_pool

    t = time.monotonic()
    v = verify("Wow! Great!", ["autoif:code", "autoif:code"], [{"source": loop}, {"source": ok}])
    assert v.strict == [False, True]
    assert time.monotonic() - t < default_pool().config.timeout_s + 10


def test_verify_many_spreads_autoif_calls_over_the_pool():
    from uniapl.verifiers import verify_many

    ok = "def evaluate(response):\n    return response.endswith('!')"
    responses = [f"answer {i}" + ("!" if i % 2 else "") for i in range(12)]
    out = verify_many(responses, [["autoif:code"]] * 12, [[{"source": ok}]] * 12)
    assert [v.strict for v in out] == [[bool(i % 2)] for i in range(12)]
    from uniapl.verifiers import autoif

    assert not autoif._prefetched
