"""Killed at any moment (kill -9 or a test-only fault point), a resumed run ends exactly where an
uninterrupted one does: same final weights (within 1e-5), same summary metrics, each metrics step once."""

import json
import os
import random
import multiprocessing as mp
import signal
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import TINY
from uniapl.config import load_config
from uniapl.training.run import run_training

# two stages (warm-up SFT, then UniAPL), 4 steps each, a checkpoint every 2 steps
ARGS = ["configs/quickstart.yaml", *TINY, "stages.0.overrides.train.steps=4", "stages.0.overrides.train.sft_batch_size=4",
        "train.steps=4", "train.save_every=2", "train.keep_checkpoints=5", "eval.every=2",
        "stages.0.cache=false"]  # the warm-up is trained (and killed) every time, never copied from the cache
LAST = "stage-1-unified"


def _child(out: str, extra: list[str], fault: str | None) -> None:
    """A training process forked from this one (no second import of torch): the fault points' os._exit and
    SIGKILL end it as they would end `uniapl train`."""
    # tqdm's write lock is a multiprocessing RLock made in this test's process and shared by every forked child: a
    # child SIGKILLed while writing a progress bar leaves it held, and the next child would wait on it forever.
    # Each child gets a lock of its own (a separate `uniapl train` process has one anyway).
    import threading

    import tqdm.auto
    import tqdm.std

    for cls in {tqdm.std.tqdm, tqdm.auto.tqdm}:
        cls.set_lock(threading.RLock())
    os.environ.pop("UNIAPL_FAULT_AT", None)
    if fault:
        os.environ["UNIAPL_FAULT_AT"] = fault
    from uniapl.cli import main

    os._exit(main(["train", *ARGS, f"output_dir={out}", *extra]))


def _start(out: Path, *extra, fault: str | None = None):
    proc = mp.get_context("fork").Process(target=_child, args=(str(out), list(extra), fault))
    proc.start()
    return proc


def _run_cli(out: Path, *extra, fault: str | None = None, timeout: float = 600) -> int:
    proc = _start(out, *extra, fault=fault)
    proc.join(timeout)
    return proc.exitcode


def _resume_in_process(out: Path) -> dict:
    return run_training(load_config(ARGS[0], ARGS[1:] + [f"output_dir={out}", "resume=true"]))


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    summary = run_training(load_config(ARGS[0], ARGS[1:] + [f"output_dir={out}"]))
    return out, summary


def _same_as_reference(out: Path, summary: dict, reference) -> None:
    ref_out, ref_summary = reference
    a = load_file(str(ref_out / LAST / "final" / "model.safetensors"))
    b = load_file(str(out / LAST / "final" / "model.safetensors"))
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < 1e-5, k
    assert summary["eval"] == ref_summary["eval"]
    assert [e["eval"] for e in summary["stages"]] == [e["eval"] for e in ref_summary["stages"]]
    assert summary["steps"] == ref_summary["steps"] == 8
    rows, ref_rows = _rows(out), _rows(ref_out)
    assert [(r["stage"], r["step"]) for r in rows] == [(r["stage"], r["step"]) for r in ref_rows]  # each step once
    for r, q in zip(rows, ref_rows):
        for k in ("loss/total", "loss/sft", "eval/prompt_level_strict_acc"):
            if k in q:
                assert r[k] == pytest.approx(q[k], abs=1e-4), (r["stage"], r["step"], k)
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.old"))


def test_killed_at_each_named_point_then_resumed(tmp_path, reference):
    out = tmp_path / "run"
    chain = [
        "train.step:warmup@3",         # during the warm-up stage, one step after its step-2 checkpoint
        "checkpoint.written@1",        # the step-4 checkpoint complete in step-000004.tmp/, not yet renamed
        "final.written:warmup",        # the warm-up's final/ complete in final.tmp/, not yet swapped in
        "write:stage_summary.json",    # while the warm-up's stage_summary.json is written
        "eval.after:unified",          # right before the last stage's final evaluation
        "write:summary.json",          # while summary.json is written
    ]
    state = out / "stage-0-warmup" / "stage_state.json"
    seconds_after_first_kill = None
    for i, fault in enumerate(chain):
        rc = _run_cli(out, *(["resume=true"] if i else []), fault=fault)
        assert rc == 137, (fault, rc)
        if i == 0:
            seconds_after_first_kill = json.loads(state.read_text())["train_seconds"]
            assert seconds_after_first_kill > 0
    summary = _resume_in_process(out)
    _same_as_reference(out, summary, reference)
    # train_seconds counts the killed attempts too, not only the last one
    assert summary["stages"][0]["train_seconds"] >= seconds_after_first_kill


def test_random_sigkill_then_resumed(tmp_path, reference):
    """SIGKILL at a random moment of a random step. The whole run takes about a second on a fast machine, so the
    kill follows the awaited metrics row within a fraction of a step (a fixed sleep could outlast the run)."""
    out = tmp_path / "run"
    rng = random.Random(1234)
    killed = 0
    for attempt in range(3):
        proc = _start(out, *(["resume=true"] if attempt else []))
        seen = len(_rows(out)) if (out / "metrics.jsonl").exists() else 0
        target = seen + rng.randint(1, 2)  # kill during this attempt's first or second new step
        start = time.time()
        while proc.is_alive() and time.time() - start < 300:
            if (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= target:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.03))
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        killed += proc.exitcode == -signal.SIGKILL
    assert killed >= 1  # at least one attempt died mid-run
    summary = _resume_in_process(out)
    _same_as_reference(out, summary, reference)
