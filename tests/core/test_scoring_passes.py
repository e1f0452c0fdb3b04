"""The reference and old-policy log-probs come from one place (`BatchBuilder._score`), which runs the update's
micro-batches: memory bounded like the update's, and values equal to the update's own forward, so that at
step 0 the KL to the reference is exactly 0 and the first pass's ratio exactly 1."""

import torch
from accelerate import Accelerator

from uniapl.config import load_config
from uniapl.data.padding import trim_padding
from uniapl.models.loading import build_policy, eos_token_ids
from uniapl.training.trainer import Trainer
from uniapl.training.validation import stage_records


def _trainer(tiny_overrides, tmp_path, *extra):
    cfg = load_config(None, tiny_overrides + ["eval.enabled=false", "train.gradient_accumulation_steps=3",
                                              "rollout.num_generations=4", "train.pref_batch_size=3", *extra])
    sft, pref, _ = stage_records(cfg)
    model, tok = build_policy(cfg, None)
    return Trainer(cfg, Accelerator(cpu=True), model, tok, sft_records=sft, pref_records=pref, stage_dir=tmp_path,
                   eos_ids=eos_token_ids(model, tok))


def _update_logprobs(t: Trainer, mb):
    """The policy's log-probs of a micro-batch exactly as the update computes them."""
    mb = mb.trimmed()
    ids, attn = trim_padding(mb.ids, mb.attn, mb.cmask.shape[1])
    with torch.no_grad():
        return t.policy(ids, attn, mb.cmask.shape[1], mb.temperature), mb


def test_reference_and_old_passes_run_the_update_micro_batches(tiny_overrides, tmp_path):
    t = _trainer(tiny_overrides, tmp_path, "algorithm=grpo", "loss.grpo.beta=0.04", "loss.grpo.num_iterations=2")
    rows: list[int] = []
    decoder = t.ref_model.get_decoder()  # completion_logprobs runs the decoder, then the head in chunks
    decoder.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    batch = t.batches.build(0, {})
    (group,) = batch.groups
    sizes = [mb.rows for mb in group.micro_batches]
    assert len(sizes) == 3 and sum(sizes) == 12
    # the reference never sees more rows at once than a micro-batch (12 rollouts, 3 micro-batches)
    assert rows and max(rows) <= max(sizes) and sum(r for r in rows) >= 12
    for mb in group.micro_batches:
        logp, trimmed = _update_logprobs(t, mb)
        width = trimmed.cmask.shape[1]
        # bit for bit the update's values: the old policy IS the policy on pass 1, the reference IS it at step 0
        assert torch.equal(mb.fields["old_logprobs"][:, :width], logp)
        assert torch.equal(mb.fields["ref_logprobs"][:, :width], logp)


def test_kl_is_zero_and_nothing_clips_at_step_zero(tiny_overrides, tmp_path):
    t = _trainer(tiny_overrides, tmp_path, "algorithm=a_grpo", "loss.grpo.beta=0.04", "loss.grpo.num_iterations=2",
                 "loss.grpo.eps_low=1e-7", "loss.grpo.eps_high=1e-7")
    m = t.step()
    assert m["kl"] == 0.0
    assert m["clip_ratio/region_mean"] == 0.0  # ratio exactly 1: even a 1e-7 clip range does not engage


def test_dpo_reference_sums_equal_the_policy_sums_at_step_zero(tiny_overrides, tmp_path):
    t = _trainer(tiny_overrides, tmp_path, "algorithm=dpo", "train.pref_batch_size=4")
    batch = t.batches.build(0, {})
    (group,) = batch.groups
    assert len(group.micro_batches) >= 2 and all(mb.rows % 2 == 0 for mb in group.micro_batches)  # whole pairs
    for mb in group.micro_batches:
        logp, trimmed = _update_logprobs(t, mb)
        seq = (logp * trimmed.cmask.to(logp.dtype)).sum(-1)
        assert torch.equal(mb.fields["ref_seq"], seq)  # DPO's log-ratios start at exactly 0
