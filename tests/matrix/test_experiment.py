"""`uniapl experiment`: the matrix's expansion, a tiny end-to-end experiment, and resuming it."""

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import TINY
from uniapl.analysis.stats import gaussian_kde, mean_ci95, wasserstein_1d
from uniapl.cli import main
from uniapl.experiment import expand_runs, load_experiment
from uniapl.infra.schema import ConfigError

SMOKE = "configs/experiments/laptop_smoke.yaml"
FULL = "configs/experiments/laptop.yaml"


def tiny_experiment(out):
    """The smoke config shrunk to seconds: tiny model, 2 steps, 2 methods (one staged, one adversarial), 1 seed."""
    model = [f"overrides.{o}" for o in TINY if not o.startswith(("train.steps", "data.synthetic"))]
    return model + [
        f"output_dir={out}", "steps=2", "seeds=[0]", "select=[sft_grpo,a_grpo]", "jobs=1",
        "overrides.data.synthetic={seed: 0, n_train: 64, n_eval: 8, n_warmup: 64, check_language: false}",
        "overrides.eval={max_new_tokens: 8, batch_size: 8, every: 1}", "warmup.steps=2", "teacher.build.steps=2",
        "analysis.num_samples=6",
    ]


def test_shipped_experiments_expand_to_the_paper_matrix(tmp_path):
    for path, seeds, steps in ((FULL, 3, 60), (SMOKE, 1, 6)):
        exp, base = load_experiment(path, [f"output_dir={tmp_path}"])
        runs = expand_runs(exp, base, runs_dir=tmp_path / "runs", init_from="/w/final")
        labels = list(dict.fromkeys(r.label for r in runs))
        assert labels == ["SFT", "GRPO", "SFT→GRPO", "A-SFT", "A-GRPO", "A-SFT→A-GRPO", "UniAPL (unified)", "CHORD",
                          "A-CHORD"]
        assert len(runs) == 9 * seeds
        for r in runs:  # equal budget: the same steps and rollout settings for every method
            stage_steps = [s["overrides"]["train"]["steps"] for s in r.config["stages"]] or [r.config["train"]["steps"]]
            assert sum(stage_steps) == steps
            assert r.config["rollout"]["max_new_tokens"] == 96 and r.config["model"]["name_or_path"] == "/w/final"
        staged = next(r for r in runs if r.method == "sft_grpo")
        assert [s["algorithm"] for s in staged.config["stages"]] == ["sft", "grpo"]


def test_sweeps_stage_split_and_budget_checks(tmp_path):
    exp, base = load_experiment(SMOKE, ["steps=7", "select=[a_grpo,sft_grpo]",
                                        "sweep=[{key: loss.lambda_adv, values: [0.1, 0.001], methods: [a_grpo]}]"])
    runs = expand_runs(exp, base, runs_dir=tmp_path, init_from=None)
    assert [r.run_id for r in runs] == ["a_grpo__lambda_adv=0.1", "a_grpo__lambda_adv=0.001", "sft_grpo"]
    assert runs[1].config["loss"]["lambda_adv"] == 0.001 and runs[1].sweep == {"loss.lambda_adv": 0.001}
    assert [s["overrides"]["train"]["steps"] for s in runs[2].config["stages"]] == [4, 3]
    with pytest.raises(ConfigError, match="budget key"):
        load_experiment(SMOKE, ["methods.sft.overrides={rollout.max_new_tokens: 9}"])
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        load_experiment(SMOKE, ["select=[nope]"])
    with pytest.raises(ConfigError, match="exactly one of"):
        load_experiment(SMOKE, ["methods.sft.stages=[{algorithm: grpo}]"])
    exp, base = load_experiment(SMOKE, ["methods.sft.algorithm=ppo"])
    with pytest.raises(ConfigError, match="method 'sft'.*unknown algorithm 'ppo'"):
        expand_runs(exp, base, runs_dir=tmp_path, init_from=None)


