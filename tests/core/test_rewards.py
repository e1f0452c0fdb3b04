"""Reward functions beyond IFEval: TRL's calling convention, NaN-aware sums, metrics, config checks, GRPO e2e."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch

from uniapl.config import RewardConfig, load_config
from uniapl.data.loaders import record_from_row
from uniapl.infra.schema import ConfigError
from uniapl.rewards import RewardError, RewardFunction, Rewards, nanstd, reward_metrics, weighted_sum
from uniapl.rewards.functions import call_function
from uniapl.rewards.math import extract_final_answer, final_answer, same_answer


@pytest.mark.parametrize("text", ["So \\boxed{42}", "#### 42", "The answer is 42.", "answer: $42$",
                                  "\\boxed{\\frac{84}{2}}", "The answer is 42 apples.", "Total: 41+1. #### 42.0"])
def test_final_answer_accepts_42(text):
    assert final_answer(["q"], [text], answer=["42"]) == [1.0]


@pytest.mark.parametrize("text", ["\\boxed{41}", "#### 4.2", "The answer is 421.", "I think 42", ""])
def test_final_answer_rejects(text):
    assert final_answer(["q"], [text], answer=["42"]) == [0.0]


def test_final_answer_details():
    assert extract_final_answer("first \\boxed{1} then \\boxed{x^{2}}") == "x^{2}"
    assert extract_final_answer("no answer stated") is None
    assert same_answer("1,000", "1000") and same_answer("0.5", "\\frac{1}{2}") and same_answer("1/2", "0.5")
    assert same_answer("Paris.", "paris") and not same_answer("Lyon", "Paris")
    assert same_answer("50%", "50")
    # chat completions (as TRL passes them for chat prompts) and records without an answer
    chat = [[{"role": "assistant", "content": "#### 7"}], [{"role": "assistant", "content": "#### 7"}]]
    assert final_answer([[{"role": "user", "content": "q"}]] * 2, chat, answer=["7", None]) == [1.0, None]


def _recs(rows):
    return [record_from_row(r, f"data.jsonl:{i}") for i, r in enumerate(rows, 1)]


def test_call_follows_trl_convention():
    seen = {}

    def spy(prompts, completions, completion_ids, trainer_state, **columns):
        seen.update(prompts=prompts, completions=completions, ids=completion_ids, step=trainer_state.global_step,
                    columns=columns)
        return [1.0, None]

    recs = _recs([{"prompt": "plain", "answer": "1", "topic": "a"},
                  {"messages": [{"role": "user", "content": "chat"}], "key": 5}])
    out = call_function(RewardFunction("spy", spy), recs, ["t1", "t2"], [[1, 2], [3]], trainer_state=type(
        "S", (), {"global_step": 3})())
    assert out[0] == 1.0 and math.isnan(out[1])
    assert seen["prompts"] == ["plain", [{"role": "user", "content": "chat"}]]
    assert seen["completions"] == ["t1", [{"role": "assistant", "content": "t2"}]]
    assert seen["ids"] == [[1, 2], [3]] and seen["step"] == 3
    # every other column, one value per completion, None where a record lacks it; never the prompt column
    assert seen["columns"] == {"answer": ["1", None], "topic": ["a", None], "key": [None, 5]}


def test_nan_aware_sum_and_trl_metrics():
    per = torch.tensor([[1.0, math.nan], [0.0, 2.0], [math.nan, math.nan], [1.0, 4.0]])
    w = torch.tensor([2.0, 0.5])
    assert weighted_sum(per, w).tolist() == [2.0, 1.0, 0.0, 4.0]
    m = reward_metrics(per, ["a", "b"])
    assert m["rewards/a/mean"] == pytest.approx(2 / 3)
    assert m["rewards/a/std"] == pytest.approx(math.sqrt(((1 / 3) ** 2 * 2 + (2 / 3) ** 2) / 2))  # Bessel
    assert m["rewards/b/mean"] == pytest.approx(3.0) and m["rewards/b/std"] == pytest.approx(math.sqrt(2.0))
    assert float(nanstd(torch.tensor([1.0, 3.0, math.nan]))) == pytest.approx(math.sqrt(2.0))


def test_rewards_combine_verifier_and_function():
    cfg = RewardConfig(functions=["uniapl.rewards.math:final_answer"], weights=[1.0, 2.0])
    rw = Rewards(cfg)
    assert rw.names == ["ifeval", "final_answer"]
    recs = _recs([{"prompt": "q", "answer": "42", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}] * 3)
    total, m = rw(recs, ["#### 42", "a, b #### 42", "#### 1"])
    assert total.tolist() == [3.0, 2.0, 1.0]
    assert m["rewards/ifeval/mean"] == pytest.approx(2 / 3) and m["rewards/final_answer/mean"] == pytest.approx(2 / 3)
    assert m["reward"] == pytest.approx(2.0)
    only = Rewards(RewardConfig(verifier="none", functions=["uniapl.rewards.math:final_answer"]))
    assert only.names == ["final_answer"] and only(recs, ["#### 1"] * 3)[0].tolist() == [0.0, 0.0, 0.0]


def test_user_errors_name_function_and_record():
    def picky(prompts, completions, **kw):
        return [1.0 / (len(c) - 3) for c in completions]  # fails on a 3-character completion

    recs = _recs([{"prompt": "a"}, {"prompt": "b"}])
    with pytest.raises(RewardError, match=r"picky raised ZeroDivisionError.*on record data.jsonl:2"):
        call_function(RewardFunction("picky", picky, "m:picky"), recs, ["long text", "abc"])
    with pytest.raises(RewardError, match=r"returned 1 values for 2 completions"):
        call_function(RewardFunction("short", lambda prompts, completions, **k: [1.0]), recs, ["x", "y"])
    with pytest.raises(RewardError, match=r"value 1 \(record data.jsonl:2\) is not a number"):
        call_function(RewardFunction("s", lambda prompts, completions, **k: [1.0, "high"]), recs, ["x", "y"])


def test_config_validates_functions(tmp_path, monkeypatch):
    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text("algorithm: grpo\nreward:\n  functions:\n    - nosuch_pkg_xyz.mod:f\n")
    with pytest.raises(ConfigError, match=r"c.yaml:4: key .reward.functions\[0\].*cannot import 'nosuch_pkg_xyz.mod'"):
        load_config(cfgfile)
    for spec, msg in [("uniapl.rewards.math:nope", "has no attribute 'nope'"),
                      ("uniapl.rewards.math:__all__", "is a list, not a function"),
                      ("no_colon", "should look like")]:
        with pytest.raises(ConfigError, match=msg):
            load_config(None, [f"reward.functions=[{spec}]"])
    with pytest.raises(ConfigError, match=r"reward.weights': 1 weights for 2 rewards"):
        load_config(None, ["reward.functions=[uniapl.rewards.math:final_answer]", "reward.weights=[1.0]"])
    with pytest.raises(ConfigError, match=r"reward.verifier': 'none' leaves no reward"):
        load_config(None, ["reward.verifier=none"])
    # a module in the current directory, and a file path
    (tmp_path / "my_rewards_cwd.py").write_text("def short(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["reward.functions=[my_rewards_cwd:short, my_rewards_cwd.py:short]"])
    assert [f.name for f in Rewards(cfg.reward).functions] == ["short", "short"]


@pytest.mark.slow
def test_grpo_with_a_custom_reward_end_to_end(tiny_overrides, tmp_path, monkeypatch, capsys):
    """A short GRPO run on the tiny model rewarded only by a function from a module in tmp_path."""
    from uniapl.cli import main

    mod = tmp_path / "user_rewards_e2e.py"
    mod.write_text(textwrap.dedent("""
        CALLS = []

        def brevity(prompts, completions, completion_ids, **columns):
            CALLS.append((len(completions), sorted(columns)))
            return [1.0 / (1 + len(ids)) for ids in completion_ids]

        def odd_only(prompts, completions, key=None, **columns):
            return [None if k % 2 == 0 else 1.0 for k in key]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps({"key": i, "prompt": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                            for i in range(8)))
    over = tiny_overrides + ["algorithm=grpo", "reward.verifier=none", "eval.enabled=false", f"data.train.path={data}",
                             "reward.functions=[user_rewards_e2e:brevity, user_rewards_e2e:odd_only, "
                             "uniapl.rewards.math:final_answer]", "reward.weights=[1.0, 0.5, 1.0]"]
    cfg = tmp_path / "grpo.yaml"
    cfg.write_text("algorithm: grpo\n")
    assert main(["train", str(cfg), *over]) == 0
    capsys.readouterr()
    import user_rewards_e2e

    # 2 prompts x G=2 per step; the records' columns (not the prompt) as keyword arguments
    assert user_rewards_e2e.CALLS and all(n == 4 and cols == ["answer", "key", "trainer_state"] for n, cols in user_rewards_e2e.CALLS)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "rewards/brevity/mean" in m]
    assert len(steps) == 2
    for m in steps:
        assert 0 < m["rewards/brevity/mean"] <= 0.5 and m["rewards/brevity/std"] >= 0
        assert m["rewards/final_answer/mean"] == 0.0  # a random tiny model states no answer
        assert "rewards/ifeval/mean" not in m
        # odd_only scores odd keys only (None elsewhere): its mean over the scored ones is 1 when any was drawn
        assert math.isnan(m["rewards/odd_only/mean"]) or m["rewards/odd_only/mean"] == 1.0
        assert m["reward"] >= m["rewards/brevity/mean"]

    # user code that raises stops the run: exit 2, the function and the record named
    mod.write_text("def brevity(prompts, completions, **kw):\n    raise KeyError('answer')\n"
                   "def odd_only(prompts, completions, **kw):\n    return [None] * len(completions)\n")
    monkeypatch.delitem(__import__("sys").modules, "user_rewards_e2e")
    assert main(["train", str(cfg), *over, f"output_dir={tmp_path / 'run2'}"]) == 2
    err = capsys.readouterr().err
    assert "reward function user_rewards_e2e:brevity raised KeyError" in err and "on record " + str(data) + ":" in err
