"""`uniapl experiment` with worker processes, stopped by SIGTERM or SIGKILL: no worker is left training."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.matrix.test_experiment import SMOKE, tiny_experiment

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _workers(pid: int) -> list[int]:
    """The experiment's pool workers (spawned children; not the resource tracker)."""
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return [k for k in kids if b"--multiprocessing-fork" in Path(f"/proc/{k}/cmdline").read_bytes()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _start(tmp_path: Path):
    out = tmp_path / "exp"
    logs = (tmp_path / "stdout.txt").open("w"), (tmp_path / "stderr.txt").open("w")  # files: no pipe kept open
    args = [sys.executable, "-m", "uniapl.cli", "experiment", SMOKE, *tiny_experiment(out), "jobs=2", "steps=5000"]
    p = subprocess.Popen(args, cwd=REPO, stdout=logs[0], stderr=logs[1], start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(out.glob("runs/*/seed-0/train.log"))) < 2:
        assert p.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
        time.sleep(0.3)
    time.sleep(1.0)
    workers = _workers(p.pid)
    assert len(workers) == 2 and all(_alive(w) for w in workers)
    return p, workers


def _gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not any(_alive(w) for w in pids):
            return True
        time.sleep(0.2)
    return False


def test_sigterm_stops_the_workers_and_exits_130(tmp_path):
    p, workers = _start(tmp_path)
    try:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 130
        assert _gone_within(workers, 10)
        err = (tmp_path / "stderr.txt").read_text()
        assert "uniapl experiment: interrupted" in err and "leaked semaphore" not in err
    finally:
        for w in [p.pid, *workers]:
            if _alive(w):
                os.kill(w, signal.SIGKILL)


def test_workers_die_with_a_killed_experiment(tmp_path):
    p, workers = _start(tmp_path)
    try:
        p.kill()  # SIGKILL: no handler runs; the kernel's parent-death signal ends the workers
        p.wait(timeout=30)
        assert _gone_within(workers, 15)
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
