"""Every algorithm end to end on a tiny embedded model; summary, metrics, checkpoints and resume."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from uniapl.cli import main
from uniapl.config import load_config
from uniapl.training.run import run_training

METRICS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")


def read_metrics(out: Path):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("algorithm,expect", [
    ("sft", {"loss/sft"}),
    ("grpo", {"loss/grpo", "reward", "reward_std", "frac_reward_zero_std", "completions/mean_length",
              "clip_ratio/region_mean"}),
    ("a_sft", {"loss/sft", "loss/adv", "adv/coef_mean"}),
    ("a_grpo", {"loss/grpo", "loss/adv", "adv/coef_mean", "reward"}),
    ("unified", {"loss/sft", "loss/grpo", "loss/adv", "adv/coef_mean", "reward"}),
])
def test_each_algorithm_trains_and_reports(tiny_overrides, algorithm, expect):
    cfg = load_config(None, tiny_overrides + [f"algorithm={algorithm}"])
    summary = run_training(cfg)
    out = Path(cfg.output_dir)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert expect <= set(rows[-1]), set(rows[-1])
    s = json.loads((out / "summary.json").read_text())
    assert s == summary and s["algorithm"] == algorithm and s["steps"] == 2 and s["wall_seconds"] > 0
    for k in METRICS:
        assert 0.0 <= s["eval"]["before"][k] <= 1.0 and 0.0 <= s["eval"]["after"][k] <= 1.0
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "tokenizer.json").is_file()
    # the loss terms that the paradigm does not use are absent, not zero-filled
    if algorithm == "sft":
        assert "loss/grpo" not in rows[-1] and "reward" not in rows[-1]


def test_training_changes_weights_and_kl_reference(tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["algorithm=grpo", "loss.grpo.beta=0.1", "loss.grpo.num_iterations=2"])
    run_training(cfg)
    rows = read_metrics(Path(cfg.output_dir))
    assert "kl" in rows[-1] and rows[-1]["kl"] >= 0.0


def test_resume_continues_from_last_checkpoint(tiny_overrides, tmp_path):
    import shutil

    base = tiny_overrides + ["algorithm=unified", "train.steps=4", "train.save_every=2", "train.keep_checkpoints=5"]
    full = load_config(None, base + [f"output_dir={tmp_path / 'full'}"])
    run_training(full)
    # simulate a crash right after the step-2 checkpoint: drop everything written later
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part)
    for p in ("checkpoints/step-000004", "final"):
        shutil.rmtree(part / p)
    (part / "stage_summary.json").unlink()
    (part / "summary.json").unlink()
    lines = (part / "metrics.jsonl").read_text().splitlines()[:2]
    (part / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    summary = run_training(load_config(None, base + [f"output_dir={part}", "resume=true"]))
    assert summary["steps"] == 4
    assert [r["step"] for r in read_metrics(part)] == [1, 2, 3, 4]
    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(part / "final" / "model.safetensors"))
    # data order, sampling and optimizer state are restored: the resumed run ends where the uninterrupted one did
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < 1e-5, k


def test_incomplete_checkpoint_is_ignored(tiny_overrides, tmp_path):
    from uniapl.training.checkpoint import latest_checkpoint

    d = tmp_path / "ck"
    (d / "step-000004.tmp").mkdir(parents=True)  # a crash mid-write
    (d / "step-000002").mkdir()
    (d / "step-000002" / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(d).name == "step-000002"


def test_multi_stage_summary_and_cli(tiny_overrides, tmp_path, capsys):
    out = tmp_path / "staged"
    rc = main(["train", "configs/quickstart.yaml", *tiny_overrides, f"output_dir={out}",
               "stages.0.overrides.train.steps=2"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert [e["name"] for e in s["stages"]] == ["warmup", "unified"]
    assert s["steps"] == 4 and s["algorithm"] == "sft->unified"
    # eval.before of the summary is measured on the model the last stage starts from: the warm-up's result
    assert s["eval"]["before"] == s["stages"][0]["eval"]["after"]
    assert (out / "stage-0-warmup" / "final").is_dir() and (out / "stage-1-unified" / "final").is_dir()
    assert {r["stage"] for r in read_metrics(out)} == {"warmup", "unified"}


def test_cli_reports_config_errors(tmp_path, capsys):
    rc = main(["train", "configs/quickstart.yaml", "train.stepz=3"])
    assert rc == 2
    assert "unknown key 'train.stepz'" in capsys.readouterr().err


def test_missing_teacher_is_a_data_error(tiny_overrides, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "Write in lowercase.", "instruction_id_list": ["change_case:english_lowercase"],
                                "kwargs": [{}], "ground_truth": "ok"}) + "\n")
    rc = main(["train", "configs/quickstart.yaml", *tiny_overrides, "stages=[]", "algorithm=a_grpo",
               f"data.train.path={data}", "eval.enabled=false"])
    assert rc == 2
    assert f"{data}:1: record lacks 'teacher'" in capsys.readouterr().err


def test_tensorboard_tracker_writes_events(tiny_overrides):
    pytest.importorskip("tensorboard")
    cfg = load_config(None, tiny_overrides + ["algorithm=sft", "logging.report_to=[tensorboard]", "eval.enabled=false"])
    run_training(cfg)
    events = list(Path(cfg.output_dir).rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file written"
