"""loss.grpo.num_iterations = K: pass 1 trains every term; passes 2..K train the GRPO term alone (TRL's mu)."""

import pytest
import torch
from accelerate import Accelerator

from uniapl.config import load_config
from uniapl.models.loading import eos_token_ids
from uniapl.models.loading import build_policy
from uniapl.training.metrics import UpdateLog
from uniapl.training.trainer import Trainer
from uniapl.training.validation import stage_records


def _trainer(tiny_overrides, tmp_path, *extra):
    cfg = load_config(None, tiny_overrides + ["algorithm=unified", "eval.enabled=false", *extra])
    sft, pref, _ = stage_records(cfg)
    model, tok = build_policy(cfg, None)
    return Trainer(cfg, Accelerator(cpu=True), model, tok, sft_records=sft, pref_records=pref, stage_dir=tmp_path,
                   eos_ids=eos_token_ids(model, tok))


@pytest.mark.parametrize("k", [1, 3])
def test_only_the_grpo_term_iterates(tiny_overrides, tmp_path, k):
    t = _trainer(tiny_overrides, tmp_path, f"loss.grpo.num_iterations={k}")
    rows: list[int] = []  # rows of every update forward (rollouts and reference scoring do not go through it)
    t.policy.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    m = t.step()
    sft, adv_sft, grpo = 4, 4 * 1, 2 * 2  # sft_batch_size, x adv_num_generations, pref_batch_size x G
    assert sum(rows) == sft + adv_sft + grpo + (k - 1) * grpo
    assert t.scheduler.scheduler.last_epoch == k  # one optimizer/scheduler step per pass
    if k > 1:
        assert m["grpo/passes"] == k and "loss/grpo_last_pass" in m and "loss/sft" in m


def test_later_passes_leave_out_the_adversarial_term(tiny_overrides, tmp_path):
    t = _trainer(tiny_overrides, tmp_path, "loss.grpo.num_iterations=2")
    batch = t.batches.build(0, {})
    group = next(g for g in batch.groups if g.slice == "pref")
    later_group = next(g for g in t.later_pass_groups(batch.groups) if g.slice == "pref")
    mb = group.micro_batches[0]
    assert "coef" in mb.fields and "old_logprobs" in mb.fields
    logp = mb.fields["old_logprobs"].clone().requires_grad_(True)
    n = float(mb.cmask.sum())
    norms = {("pref", "grpo"): n, ("pref", "adversarial"): n}
    _, first = t.micro_batch_loss(group, mb, logp, norms, UpdateLog(), 1.0)
    _, later = t.micro_batch_loss(later_group, mb, logp, norms, UpdateLog(), 1.0)
    assert set(first) == {"grpo", "pref_adv"} and set(later) == {"grpo"}
    torch.testing.assert_close(first["grpo"], later["grpo"])
