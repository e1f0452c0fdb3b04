"""A process with no micro-batches in a step joins the others' gradient all-reduce instead of leaving them waiting."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import TINY


def test_rank_without_jobs_does_not_hang_the_others(tmp_path):
    out = tmp_path / "idle"
    worker = Path(__file__).with_name("dist_idle_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29523",
           str(worker), str(out), *TINY, "algorithm=unified", "train.steps=3", "eval.enabled=false",
           "train.gradient_accumulation_steps=2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:  # the hang this guards against: end the launcher AND its workers
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        raise AssertionError(f"2-process run with an idle rank hung:\n{log[-2000:]}") from None
    assert proc.returncode == 0, log[-4000:]
    w0, w1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks differ in {k}"
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert "skipped_update" not in rows[1] and "loss/sft" in rows[1]  # rank 0 trained, rank 1 joined
    assert rows[2]["skipped_update"] == 1.0 and "loss/total" not in rows[2]  # nobody had a job: no step
