"""The fair-comparison pieces of `uniapl experiment`: validation split, tuning, paired statistics,
re-scorable responses, the prompt split by key, the teacher-answer log-likelihoods, and pairing by seed."""

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY
from uniapl.analysis.stats import paired_bootstrap, paired_t
from uniapl.cli import main
from uniapl.data.synthetic import SyntheticTaskConfig, generate_task
from uniapl.experiment import expand_runs, load_experiment
from uniapl.experiment.config import RunSpec, SplitConfig, expand_tuning_runs
from uniapl.experiment.runner import choose_tuned
from uniapl.experiment.split import split_records, write_split
from uniapl.infra.schema import ConfigError

FAIR = "configs/experiments/laptop_fair.yaml"
SHIPPED = ("laptop_fair", "laptop_lambda", "laptop_ablations", "smollm2")


def _pairs(records):
    return {(r.prompt.split(" ")[0:12].__str__(), tuple(sorted(r.instruction_id_list))) for r in records}


def test_validation_split_is_disjoint_and_leaves_eval_unchanged():
    base = SyntheticTaskConfig(n_train=60, n_eval=20, n_warmup=30, check_language=False)
    with_val = dataclasses.replace(base, n_validation=15)
    a, b = generate_task(base), generate_task(with_val)
    assert "validation" not in a and len(b["validation"]) == 15
    # the eval split is exactly what it was without a validation split
    assert [(r.prompt, r.teacher) for r in a["eval"]] == [(r.prompt, r.teacher) for r in b["eval"]]
    # held-out (topic, combination) pairs: validation's are neither eval's nor in train / warm-up
    from uniapl.data.synthetic_vocab import TOPICS

    def pair(r):
        topic = next(t.name for t in TOPICS if f" {t.name}" in r.prompt.split(".")[0])
        return topic, tuple(sorted(r.instruction_id_list))

    val = {pair(r) for r in b["validation"]}
    assert len(val) == 15
    assert not val & {pair(r) for r in b["eval"]}
    assert not val & {pair(r) for s in ("train", "warmup") for r in b[s]}
    assert {r.key for r in b["validation"]} == {f"synthetic-validation-{i}" for i in range(15)}
    with pytest.raises(ValueError, match="n_eval \\+ n_validation"):
        generate_task(dataclasses.replace(base, n_eval=500, n_validation=500))


def test_paired_t_and_minimum_detectable_difference_hand_values():
    t = paired_t([0.1, 0.2, 0.3])
    se = 0.1 / math.sqrt(3)
    assert t["n"] == 3 and t["mean"] == pytest.approx(0.2) and t["sd"] == pytest.approx(0.1)
    assert t["ci_low"] == pytest.approx(0.2 - 4.303 * se) and t["ci_high"] == pytest.approx(0.2 + 4.303 * se)
    assert t["mde"] == pytest.approx((4.303 + 1.061) * se)
    assert paired_t([0.1, 0.2, 0.3], power=0.9)["mde"] == pytest.approx((4.303 + 1.886) * se)
    one = paired_t([0.05])
    assert one["mean"] == 0.05 and math.isnan(one["ci_low"]) and math.isnan(one["mde"])
    with pytest.raises(ValueError, match="power"):
        paired_t([0.1, 0.2], power=0.5)