def test_stats_hand_values():
    m, ci = mean_ci95([1.0, 2.0, 3.0])
    assert m == pytest.approx(2.0) and ci == pytest.approx(4.303 * 1.0 / 3 ** 0.5, rel=1e-4)
    assert mean_ci95([0.5])[0] == 0.5
    assert wasserstein_1d([0, 0, 0], [1, 1, 1]) == pytest.approx(1.0)
    assert wasserstein_1d([0, 2], [1]) == pytest.approx(1.0)
    import numpy as np

    grid = np.linspace(-10, 10, 2001)
    dens = gaussian_kde([0.0, 1.0, 2.0], grid)
    assert float(dens.sum() * (grid[1] - grid[0])) == pytest.approx(1.0, abs=1e-3)


def test_tiny_experiment_writes_table_and_figures_and_resumes(tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["experiment", SMOKE, *tiny_experiment(out)]) == 0
    for f in ("table.md", "table.csv", "runs.csv", "lengths.png", "logp_gap.png", "curves.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    rows = list(csv.DictReader((out / "table.csv").open()))
    methods = [r["method"] for r in rows]
    assert methods[:2] == ["SFT→GRPO", "A-GRPO"]
    assert {"start (warm-up)", "teacher model", "teacher answers (data)"} <= set(methods)
    for r in rows[:2]:
        assert r["seeds"] == "1" and 0.0 <= float(r["prompt_level_strict_acc_mean"]) <= 1.0
        assert float(r["mean_length_mean"]) > 0 and r["length_w1_mean"] != "" and r["logp_gap_mean"] != ""
    md = (out / "table.md").read_text()
    assert "| method |" in md and "A-GRPO" in md
    run = out / "runs" / "a_grpo" / "seed-0"
    for f in ("run.yaml", "summary.json", "eval_responses.jsonl", "logp_samples.jsonl", "metrics.jsonl"):
        assert (run / f).is_file(), f
    assert len((run / "logp_samples.jsonl").read_text().splitlines()) == 6
    summary = json.loads((out / "experiment_summary.json").read_text())
    assert summary["runs"] == 2 and summary["skipped"] == 0 and not summary["failed"]
    # resume: finished runs are skipped, an unfinished one is trained again
    stamp = (run / "summary.json").stat().st_mtime_ns
    staged = out / "runs" / "sft_grpo" / "seed-0"
    (staged / "summary.json").unlink()
    assert main(["experiment", SMOKE, *tiny_experiment(out), "jobs=2"]) == 0  # and in 2 worker processes
    first_total = summary["wall_seconds_total"]
    assert first_total == summary["wall_seconds"] > 0
    summary = json.loads((out / "experiment_summary.json").read_text())
    assert summary["skipped"] == 1 and (staged / "summary.json").is_file()
    assert summary["wall_seconds_total"] == pytest.approx(first_total + summary["wall_seconds"], abs=0.11)
    assert (run / "summary.json").stat().st_mtime_ns == stamp
    # a finished run whose config changed is an error, not silently reused
    assert main(["experiment", SMOKE, *tiny_experiment(out), "overrides.loss.lambda_adv=0.5"]) == 2
    assert "different config" in capsys.readouterr().err


def test_unfinished_run_of_an_older_config_is_kept_aside_not_deleted(tmp_path):
    from uniapl.experiment.runner import _write_run

    run = tmp_path / "runs" / "sft" / "seed-0"
    assert _write_run(run, {"lr": 1}) is False
    (run / "metrics.jsonl").write_text('{"step": 1}\n')  # unfinished: no summary.json
    assert _write_run(run, {"lr": 1}) is False and (run / "metrics.jsonl").is_file()  # same config: resumed
    assert _write_run(run, {"lr": 2}) is False
    stale = run.with_name("seed-0.stale-1")
    assert (stale / "metrics.jsonl").read_text() == '{"step": 1}\n' and "lr: 1" in (stale / "run.yaml").read_text()
    assert not (run / "metrics.jsonl").exists() and "lr: 2" in (run / "run.yaml").read_text()
    assert _write_run(run, {"lr": 3}) is False and run.with_name("seed-0.stale-2").is_dir()
