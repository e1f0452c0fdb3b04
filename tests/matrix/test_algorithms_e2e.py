"""Every new algorithm and ablation for 2 steps end to end on the tiny embedded model."""

import json
from pathlib import Path

import pytest

from uniapl.config import load_config
from uniapl.training.run import run_training


def rows_of(out):
    return [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("algorithm,extra,expect,absent", [
    ("chord", ["loss.chord.phi=true", "loss.chord.expert_share=0.5", "loss.chord.mu_warmup_steps=1",
               "loss.chord.mu_decay_steps=4"],
     {"loss/sft", "loss/grpo", "chord/mu", "chord/phi_mean", "reward", "sft/rows"}, {"loss/adv"}),
    ("a_chord", [], {"loss/sft", "loss/grpo", "loss/pref_adv", "chord/mu", "adv/coef_mean"}, {"loss/sft_adv"}),
    ("dpo", [], {"loss/dpo", "dpo/pairs", "rewards/margins", "rewards/accuracies"}, {"loss/adv", "reward"}),
    ("a_dpo", [], {"loss/dpo", "loss/pref_adv", "adv/coef_mean", "rollout/tokens"}, set()),
    ("kto", [], {"loss/kto", "kto/kl", "kto/desirable", "kto/undesirable"}, {"loss/adv"}),
    ("a_kto", [], {"loss/kto", "loss/pref_adv", "adv/coef_mean"}, set()),
])
def test_new_algorithm_trains_two_steps(tiny_overrides, algorithm, extra, expect, absent):
    cfg = load_config(None, tiny_overrides + [f"algorithm={algorithm}", *extra])
    summary = run_training(cfg)
    rows = rows_of(cfg.output_dir)
    assert [r["step"] for r in rows] == [1, 2]
    assert expect <= set(rows[-1]), sorted(rows[-1])
    assert not (absent & set(rows[-1]))
    assert summary["algorithm"] == algorithm and summary["steps"] == 2
    assert "prompt_level_strict_acc" in summary["eval"]["after"]


def test_chord_mu_follows_the_schedule_and_expert_share(tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["algorithm=chord", "train.steps=3", "loss.chord.mu_warmup_steps=2",
                                              "loss.chord.mu_decay_steps=4", "loss.chord.mu_peak=0.6",
                                              "loss.chord.mu_valley=0.1", "loss.chord.expert_share=0.2"])
    run_training(cfg)
    rows = rows_of(cfg.output_dir)
    assert [r["chord/mu"] for r in rows] == pytest.approx([0.0, 0.3, 0.6])  # steps 0, 1, 2: warm-up, then the peak
    assert rows[0]["sft/rows"] == 1  # 0.2 / 0.8 * (2 prompts x 2 samples) = 1 expert row


@pytest.mark.parametrize("signal", ["reward_raw", "reward_coef"])
def test_reward_shaping_ablations_replace_the_adversarial_term(tiny_overrides, signal):
    cfg = load_config(None, tiny_overrides + ["algorithm=a_grpo", f"loss.adv_signal={signal}"])
    run_training(cfg)
    last = rows_of(cfg.output_dir)[-1]
    assert "reward/shaped" in last and "loss/pref_adv" not in last and "loss/adv" not in last
    assert "adv/coef_mean" in last
    # the lexical scorer's raw scores are negative: adding them lowers the reward, adding coef in [-1, 1] too here
    assert last["reward/shaped"] < last["reward"] + 1.0


def test_dpo_and_kto_read_pairs_and_labels_from_data(tiny_overrides, tmp_path):
    data = tmp_path / "prefs.jsonl"
    lines = []
    for i in range(4):
        lines.append({"prompt": f"Write about the river {i} without commas.", "chosen": "The river is calm.",
                      "rejected": "The river, it is calm, and wide.", "completion": "The river is calm.",
                      "label": i % 2 == 0})
    data.write_text("".join(json.dumps(l) + "\n" for l in lines))
    for alg in ("dpo", "kto"):
        cfg = load_config(None, tiny_overrides + [f"algorithm={alg}", f"data.train.path={data}",
                                                  "data.pairs.source=data", f"output_dir={tmp_path / alg}",
                                                  "eval.enabled=false"])
        run_training(cfg)
        last = rows_of(cfg.output_dir)[-1]
        assert f"loss/{alg}" in last
        if alg == "dpo":
            assert last["dpo/pairs"] == 2  # pref_batch_size prompts, each with its own pair
        else:
            assert last["kto/desirable"] + last["kto/undesirable"] == 2  # one labelled completion per prompt


def test_eval_responses_are_saved(tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["algorithm=sft", "train.steps=1", "eval.before=false"])
    summary = run_training(cfg)
    assert summary["eval"]["before"] == {}
    rows = [json.loads(l) for l in (Path(cfg.output_dir) / "eval_responses.jsonl").read_text().splitlines()]
    assert len(rows) == summary["eval"]["after"]["num_prompts"] == 8
    assert {"key", "prompt", "response", "length_tokens", "finished", "prompt_strict", "inst_loose"} <= set(rows[0])
    mean_len = sum(r["length_tokens"] for r in rows) / len(rows)
    assert mean_len == pytest.approx(summary["eval"]["after"]["mean_length_tokens"])
    acc = sum(r["prompt_strict"] for r in rows) / len(rows)
    assert acc == pytest.approx(summary["eval"]["after"]["prompt_level_strict_acc"])
