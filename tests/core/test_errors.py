"""A user's mistake ends in exit status 2 and one line naming the key, or the file and line; nothing written."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY
from uniapl.cli import main

GOOD = {"prompt": "Write in lowercase.", "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}],
        "teacher": "all lowercase here.", "ground_truth": "ok"}


def _jsonl(path: Path, rows) -> Path:
    path.write_bytes(b"".join(r if isinstance(r, bytes) else (json.dumps(r) + "\n").encode() for r in rows))
    return path


def _train(tmp_path, *overrides, out=None):
    out = out or tmp_path / "run"
    return main(["train", "configs/quickstart.yaml", *TINY, "stages=[]", "eval.enabled=false", f"output_dir={out}",
                 *overrides])


def _one_error(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ------------------------------------------------------------------ data files


def test_unknown_instruction_id_names_file_and_line(tmp_path, capsys):
    data = _jsonl(tmp_path / "d.jsonl", [GOOD, {**GOOD, "instruction_id_list": ["keywords:nope"]}])
    assert _train(tmp_path, "algorithm=grpo", f"data.train.path={data}") == 2
    _one_error(capsys, f"{data}:2", "unknown instruction id 'keywords:nope'")
    assert not (tmp_path / "run").exists()  # validation comes before anything is written


def test_kwargs_of_the_wrong_type_name_file_line_and_kwarg(tmp_path, capsys):
    bad = {**GOOD, "instruction_id_list": ["length_constraints:number_words"],
           "kwargs": [{"num_words": "many", "relation": "at least"}]}
    data = _jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, bad])
    assert _train(tmp_path, "algorithm=grpo", f"data.train.path={data}") == 2
    _one_error(capsys, f"{data}:3", "num_words='many' should be int")


def test_invalid_utf8_names_file_and_line(tmp_path, capsys):
    data = _jsonl(tmp_path / "d.jsonl", [GOOD, b'{"prompt": "caf\xe9"}\n'])
    assert _train(tmp_path, "algorithm=sft", f"data.train.path={data}") == 2
    _one_error(capsys, f"{data}:2", "not valid UTF-8", "0xe9")


def test_empty_training_set_is_refused_before_any_work(tmp_path, capsys):
    data = _jsonl(tmp_path / "empty.jsonl", [])
    assert _train(tmp_path, "algorithm=sft", f"data.train.path={data}", "eval.enabled=true") == 2
    _one_error(capsys, "key 'data.train'", "holds no records")
    assert not (tmp_path / "run").exists()


def test_empty_evaluation_set_is_refused(tmp_path, capsys):
    data = _jsonl(tmp_path / "d.jsonl", [GOOD])
    empty = _jsonl(tmp_path / "empty.jsonl", [])
    assert _train(tmp_path, "algorithm=sft", f"data.train.path={data}", f"data.eval.path={empty}",
                  "eval.enabled=true") == 2
    _one_error(capsys, "key 'data.eval'", "eval.enabled=false")
    assert _train(tmp_path, "algorithm=sft", "eval.enabled=true", "eval.limit=0") == 2
    _one_error(capsys, "key 'data.eval'", "eval.limit is 0")


def test_missing_data_file_names_the_key(tmp_path, capsys):
    assert _train(tmp_path, "algorithm=sft", f"data.train.path={tmp_path / 'typo.jsonl'}") == 2
    _one_error(capsys, "key 'data.train.path'", "not found", "typo.jsonl")
    assert _train(tmp_path, "algorithm=sft", "data.eval.path=/nonexistent/dir/eval.jsonl", "eval.enabled=true") == 2
    _one_error(capsys, "key 'data.eval.path'")


# ------------------------------------------------------------------ config values


@pytest.mark.parametrize("override, needle", [
    ("train.learning_rate=0", "key 'train.learning_rate' must be > 0"),
    ("train.learning_rate=-1e-3", "key 'train.learning_rate' must be > 0"),
    ("train.steps=-1", "key 'train.steps' must be >= 0"),
    ("train.sft_batch_size=0", "key 'train.sft_batch_size' must be >= 1"),
])
def test_bad_train_values_name_the_key(tmp_path, capsys, override, needle):
    assert _train(tmp_path, override) == 2
    _one_error(capsys, "command line", needle)


def test_bad_value_in_a_file_names_its_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("algorithm: sft\ntrain:\n  steps: 3\n  learning_rate: 0.0\n")
    assert main(["train", str(cfg), f"output_dir={tmp_path / 'run'}"]) == 2
    _one_error(capsys, f"{cfg}:4", "key 'train.learning_rate'")


# ------------------------------------------------------------------ models


def test_model_path_that_does_not_exist(tmp_path, capsys):
    assert _train(tmp_path, f"model.name_or_path={tmp_path / 'no' / 'such' / 'model'}") == 2
    _one_error(capsys, "key 'model.name_or_path'", "does not exist")
    empty = tmp_path / "empty_model"
    empty.mkdir()
    assert _train(tmp_path, f"model.name_or_path={empty}") == 2
    _one_error(capsys, "key 'model.name_or_path'", "no config.json")


def test_discriminator_model_path_checked_before_training(tmp_path, capsys):
    missing = tmp_path / "no" / "polar"
    assert _train(tmp_path, "discriminator.name=polar", f"discriminator.model_path={missing}") == 2
    _one_error(capsys, "key 'discriminator.model_path'", "does not exist")
    assert _train(tmp_path, "discriminator.name=polar") == 2
    _one_error(capsys, "key 'discriminator.model_path'", "needs a local model folder")
    assert _train(tmp_path, "discriminator.name=embedding", f"discriminator.model_path={missing}") == 2
    _one_error(capsys, "key 'discriminator.model_path'", "does not exist")
    assert _train(tmp_path, "discriminator.name=learned", "discriminator.learned.model=hf") == 2
    _one_error(capsys, "key 'discriminator.model_path'", "learned.model=hf")
    assert not (tmp_path / "run").exists()  # nothing written


def test_uncached_hub_id_offline_fails_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    assert _train(tmp_path, "model.name_or_path=nobody-xyz/not-a-model") == 2
    assert time.perf_counter() - t < 30
    _one_error(capsys, "key 'model.name_or_path'", "HF_HUB_OFFLINE", "huggingface-cli download")


def test_unreachable_hub_fails_quickly(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_dead_port()}")
    t = time.perf_counter()
    assert _train(tmp_path, "model.name_or_path=nobody-xyz/not-a-model") == 2
    assert time.perf_counter() - t < 30
    _one_error(capsys, "key 'model.name_or_path'", "cannot be reached", "127.0.0.1")


# ------------------------------------------------------------------ output_dir


def test_output_dir_that_is_a_file_or_under_one(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("mine")
    assert _train(tmp_path, out=f) == 2
    _one_error(capsys, "key 'output_dir'", "is a file")
    assert _train(tmp_path, out=f / "sub") == 2
    _one_error(capsys, "key 'output_dir'", "cannot be created")
    assert f.read_text() == "mine"


def test_output_dir_that_cannot_be_written(tmp_path, capsys):
    assert _train(tmp_path, out=Path("/proc/uniapl-not-writable/run")) == 2
    _one_error(capsys, "key 'output_dir'")


def test_rerun_never_deletes_a_finished_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tmp_path, "algorithm=sft", "train.steps=1") == 0
    capsys.readouterr()
    before = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert Path("final/model.safetensors") in before
    # the same command again: refused, naming the directory and both ways out
    assert _train(tmp_path, "algorithm=sft", "train.steps=1") == 2
    _one_error(capsys, str(out), "resume=true", "overwrite=true")
    # overwrite=true with a mistyped data path: validation fails before anything is deleted
    assert _train(tmp_path, "algorithm=sft", "overwrite=true", f"data.train.path={tmp_path / 'typo.jsonl'}") == 2
    _one_error(capsys, "typo.jsonl")
    after = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before
    # overwrite=true with valid inputs replaces the run
    assert _train(tmp_path, "algorithm=sft", "overwrite=true", "train.steps=2") == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == 2
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


# ------------------------------------------------------------------ the handler


def test_debug_shows_the_traceback_of_a_user_error(tmp_path, capsys):
    assert main(["--debug", "train", "configs/quickstart.yaml", "train.stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "unknown key 'train.stepz'" in err


def test_a_bug_keeps_its_traceback(monkeypatch):
    import uniapl.training.run

    def boom(cfg, on_stage_end=None):
        raise RuntimeError("a bug")

    monkeypatch.setattr(uniapl.training.run, "run_training", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train", "configs/quickstart.yaml"])


def test_the_installed_command_prints_one_line_and_no_traceback(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", [GOOD, {**GOOD, "kwargs": [{"bogus": 1}]}])
    p = subprocess.run([sys.executable, "-m", "uniapl.cli", "train", "configs/quickstart.yaml", "stages=[]",
                        "algorithm=grpo", f"data.train.path={data}", f"output_dir={tmp_path / 'run'}"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith(f"uniapl train: error: {data}:2: ")
