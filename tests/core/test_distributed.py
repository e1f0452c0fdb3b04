"""Two processes on the CPU (gloo) through `accelerate launch`: both ranks end with identical weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import TINY  # noqa: F401  (same tiny settings as the other end-to-end tests)


def test_two_process_ddp_ranks_end_identical(tmp_path):
    out = tmp_path / "ddp"
    worker = Path(__file__).with_name("dist_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           str(worker), str(out), *TINY, "algorithm=unified", "train.steps=3"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "rank0.world").read_text() == "2"
    w0, w1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    init = None
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks differ in {k}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # only the main process logs
    del init
