"""Rollout correction (truncated / masked importance sampling) and its wiring into the GRPO term."""

import math

import pytest
import torch

from uniapl.losses import grpo_loss, rollout_importance_weights
from uniapl.rollout import build_engine, register_engine

MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_token_truncate_hand_computed():
    trainer = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -9.0]])
    sampler = torch.tensor([[-1.0, -3.5, -0.2], [-0.5, -1.0, 0.0]])
    w, m = rollout_importance_weights(trainer, sampler, MASK, mode="token_truncate", clip_max=3.0)
    # exp(0)=1, exp(1.5)=4.48 -> 3, exp(-0.3)=0.741; exp(-0.5)=0.607, exp(0)=1, masked -> exp(0)=1 (not counted)
    expect = torch.tensor([[1.0, 3.0, math.exp(-0.3)], [math.exp(-0.5), 1.0, 1.0]])
    assert torch.allclose(w, expect, atol=1e-6)
    assert m["sampling/sampling_logp_difference/max"] == pytest.approx(1.5)
    assert m["sampling/sampling_logp_difference/mean"] == pytest.approx((0 + 1.5 + 0.3 + 0.5 + 0) / 5)
    assert m["sampling/importance_sampling_ratio/max"] == pytest.approx(3.0)
    assert m["sampling/importance_sampling_ratio/min"] == pytest.approx(math.exp(-0.5))
    assert m["sampling/importance_sampling_ratio/mean"] == pytest.approx(
        (1 + 3 + math.exp(-0.3) + math.exp(-0.5) + 1) / 5)


def test_token_mask_and_sequence_modes():
    trainer = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -9.0]])
    sampler = torch.tensor([[-1.0, -3.5, -0.2], [-0.5, -1.0, 0.0]])
    w, _ = rollout_importance_weights(trainer, sampler, MASK, mode="token_mask", clip_min=0.7, clip_max=3.0)
    assert torch.allclose(w, torch.tensor([[1.0, 0.0, math.exp(-0.3)], [0.0, 1.0, 1.0]]), atol=1e-6)
    # sequence: row 0 sums 0 + 1.5 - 0.3 = 1.2, row 1 sums -0.5 (the masked token does not count)
    w, m = rollout_importance_weights(trainer, sampler, MASK, mode="sequence_truncate", clip_max=3.0)
    assert w.shape == (2, 1) and torch.allclose(w.squeeze(1), torch.tensor([3.0, math.exp(-0.5)]), atol=1e-6)
    assert m["sampling/importance_sampling_ratio/mean"] == pytest.approx((3.0 + math.exp(-0.5)) / 2)
    w, _ = rollout_importance_weights(trainer, sampler, MASK, mode="sequence_mask", clip_max=3.0)
    assert torch.allclose(w.squeeze(1), torch.tensor([0.0, math.exp(-0.5)]), atol=1e-6)


def test_nan_sampler_logprob_counts_as_no_correction():
    w, m = rollout_importance_weights(torch.zeros(1, 2), torch.tensor([[float("nan"), 0.0]]), torch.ones(1, 2))
    assert torch.equal(w, torch.ones(1, 2)) and m["sampling/sampling_logp_difference/max"] == 0.0


def test_weights_scale_the_policy_gradient_not_the_kl():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv, mask = torch.tensor([1.0]), torch.ones(1, 2)
    ref = torch.tensor([[-1.5, -1.0]])
    w = torch.tensor([[0.5, 2.0]])
    base, _ = grpo_loss(logp, logp.detach(), adv, mask, ref_logprobs=ref, beta=0.1)
    (g0,) = torch.autograd.grad(base, logp)
    corr, _ = grpo_loss(logp, logp.detach(), adv, mask, ref_logprobs=ref, beta=0.1, importance_weights=w)
    (g1,) = torch.autograd.grad(corr, logp)
    # token mean over 2 tokens: d/dlogp of -w * ratio * A / 2 is -w * A / 2; the KL part's gradient is unweighted
    kl_grad = g0 - torch.tensor([[-0.5, -0.5]])
    assert torch.allclose(g1, -w * 0.5 + kl_grad, atol=1e-6)


class _Offset:
    """An engine wrapper whose log-probs differ from the trainer's by a known offset (a stand-in for an engine with
    other kernels): the built-in engine's samples, log-probs shifted by `delta`."""

    logprobs_match_trainer = False

    def __init__(self, inner, delta):
        self.inner, self.delta = inner, delta

    def sync_weights(self, model):
        self.inner.sync_weights(model)

    def generate(self, prompts, params):
        b = self.inner.generate(prompts, params)
        b.logprobs = b.logprobs + self.delta * b.completion_mask
        return b


def _trainer(tmp_path, overrides):
    from accelerate import Accelerator

    from uniapl.config import load_config
    from uniapl.models.loading import eos_token_ids
    from uniapl.models.loading import build_policy
    from uniapl.training.trainer import Trainer
    from uniapl.training.validation import stage_records

    cfg = load_config("configs/quickstart.yaml", ["stages=[]", f"output_dir={tmp_path}", "logging.progress=false",
                                                  "algorithm=grpo", "train.pref_batch_size=2", "rollout.max_new_tokens=8",
                                                  "rollout.num_generations=2", *overrides])
    torch.manual_seed(0)
    model, tok = build_policy(cfg, None)
    sft, pref, _ = stage_records(cfg)
    return Trainer(cfg, Accelerator(cpu=True), model, tok, sft_records=sft, pref_records=pref, stage_dir=tmp_path,
                   eos_ids=eos_token_ids(model, tok))


def test_builtin_engine_gets_no_correction_by_default(tmp_path):
    tr = _trainer(tmp_path, [])
    assert tr.batches.term("pref", "grpo").importance_correction is False
    m = tr.step()
    assert not any(k.startswith("sampling/") for k in m)
    tr = _trainer(tmp_path, ["rollout.importance_sampling.correction=true"])
    m = tr.step()  # forced on: the built-in engine's log-probs equal the trainer's, so the ratio is 1
    assert m["sampling/sampling_logp_difference/max"] < 1e-4
    assert m["sampling/importance_sampling_ratio/min"] == pytest.approx(1.0, abs=1e-4)
    assert m["sampling/importance_sampling_ratio/max"] == pytest.approx(1.0, abs=1e-4)


@register_engine("test-offset")
def _offset_engine(model, eos_token_ids, pad_token_id, **kw):
    # sampler log-probs 0.7 lower than the trainer's: ratio exp(0.7) = 2.01
    return _Offset(build_engine("hf", model=model, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id), -0.7)


def test_engine_with_other_logprobs_is_corrected_and_reported(tmp_path):
    tr = _trainer(tmp_path, ["rollout.engine=test-offset", "rollout.importance_sampling.clip_max=1.5"])
    assert tr.batches.term("pref", "grpo").importance_correction is True  # "auto" for an engine whose log-probs are not the trainer's
    m = tr.step()
    assert m["sampling/sampling_logp_difference/mean"] == pytest.approx(0.7, abs=1e-4)
    assert m["sampling/sampling_logp_difference/max"] == pytest.approx(0.7, abs=1e-4)
    assert m["sampling/importance_sampling_ratio/max"] == pytest.approx(1.5)
    assert m["sampling/importance_sampling_ratio/min"] == pytest.approx(1.5)
