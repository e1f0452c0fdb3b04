"""Kahneman-Tversky Optimization (paper appendix A.4.2): binary desirable / undesirable labels, no pairs."""

from __future__ import annotations

import torch


def kto_reference_point(policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> float:
    """z = max(0, mean(log pi(y|x) - log ref(y|x))), a detached batch estimate of KL(pi || ref).

    KTO estimates it on MISMATCHED pairs (prompt x_i with the completion of another row), so that it
    does not reward the very completions being labelled. [B], [B] -> float.
    """
    if policy_logps.numel() == 0:
        return 0.0
    return max(0.0, float((policy_logps.detach() - ref_logps.detach()).mean()))


def kto_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor,
    *,
    kl: float = 0.0,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_KTO = E[ w(y) * (1 - v(x, y)) ],  r = log pi(y|x) - log ref(y|x),
        desirable:   v = sigmoid(beta * (r - z)),   w = desirable_weight
        undesirable: v = sigmoid(beta * (z - r)),   w = undesirable_weight

    Args:
        logps: [B] sequence log-probs (summed over completion tokens) under the policy (with grad).
        ref_logps: [B] the same under the frozen reference.
        labels: [B] bool, True = desirable.
        kl: the reference point z (`kto_reference_point`), a constant.
        normalizer: examples in the whole accumulated batch (default B).
    Returns: (loss, metrics): loss/kto, kto/kl, rewards/chosen and rewards/rejected (mean beta * r of
        desirable / undesirable rows; 0 when a class is absent).
    """
    r = logps - ref_logps.detach()
    lab = labels.to(torch.bool)
    v = torch.where(lab, torch.sigmoid(beta * (r - kl)), torch.sigmoid(beta * (kl - r)))
    w = torch.where(lab, torch.full_like(r, desirable_weight), torch.full_like(r, undesirable_weight))
    per_example = w * (1.0 - v)
    n = float(per_example.numel()) if normalizer is None else normalizer
    loss = per_example.sum() / max(n, 1e-12)
    br = (beta * r).detach()
    metrics = {
        "loss/kto": float(loss.detach()),
        "kto/kl": float(kl),
        "rewards/chosen": float(br[lab].mean()) if lab.any() else 0.0,
        "rewards/rejected": float(br[~lab].mean()) if (~lab).any() else 0.0,
    }
    return loss, metrics
