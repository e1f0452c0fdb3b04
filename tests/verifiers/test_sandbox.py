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
    assert not r.passed and r.status in ("violation", "error", "killed")
    # a fork bomb hiding the exception still scores 0
    src = "import os\ndef evaluate(response):\n    for _ in range(1000):\n        try:\n            os.fork()\n        except BaseException:\n            pass\n    return True"
    assert not pool.run(src, RESPONSE).passed
    assert _good(pool).passed


def test_huge_allocation_fails(pool):
    assert pool.run("def evaluate(response):\n    x = 'a' * 10**10\n    return True", RESPONSE).status == "memory"
    src = "def evaluate(response):\n    keep = []\n    while True:\n        keep.append(bytearray(10**7))"
    assert not pool.run(src, RESPONSE).passed
    assert _good(pool).passed


def test_file_write_outside_scratch_is_refused(pool, tmp_path):
    target = tmp_path / "pwned.txt"
    src = f"def evaluate(response):\n    open({str(target)!r}, 'w').write('x')\n    return True"
    assert pool.run(src, RESPONSE).status == "violation"
    src = f"import os\ndef evaluate(response):\n    try:\n        os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\n    except BaseException:\n        pass\n    return True"
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
        "import ctypes\ndef evaluate(response):\n    ctypes.CDLL(None).fork()\n    return True",
        "import subprocess\ndef evaluate(response):\n    subprocess.run(['true'])\n    return True",
        "import os\ndef evaluate(response):\n    os.system('true')\n    return True",
        "import gc\ndef evaluate(response):\n    gc.get_objects()\n    return True",
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
    assert set(iso) >= {"netns", "private_tmp", "uid_drop", "root"}
    if os.geteuid() == 0:
        assert iso["uid_drop"]


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