def test_paired_bootstrap_over_prompts():
    a = np.array([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=float)
    w = np.ones_like(a)
    same = paired_bootstrap(a, a, w, resamples=300)
    assert same == (0.0, 0.0, 0.0)  # identical methods: every resample differs by exactly 0
    shifted = paired_bootstrap(np.ones_like(a), np.zeros_like(a), w, resamples=300)
    assert shifted == (1.0, 1.0, 1.0)
    rng = np.random.default_rng(1)
    b = (rng.random((3, 200)) < 0.5).astype(float)
    c = np.clip(b + (rng.random((3, 200)) < 0.2), 0, 1)  # c passes whatever b passes, and 20% more
    obs, lo, hi = paired_bootstrap(c, b, np.ones_like(b), resamples=1000)
    assert obs == pytest.approx(float(np.mean(c.mean(1) - b.mean(1))))
    assert 0.0 < lo < obs < hi  # resolved: the interval excludes 0
    # instruction level: passes / instructions, each prompt weighted by its number of instructions
    obs, _, _ = paired_bootstrap(np.array([[2.0, 0.0]]), np.array([[1.0, 0.0]]), np.array([[2.0, 1.0]]), resamples=0)
    assert obs == pytest.approx(2 / 3 - 1 / 3)


def test_shipped_fair_configs_expand_with_equal_budgets(tmp_path):
    from uniapl.config import load_config

    load_config("configs/experiments/laptop_train.yaml")  # the laptop experiments' base training config
    for name in SHIPPED:
        for smoke in ([], ["smoke=true"]):
            exp, base = load_experiment(f"configs/experiments/{name}.yaml", smoke)
            runs = expand_runs(exp, base, runs_dir=tmp_path, init_from=None)
            tune = expand_tuning_runs(exp, base, tune_dir=tmp_path / "tune", init_from=None)
            assert runs and (tune or exp.tune is None), name
            for r in runs + tune:
                steps = [s["overrides"]["train"]["steps"] for s in r.config["stages"]] or [r.config["train"]["steps"]]
                assert sum(steps) == exp.steps
                assert r.config["rollout"]["max_new_tokens"] == base["rollout"]["max_new_tokens"]
            for r in tune:  # tuning runs evaluate on the validation split, never the reported one
                assert r.config["data"]["eval"] != base.get("data", {}).get("eval")
    exp, _ = load_experiment(FULL_FAIR := FAIR)
    assert len(exp.seeds) >= 5 and set(exp.methods) == {"sft", "grpo", "sft_grpo", "a_sft", "a_grpo", "a_sft_a_grpo",
                                                        "unified", "chord", "a_chord"}
    lam, _ = load_experiment("configs/experiments/laptop_lambda.yaml")
    assert len(lam.sweep[0].values) >= 4 and set(lam.sweep[0].methods) == {"a_grpo", "unified"}
    assert FULL_FAIR


def test_smoke_overrides_apply_under_the_command_line():
    exp, _ = load_experiment(FAIR, ["smoke=true", "steps=3"])
    assert exp.steps == 3 and exp.seeds == [0, 1] and exp.results_dir is None  # command line, then smoke
    assert exp.tune.grid == {"train.learning_rate": [1.0e-3, 3.0e-3]}
    exp, _ = load_experiment(FAIR)
    assert exp.steps == 60 and not exp.smoke


@pytest.mark.parametrize("override, message", [
    ("tune.grid={train.steps: [1, 2]}", "budget key"),
    ("sweep=[{key: train.learning_rate, values: [0.1]}]", "also swept"),
    ("compare=[unified - ppo]", "unknown method 'ppo'"),
    ("compare=[unified-grpo]", "METHOD_A - METHOD_B"),
    ("tune.metric=accuracy", "is not one of"),
    ("methods.sft.tune_from=grpo_x", "tune_from"),
])
def test_tuning_and_comparison_mistakes_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment(FAIR, [override])


def _finished(run_dir: Path, acc: float | None) -> None:
    run_dir.mkdir(parents=True)
    if acc is not None:
        (run_dir / "summary.json").write_text(json.dumps({"eval": {"after": {"prompt_level_strict_acc": acc}}}))


def test_choose_tuned_takes_the_best_mean_first_on_ties_and_not_unfinished(tmp_path):
    exp, _ = load_experiment(FAIR)
    runs = []
    for method, point, seed, acc in (("sft", 1e-3, 0, 0.5), ("sft", 1e-3, 1, 0.3), ("sft", 3e-3, 0, 0.45),
                                     ("sft", 3e-3, 1, 0.45), ("grpo", 1e-4, 0, 0.2), ("grpo", 1e-3, 0, 0.2),
                                     ("chord", 1e-3, 0, 0.9), ("chord", 3e-3, 0, None)):
        d = tmp_path / method / str(point) / f"seed-{seed}"
        _finished(d, acc)
        runs.append(RunSpec(run_id=f"{method}/lr={point}", method=method, label=method,
                            sweep={"train.learning_rate": point}, seed=seed, config={"output_dir": str(d)}))
    chosen, record = choose_tuned(exp, runs)
    assert chosen["sft"] == {"train.learning_rate": 3e-3}  # mean 0.45 beats 0.40
    assert chosen["grpo"] == {"train.learning_rate": 1e-4}  # a tie: the first in grid order
    assert "chord" not in chosen and record["methods"]["chord"]["chosen"] is None  # a point did not finish
    assert record["methods"]["sft"]["grid"][0]["scores"] == {"0": 0.5, "1": 0.3}


def _prompt_files(tmp_path, n=20):
    prompts, answers = tmp_path / "prompts.jsonl", tmp_path / "answers.jsonl"
    with prompts.open("w") as f, answers.open("w") as g:
        for i in range(n):
            f.write(json.dumps({"key": 100 + i, "prompt": f"Say {i}. No commas.", "instruction_id_list":
                                ["punctuation:no_comma"], "kwargs": [{}]}) + "\n")
            if i != 7:  # prompt 7 has no teacher answer: it takes no part
                g.write(json.dumps({"key": 100 + i, "prompt": f"Say {i}. No commas.", "response": f"I say {i}"}) + "\n")
    return prompts, answers


def test_split_by_key_is_disjoint_deterministic_and_guarded(tmp_path):
    prompts, answers = _prompt_files(tmp_path)
    cfg = SplitConfig(prompts=str(prompts), teacher=str(answers), eval=6, validation=3, seed=0)
    parts = split_records(cfg)
    keys = {k: {r["key"] for r in v} for k, v in parts.items()}
    assert [len(keys[k]) for k in ("train", "validation", "eval")] == [10, 3, 6]
    assert not (keys["train"] & keys["eval"]) and not (keys["validation"] & (keys["train"] | keys["eval"]))
    assert 107 not in set().union(*keys.values())
    assert all(r["teacher"] == f"I say {r['key'] - 100}" for v in parts.values() for r in v)
    files = write_split(cfg, tmp_path / "out")
    split = json.loads((tmp_path / "out" / "split.json").read_text())
    assert set(split["eval_keys"]) == keys["eval"] and set(split["train_keys"]) == keys["train"]
    assert len(files["eval"].read_text().splitlines()) == 6
    assert write_split(cfg, tmp_path / "out")  # the same inputs: the same split, accepted
    other = dataclasses.replace(cfg, seed=1)
    assert split_records(other)["eval"] != parts["eval"]
    with pytest.raises(ConfigError, match="another split"):
        write_split(other, tmp_path / "out")
    with pytest.raises(ConfigError, match="leave no training prompt"):
        split_records(dataclasses.replace(cfg, eval=15, validation=5))


def test_written_responses_rescore_to_the_evaluation_metrics(tmp_path, capsys):
    from uniapl.analysis.report import RunData, write_responses
    from uniapl.evaluation.ifeval import counts_for, metrics_from_counts

    task = generate_task(SyntheticTaskConfig(n_train=4, n_eval=12, n_warmup=0, check_language=False))
    records = task["eval"]
    texts = [r.ground_truth if i % 3 else r.teacher.replace(".", ",") for i, r in enumerate(records)]
    expected = metrics_from_counts(counts_for(records, texts))
    assert 0.0 < expected["prompt_level_strict_acc"] < 1.0
    run = RunData(seed=3, eval=expected, lengths=[], gaps=[], metrics=[], stages=[], sampled_tokens=0.0,
                  train_seconds=0.0, final_checkpoint="", responses=[{"key": r.key, "response": t}
                                                                      for r, t in zip(records, texts)])
    rel = write_responses(tmp_path, "a_grpo__lambda_adv=0.01", run, {r.key: r for r in records})
    assert rel == "responses/a_grpo__lambda_adv=0.01/seed-3.jsonl"
    line = json.loads((tmp_path / rel).read_text().splitlines()[0])
    assert set(line) == {"key", "prompt", "instruction_id_list", "kwargs", "response"}
    assert main(["ifeval", "score", "--responses", str(tmp_path / rel), "--metrics", str(tmp_path / "m.json")]) == 0
    got = json.loads((tmp_path / "m.json").read_text())
    for k in ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc"):
        assert got[k] == pytest.approx(expected[k]), k


def test_teacher_answer_logprobs_match_a_direct_forward():
    import torch

    from uniapl.analysis.logp import teacher_answer_logprobs
    from uniapl.config import load_config
    from uniapl.data.chat import encode_prompt
    from uniapl.models.loading import build_policy

    cfg = load_config("configs/quickstart.yaml", TINY + ["stages=[]"])
    model, tok = build_policy(cfg, None)
    model.eval()
    records = generate_task(cfg.data.synthetic)["eval"][:3]
    rows = teacher_answer_logprobs(model, tok, records, batch_size=2, max_prompt_tokens=cfg.data.max_prompt_tokens)
    assert [r["key"] for r in rows] == [r.key for r in records]
    for rec, row in zip(records, rows):
        prompt = encode_prompt(tok, rec, max_tokens=cfg.data.max_prompt_tokens)
        answer = tok(rec.teacher, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
        direct = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(answer))
        assert row["tokens"] == len(answer)
        assert row["logp"] == pytest.approx(direct, abs=1e-3)
        assert row["logp_per_token"] == pytest.approx(direct / len(answer), abs=1e-4)


def test_same_seed_draws_the_same_prompts_across_methods():
    """What 'paired by seed' rests on: at every step, methods with the same seed train on the same SFT
    prompts and the same preference prompts (the trainer's draws depend on seed and step only)."""
    from accelerate import Accelerator

    from uniapl.algorithms import get_algorithm
    from uniapl.config import load_config
    from uniapl.models.loading import eos_token_ids
    from uniapl.models.loading import build_policy
    from uniapl.training.batch import BatchBuilder
    from uniapl.training.validation import stage_records

    def draws(alg: str, seed: int) -> dict[str, list]:
        cfg = load_config("configs/quickstart.yaml", TINY + ["stages=[]", f"algorithm={alg}", f"seed={seed}",
                                                            "rollout.max_new_tokens=4"])
        model, tok = build_policy(cfg, None)
        sft, pref, _ = stage_records(cfg)
        jb = BatchBuilder(cfg, get_algorithm(alg), tok, sft_records=sft, pref_records=pref,
                          eos_ids=eos_token_ids(model, tok), policy_model=lambda: model, accelerator=Accelerator(cpu=True))
        seen: dict[str, list] = {"sft": [], "pref": []}
        for s, terms in jb.terms.items():
            for i, (term, _) in enumerate(terms):  # each slice's first term records the slice's prompts
                term.prepare = (lambda sl, ctx, m, s=s, first=i == 0: seen[s].append([r.key for r in sl.records])
                                if first else None)
        for step in range(3):
            jb.build(step, {})
        return seen

    sft, unified, grpo, a_grpo = draws("sft", 0), draws("unified", 0), draws("grpo", 0), draws("a_grpo", 0)
    assert sft["sft"] == unified["sft"] and len(sft["sft"]) == 3
    assert grpo["pref"] == a_grpo["pref"] == unified["pref"] and len(grpo["pref"]) == 3
    assert draws("sft", 1)["sft"] != sft["sft"]  # another seed, other prompts


def tiny_fair(out):
    model = [f"overrides.{o}" for o in TINY if not o.startswith(("train.steps", "data.synthetic"))]
    return model + [
        f"output_dir={out}", "steps=2", "seeds=[0,1]", "select=[sft,a_sft]", "jobs=1", "smoke=false",
        "results_dir=null",
        "overrides.data.synthetic={seed: 0, n_train: 64, n_eval: 8, n_validation: 6, n_warmup: 64, check_language: false}",
        "overrides.eval={max_new_tokens: 8, batch_size: 8, every: 0}", "overrides.rollout.max_new_tokens=8",
        "warmup.steps=2", "teacher.build=null", "tune.grid={train.learning_rate: [0.001, 0.003]}",
        "methods.a_sft.tune_from=sft", "compare=[a_sft - sft]", "analysis.bootstrap=100",
    ]


def test_tiny_fair_experiment_tunes_compares_and_rescores(tmp_path):
    out = tmp_path / "exp"
    assert main(["experiment", FAIR, *tiny_fair(out)]) == 0
    tuning = json.loads((out / "tuning.json").read_text())
    assert tuning["metric"] == "prompt_level_strict_acc" and tuning["split"] == {"path": "synthetic:validation"}
    chosen = tuning["methods"]["sft"]["chosen"]
    assert chosen["train.learning_rate"] in (0.001, 0.003) and "a_sft" not in tuning["methods"]
    tune_cfg = json.loads(json.dumps(__import__("yaml").safe_load(
        (out / "tune" / "sft" / "learning_rate=0.001" / "seed-1000" / "run.yaml").read_text())))
    assert tune_cfg["data"]["eval"]["path"] == "synthetic:validation"
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert [(r["run"], r["seed"]) for r in rows] == [("sft", "0"), ("sft", "1"), ("a_sft", "0"), ("a_sft", "1"),
                                                    ("start", "0")]
    for r in rows[:4]:  # the main runs ran at the chosen learning rate (a_sft: sft's, tune_from)
        assert float(r["train.learning_rate"]) == chosen["train.learning_rate"]
        run_cfg = __import__("yaml").safe_load((out / "runs" / r["run"] / f"seed-{r['seed']}" / "run.yaml").read_text())
        assert run_cfg["train"]["learning_rate"] == chosen["train.learning_rate"]
        assert run_cfg["data"]["eval"]["path"] == "synthetic:eval"
    for r in rows:  # every row re-scores from its committed responses file
        metrics = tmp_path / f"{r['run']}-{r['seed']}.json"
        assert main(["ifeval", "score", "--responses", str(out / r["responses"]), "--metrics", str(metrics)]) == 0
        got = json.loads(metrics.read_text())
        for k in ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc"):
            assert got[k] == pytest.approx(float(r[k]), abs=1e-6), (r["run"], k)
    comp = list(csv.DictReader((out / "comparisons.csv").open()))
    assert {c["metric"] for c in comp} >= {"prompt_level_strict_acc", "inst_level_loose_acc"}
    c = next(c for c in comp if c["metric"] == "inst_level_strict_acc")
    by = {(r["run"], r["seed"]): float(r["inst_level_strict_acc"]) for r in rows}
    diffs = [by[("a_sft", s)] - by[("sft", s)] for s in ("0", "1")]
    assert c["seeds"] == "2" and float(c["diff"]) == pytest.approx(sum(diffs) / 2, abs=1e-6)
    assert "A - B" in (out / "comparisons.md").read_text() and (out / "tuning.md").is_file()
    assert (out / "teacher_logp.png").is_file()
    assert all(len((out / "runs" / r / "seed-0" / "teacher_logp.jsonl").read_text().splitlines()) == 8
               for r in ("sft", "a_sft"))
    # resume: nothing to train again, tuning included
    stamp = (out / "tune" / "sft" / "learning_rate=0.001" / "seed-1000" / "summary.json").stat().st_mtime_ns
    assert main(["experiment", FAIR, *tiny_fair(out)]) == 0
    summary = json.loads((out / "experiment_summary.json").read_text())
    assert summary["skipped"] == 4 and summary["tuning_runs"] == 2 and not summary["failed"]
    assert (out / "tune" / "sft" / "learning_rate=0.001" / "seed-1000" / "summary.json").stat().st_mtime_ns == stamp


def test_comparisons_pair_by_seed_and_match_sweep_points(tmp_path):
    from uniapl.analysis.compare import compare_groups, write_comparisons
    from uniapl.analysis.report import Group, RunData

    def run(seed, passes):
        rows = [{"key": f"k{i}", "prompt_strict": p, "prompt_loose": p, "inst_strict": [p, True], "inst_loose": [p, True]}
                for i, p in enumerate(passes)]
        acc = sum(passes) / len(passes)
        ev = {"prompt_level_strict_acc": acc, "prompt_level_loose_acc": acc, "inst_level_strict_acc": (acc + 1) / 2,
              "inst_level_loose_acc": (acc + 1) / 2}
        return RunData(seed=seed, eval=ev, lengths=[], gaps=[], metrics=[], stages=[], sampled_tokens=0.0,
                       train_seconds=0.0, final_checkpoint="", responses=rows)

    base = Group("grpo", "grpo", "GRPO", {}, runs=[run(0, [1, 0, 0, 0]), run(1, [0, 0, 0, 0]), run(2, [1, 1, 0, 0])])
    hi = Group("a_grpo__lambda_adv=0.1", "a_grpo", "A-GRPO", {"loss.lambda_adv": 0.1},
               runs=[run(0, [1, 1, 0, 0]), run(1, [1, 0, 0, 0]), run(2, [1, 1, 1, 0]), run(3, [1, 1, 1, 1])])
    lo = Group("a_grpo__lambda_adv=0.001", "a_grpo", "A-GRPO", {"loss.lambda_adv": 0.001},
               runs=[run(0, [1, 0, 0, 0]), run(1, [0, 0, 0, 0])])
    rows = compare_groups([("a_grpo", "grpo")], [base, hi, lo], resamples=200)
    strict = [r for r in rows if r["metric"] == "prompt_level_strict_acc"]
    assert [r["a"] for r in strict] == ["a_grpo__lambda_adv=0.1", "a_grpo__lambda_adv=0.001"]
    first, second = strict
    assert first["seeds"] == 3  # seed 3 has no GRPO partner: left out
    assert first["per_seed"] == "0:+0.2500;1:+0.2500;2:+0.2500" and first["diff"] == pytest.approx(0.25)
    assert first["sd"] == pytest.approx(0.0) and first["ci_low"] == pytest.approx(0.25)
    assert second["diff"] == pytest.approx(0.0) and second["seeds"] == 2
    files = write_comparisons(tmp_path, rows, primary="prompt_level_strict_acc", power=0.8, resamples=200)
    assert files == ["comparisons.md", "comparisons.csv"]
    md = (tmp_path / "comparisons.md").read_text()
    assert "A-GRPO (lambda_adv=0.1) - GRPO | 3 |" in md and "+0.250" in md
