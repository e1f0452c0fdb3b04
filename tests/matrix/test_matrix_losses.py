"""Hand-computed values and gradient directions: CHORD's mu schedule and phi weighting, DPO, KTO; paradigms as data."""

import math

import pytest
import torch

from uniapl.algorithms import ALGORITHMS, Paradigm, get_algorithm, register_algorithm, slice_objective
from uniapl.config import load_config
from uniapl.losses import (chord_sft_loss, dpo_loss, kto_loss, kto_reference_point, mu_schedule, phi_weights,
                           sequence_logprobs)
from uniapl.losses.chord import mu_schedule as mu_schedule_direct


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------- CHORD
def test_mu_schedule_hand_values():
    w, d, peak, valley = 10, 20, 0.5, 0.02
    assert mu_schedule_direct is mu_schedule
    assert mu_schedule(0, w, d, peak, valley) == 0.0
    assert mu_schedule(5, w, d, peak, valley) == pytest.approx(0.25)  # linear warm-up
    assert mu_schedule(10, w, d, peak, valley) == pytest.approx(0.5)  # peak at the end of warm-up
    assert mu_schedule(20, w, d, peak, valley) == pytest.approx(0.02 + 0.48 * 0.5)  # half-way down the cosine
    assert mu_schedule(15, w, d, peak, valley) == pytest.approx(0.02 + 0.48 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert mu_schedule(30, w, d, peak, valley) == pytest.approx(0.02)
    assert mu_schedule(1000, w, d, peak, valley) == pytest.approx(0.02)
    assert mu_schedule(0, 0, 20, peak, valley) == pytest.approx(0.5)  # no warm-up: start at the peak
    assert mu_schedule(3, 3, 0, peak, valley) == pytest.approx(0.02)  # no decay: straight to the valley
    values = [mu_schedule(s, w, d, peak, valley) for s in range(10, 31)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay
    with pytest.raises(ValueError):
        mu_schedule(0, -1, 1, peak, valley)


def test_phi_weights_hand_values_and_stop_gradient():
    logp = torch.log(torch.tensor([[0.5, 0.9], [0.2, 1e-9]])).requires_grad_(True)
    phi = phi_weights(logp)
    assert torch.allclose(phi, torch.tensor([[0.25, 0.09], [0.16, 1e-9]]), atol=1e-7)
    assert not phi.requires_grad


def test_chord_sft_loss_phi_hand_value():
    logp = torch.log(torch.tensor([[0.5, 0.9], [0.2, 0.7]]))
    mask = torch.tensor([[1, 1], [1, 0]])
    plain, m = chord_sft_loss(logp, mask)
    assert plain.item() == pytest.approx((math.log(2) - math.log(0.9) - math.log(0.2)) / 3, rel=1e-6)
    assert "chord/phi_mean" not in m
    weighted, m = chord_sft_loss(logp, mask, phi=True)
    expect = (0.25 * math.log(2) + 0.09 * -math.log(0.9) + 0.16 * -math.log(0.2)) / 3
    assert weighted.item() == pytest.approx(expect, rel=1e-5)
    assert m["chord/phi_mean"] == pytest.approx((0.25 + 0.09 + 0.16) / 3, rel=1e-5)


def test_chord_phi_gradient_is_phi_times_sft_gradient():
    """stop-gradient: d(-phi log p) = phi * d(-log p), and it still raises the expert token's logit."""
    logits = torch.tensor([[0.3, -0.2, 0.1]], requires_grad=True)
    logp = torch.log_softmax(logits, -1)[:, :1]  # expert token 0
    mask = torch.ones(1, 1)
    (g_plain,) = torch.autograd.grad(chord_sft_loss(logp, mask)[0], logits, retain_graph=True)
    (g_phi,) = torch.autograd.grad(chord_sft_loss(logp, mask, phi=True)[0], logits)
    p = torch.softmax(logits.detach(), -1)[0, 0]
    assert torch.allclose(g_phi, p * (1 - p) * g_plain, atol=1e-7)
    assert g_phi[0, 0] < 0


# ---------------------------------------------------------------- DPO
def test_sequence_logprobs_sums_completion_tokens():
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert sequence_logprobs(logp, mask).tolist() == [-3.0, -0.5]


def test_dpo_loss_hand_value_and_metrics():
    c, r = torch.tensor([-10.0]), torch.tensor([-12.0])
    rc, rr = torch.tensor([-11.0]), torch.tensor([-11.0])
    loss, m = dpo_loss(c, r, rc, rr, beta=0.1)
    # logits = 0.1 * ((-10 + 11) - (-12 + 11)) = 0.2
    assert loss.item() == pytest.approx(-math.log(sig(0.2)), rel=1e-6)
    assert m["rewards/chosen"] == pytest.approx(0.1) and m["rewards/rejected"] == pytest.approx(-0.1)
    assert m["rewards/margins"] == pytest.approx(0.2) and m["rewards/accuracies"] == 1.0
    # two pairs, normaliser 4 (pairs of the whole accumulated batch): sum / 4
    loss2, _ = dpo_loss(torch.tensor([-10.0, -1.0]), torch.tensor([-12.0, -1.0]), torch.tensor([-11.0, -1.0]),
                        torch.tensor([-11.0, -1.0]), beta=0.1, normalizer=4)
    assert loss2.item() == pytest.approx((-math.log(sig(0.2)) + math.log(2)) / 4, rel=1e-6)


def test_dpo_gradient_raises_chosen_lowers_rejected():
    c = torch.tensor([-10.0], requires_grad=True)
    r = torch.tensor([-12.0], requires_grad=True)
    rc, rr = torch.tensor([-11.0], requires_grad=True), torch.tensor([-11.0], requires_grad=True)
    loss, _ = dpo_loss(c, r, rc, rr, beta=0.1)
    loss.backward()
    assert c.grad.item() == pytest.approx(-0.1 * sig(-0.2), rel=1e-6)  # descending raises log pi(y_w)
    assert r.grad.item() == pytest.approx(0.1 * sig(-0.2), rel=1e-6)  # and lowers log pi(y_l)
    assert rc.grad is None and rr.grad is None  # the reference is detached


# ---------------------------------------------------------------- KTO
def test_kto_reference_point_is_clamped_mean_log_ratio():
    assert kto_reference_point(torch.tensor([-10.0, -12.0]), torch.tensor([-11.0, -13.0])) == pytest.approx(1.0)
    assert kto_reference_point(torch.tensor([-12.0]), torch.tensor([-11.0])) == 0.0
    assert kto_reference_point(torch.zeros(0), torch.zeros(0)) == 0.0


def test_kto_loss_hand_value():
    logps, ref = torch.tensor([-10.0, -12.0]), torch.tensor([-11.0, -11.0])  # r = [1, -1]
    labels = torch.tensor([True, False])
    loss, m = kto_loss(logps, ref, labels, kl=0.5, beta=0.1, desirable_weight=1.0, undesirable_weight=1.5)
    desirable = 1 - sig(0.1 * (1 - 0.5))
    undesirable = 1 - sig(0.1 * (0.5 + 1))
    assert loss.item() == pytest.approx((desirable + 1.5 * undesirable) / 2, rel=1e-6)
    assert m["rewards/chosen"] == pytest.approx(0.1) and m["rewards/rejected"] == pytest.approx(-0.1)
    assert m["kto/kl"] == 0.5


def test_kto_gradient_directions():
    logps = torch.tensor([-10.0, -12.0], requires_grad=True)
    loss, _ = kto_loss(logps, torch.tensor([-11.0, -11.0]), torch.tensor([True, False]), kl=0.0, beta=0.1)
    loss.backward()
    assert logps.grad[0] < 0  # desirable: more likely
    assert logps.grad[1] > 0  # undesirable: less likely
    # hand value of the desirable gradient: d/dr (1 - sig(b r)) / 2 = -b sig(b r)(1 - sig(b r)) / 2
    s = sig(0.1)
    assert logps.grad[0].item() == pytest.approx(-0.1 * s * (1 - s) / 2, rel=1e-6)


# ---------------------------------------------------------------- the objective and paradigms
def test_objective_with_explicit_weights_and_offline_terms():
    one = torch.tensor(1.0)
    loss_cfg = load_config(None, ["loss.alpha=0.25", "loss.lambda_adv=0.1"]).loss
    p = Paradigm("sft_then_dpo_test", sft=(("sft", 1.0),), pref=(("dpo", 1.0), ("adversarial", "lambda_adv")))
    w_sft, w_pref = p.slice_weights(loss_cfg)
    sft = dict(p.term_weights("sft", loss_cfg))
    pref = dict(p.term_weights("pref", loss_cfg))
    assert pref == {"dpo": 1.0, "adversarial": 0.1}
    loss = slice_objective(w_sft, [(sft["sft"], one * 2)]) + slice_objective(
        w_pref, [(pref["dpo"], one * 4), (pref["adversarial"], one * 10)])
    assert loss.item() == pytest.approx(0.25 * 2 + 0.75 * (4 + 1))
    # a micro-batch holding only the preference slice is still weighted as the paradigm says
    assert slice_objective(get_algorithm("chord").slice_weights(0.3)[1], [(1.0, one)]).item() == pytest.approx(0.7)
    assert slice_objective(get_algorithm("dpo").slice_weights(loss_cfg)[1], [(1.0, one)]).item() == pytest.approx(1.0)


def test_every_algorithm_is_registered_with_its_terms():
    sft, grpo, dpo, kto, adv = ("sft", 1.0), ("grpo", 1.0), ("dpo", 1.0), ("kto", 1.0), ("adversarial", "lambda_adv")
    expect = {
        "sft": ((sft,), ()), "grpo": ((), (grpo,)), "a_sft": ((sft, adv), ()), "a_grpo": ((), (grpo, adv)),
        "unified": ((sft, adv), (grpo, adv)), "chord": ((sft,), (grpo,)),
        "a_chord": ((sft,), (grpo, adv)), "dpo": ((), (dpo,)), "a_dpo": ((), (dpo, adv)),
        "kto": ((), (kto,)), "a_kto": ((), (kto, adv)),
    }
    for name, (sft_terms, pref_terms) in expect.items():
        p = get_algorithm(name)
        assert (p.sft, p.pref) == (sft_terms, pref_terms), name
        load_config(None, [f"algorithm={name}"])  # selectable by name in the config
    assert get_algorithm("chord").weighting == "chord_mu" and get_algorithm("unified").weighting == "alpha"


def test_slice_weights_follow_the_weighting_rule():
    cfg = load_config(None, ["loss.alpha=0.3", "loss.chord.mu_warmup_steps=10", "loss.chord.mu_decay_steps=20",
                             "loss.chord.mu_peak=0.5", "loss.chord.mu_valley=0.02"])
    assert get_algorithm("unified").slice_weights(cfg.loss, 7) == pytest.approx((0.3, 0.7))
    assert get_algorithm("chord").slice_weights(cfg.loss, 5) == pytest.approx((0.25, 0.75))
    assert get_algorithm("chord").slice_weights(cfg.loss, 100) == pytest.approx((0.02, 0.98))
    assert get_algorithm("grpo").slice_weights(cfg.loss, 5) == (0.0, 1.0)
    assert get_algorithm("sft").slice_weights(cfg.loss, 5) == (1.0, 0.0)


def test_register_algorithm_rejects_bad_paradigms():
    with pytest.raises(ValueError, match="at most one"):
        register_algorithm(Paradigm("bad1", pref=(("grpo", 1.0), ("dpo", 1.0))))
    with pytest.raises(ValueError, match="weighting"):
        register_algorithm(Paradigm("bad2", sft=(("sft", 1.0),), weighting="nope"))
    with pytest.raises(ValueError, match="cannot stand on the sft slice"):
        register_algorithm(Paradigm("bad3", sft=(("grpo", 1.0),)))
    with pytest.raises(ValueError, match="unknown term"):
        register_algorithm(Paradigm("bad4", pref=(("ppo", 1.0),)))
    assert not {"bad1", "bad2", "bad3", "bad4"} & set(ALGORITHMS)


def test_chord_expert_share_sets_sft_rows():
    from uniapl.training.batch import sft_batch_size

    cfg = load_config(None, ["algorithm=chord", "loss.chord.expert_share=0.2", "train.pref_batch_size=8",
                             "rollout.num_generations=4", "train.sft_batch_size=3"])
    assert sft_batch_size(cfg, get_algorithm("chord")) == 8  # 8 expert rows : 32 on-policy rows = 0.2 : 0.8
    assert sft_batch_size(cfg, get_algorithm("unified")) == 3  # only CHORD reads the share
    with pytest.raises(Exception, match="expert_share"):
        load_config(None, ["loss.chord.expert_share=1.5"])
