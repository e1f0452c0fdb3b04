"""Hand-computed values and gradient directions for every loss."""

import math

import pytest
import torch

from uniapl.algorithms import Paradigm, get_algorithm, register_algorithm, slice_objective
from uniapl.config import load_config
from uniapl.losses import adversarial_loss, aggregate, group_advantages, grpo_loss, k3_kl, sft_loss


def test_sft_loss_token_mean_hand_value_and_prompt_masked():
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])  # -9 entries are prompt/padding: must not count
    loss, m = sft_loss(logp, mask)
    assert loss.item() == pytest.approx((1 + 2 + 0.5) / 3)
    assert m["loss/sft"] == pytest.approx(3.5 / 3)


def test_sft_loss_gradient_raises_target_logprob():
    logits = torch.zeros(1, 4, requires_grad=True)
    logp = torch.log_softmax(logits, -1)[:, :1].expand(1, 1)  # the target is token 0
    loss, _ = sft_loss(logp, torch.ones(1, 1))
    loss.backward()
    assert logits.grad[0, 0] < 0  # descending the loss increases the target's logit
    assert (logits.grad[0, 1:] > 0).all()


def test_seq_mean_and_dr_grpo_aggregation():
    x = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert aggregate(x, mask, mode="token_mean").item() == pytest.approx(6 / 3)
    assert aggregate(x, mask, mode="seq_mean").item() == pytest.approx((2 + 2) / 2)
    assert aggregate(x, mask, mode="dr_grpo").item() == pytest.approx(6 / (2 * 3))


def test_token_mean_correct_under_gradient_accumulation():
    """Summing micro-batch losses with the global token count equals the full-batch loss (and gradient)."""
    torch.manual_seed(0)
    w = torch.randn(5, requires_grad=True)
    feats = torch.randn(4, 6, 5)
    mask = torch.tensor([[1] * 6, [1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    full, _ = sft_loss(feats @ w, mask)
    (g_full,) = torch.autograd.grad(full, w)
    n = float(mask.sum())
    acc = torch.zeros(5)
    total = 0.0
    for sl in (slice(0, 2), slice(2, 4)):  # 7 tokens, then 5 tokens
        part, _ = sft_loss(feats[sl] @ w, mask[sl], normalizer=n)
        (g,) = torch.autograd.grad(part, w)
        acc += g
        total += part.item()
    assert total == pytest.approx(full.item(), rel=1e-6)
    assert torch.allclose(acc, g_full, atol=1e-6)
    # the naive per-micro-batch mean is NOT the same: the bug this guards against
    naive = sum(sft_loss(feats[sl] @ w, mask[sl])[0].item() for sl in (slice(0, 2), slice(2, 4))) / 2
    assert naive != pytest.approx(full.item(), rel=1e-3)


def test_group_advantages_hand_values():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    a = group_advantages(r, 4)
    std = torch.tensor([1.0, 0.0, 0.0, 0.0]).std().item()  # unbiased: 0.5
    assert a[0].item() == pytest.approx(0.75 / (std + 1e-4))
    assert a[1].item() == pytest.approx(-0.25 / (std + 1e-4))
    assert torch.all(a[4:] == 0)  # a group with equal rewards carries no signal
    assert torch.allclose(group_advantages(r, 4, scale="none")[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    bstd = r.std().item()
    assert group_advantages(r, 4, scale="batch")[0].item() == pytest.approx(0.75 / (bstd + 1e-4))
    with pytest.raises(ValueError):
        group_advantages(torch.ones(5), 4)


def test_grpo_loss_on_policy_equals_minus_advantage():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.3]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    mask = torch.ones(2, 2)
    loss, m = grpo_loss(logp, logp.detach(), adv, mask)
    # ratio = 1: per-token loss = -A; token mean over 4 tokens
    assert loss.item() == pytest.approx(-(2 + 2 - 1 - 1) / 4)
    loss.backward()
    # gradient of -ratio*A wrt logp is -A/N: positive advantage -> logp goes up when descending
    assert torch.allclose(logp.grad, torch.tensor([[-0.5, -0.5], [0.25, 0.25]]))
    assert m["clip_ratio/region_mean"] == 0.0


def test_grpo_clipping_hand_values():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]])).requires_grad_()
    mask = torch.ones(1, 3)
    # positive advantage: ratio 1.5 clipped to 1.2 (no gradient), 0.5 unclipped, 1.1 unclipped
    loss, m = grpo_loss(logp, old, torch.tensor([1.0]), mask, eps_low=0.2, eps_high=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 0.5 + 1.1) / 3)
    loss.backward()
    assert logp.grad[0, 0].item() == 0.0  # clipped: no push beyond 1 + eps
    assert logp.grad[0, 1].item() == pytest.approx(-0.5 / 3)
    assert m["clip_ratio/high_mean"] == pytest.approx(1 / 3)
    assert m["clip_ratio/low_mean"] == 0.0
    # asymmetric eps (DAPO): eps_high 0.6 no longer clips 1.5
    loss2, m2 = grpo_loss(logp.detach(), old, torch.tensor([1.0]), mask, eps_low=0.2, eps_high=0.6)
    assert loss2.item() == pytest.approx(-(1.5 + 0.5 + 1.1) / 3)
    assert m2["clip_ratio/high_mean"] == 0.0
    # negative advantage: ratio 0.5 < 1 - eps_low is clipped at 0.8
    loss3, m3 = grpo_loss(logp.detach(), old, torch.tensor([-1.0]), mask)
    assert loss3.item() == pytest.approx((1.5 + 0.8 + 1.1) / 3)
    assert m3["clip_ratio/low_mean"] == pytest.approx(1 / 3)


def test_k3_kl_hand_value_and_beta():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0]])
    kl = k3_kl(logp, ref)
    assert kl[0, 0].item() == pytest.approx(math.exp(-0.5) + 0.5 - 1)
    assert kl[0, 1].item() == 0.0
    loss, m = grpo_loss(logp, logp.detach(), torch.tensor([0.0]), torch.ones(1, 2), ref_logprobs=ref, beta=0.1)
    assert loss.item() == pytest.approx(0.1 * (math.exp(-0.5) + 0.5 - 1) / 2)
    assert m["kl"] == pytest.approx((math.exp(-0.5) + 0.5 - 1) / 2)
    loss.backward()
    # logp above ref (-1 > -1.5): the gradient is positive, so descending pulls logp down toward ref
    assert logp.grad[0, 0].item() == pytest.approx(0.1 * (1 - math.exp(-0.5)) / 2)
    with pytest.raises(ValueError):
        grpo_loss(logp, logp.detach(), torch.tensor([0.0]), torch.ones(1, 2), beta=0.1)


def test_adversarial_loss_hand_value_and_direction():
    logp = torch.tensor([[-1.0, -3.0], [-2.0, -2.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    coef = torch.tensor([0.5, -1.0])
    loss, m = adversarial_loss(logp, mask, coef)
    assert loss.item() == pytest.approx((0.5 * 1 + 0.5 * 3 + -1.0 * 2) / 3)
    assert m["adv/coef_mean"] == pytest.approx(-0.25)
    loss.backward()
    # a teacher-like response (coef > 0) is made more likely, a distant one (coef < 0) less likely
    assert logp.grad[0, 0] < 0 and logp.grad[1, 0] > 0
    assert logp.grad[1, 1] == 0  # masked


def _objective(algorithm: str, values: dict[tuple[str, str], torch.Tensor], loss_cfg) -> torch.Tensor:
    """The paradigm's objective of the given term losses, as the update sums it over micro-batches."""
    p = get_algorithm(algorithm)
    weight = dict(zip(("sft", "pref"), p.slice_weights(loss_cfg)))
    return sum(slice_objective(weight[s], [(c, values[(s, t)]) for t, c in p.term_weights(s, loss_cfg)])
               for s in ("sft", "pref") if p.slice_terms(s))


def test_unified_objective_weights():
    s, sa, g, pa = (torch.tensor(v) for v in (1.0, 2.0, 3.0, 4.0))
    values = {("sft", "sft"): s, ("sft", "adversarial"): sa, ("pref", "grpo"): g, ("pref", "adversarial"): pa}
    loss_cfg = load_config(None, ["loss.alpha=0.25", "loss.lambda_adv=0.1"]).loss
    loss = _objective("unified", values, loss_cfg)
    assert loss.item() == pytest.approx(0.25 * (1 + 0.1 * 2) + 0.75 * (3 + 0.1 * 4))
    # single-slice paradigms get weight 1: A-SFT and A-GRPO
    assert _objective("a_sft", values, loss_cfg).item() == pytest.approx(1.2)
    assert _objective("a_grpo", values, loss_cfg).item() == pytest.approx(3.4)
    assert _objective("sft", values, loss_cfg).item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        register_algorithm(Paradigm("no_terms"))
