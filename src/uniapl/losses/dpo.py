"""Direct Preference Optimization (paper appendix A.4.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_logprobs(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log pi(y | x) = sum_t log pi(y_t | x, y_<t) over completion tokens. [B, T], [B, T] -> [B]."""
    return (logprobs * mask.to(logprobs.dtype)).sum(-1)


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_DPO = -E[ log sigmoid( beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))] ) ].

    Args:
        chosen_logps / rejected_logps: [B] sequence log-probs (summed over completion tokens, see
            `sequence_logprobs`) of the preferred y_w and dispreferred y_l under the policy (with grad).
        ref_chosen_logps / ref_rejected_logps: [B] the same under the frozen reference (no grad).
        normalizer: number of pairs of the whole accumulated batch (default B): the loss is a sum over
            this micro-batch's pairs divided by it.
    Returns: (loss, metrics) with TRL's names: rewards/chosen, rewards/rejected (beta * log-ratio),
        rewards/margins, rewards/accuracies.
    """
    chosen_ratio = chosen_logps - ref_chosen_logps.detach()
    rejected_ratio = rejected_logps - ref_rejected_logps.detach()
    logits = beta * (chosen_ratio - rejected_ratio)
    per_pair = -F.logsigmoid(logits)
    n = float(per_pair.numel()) if normalizer is None else normalizer
    loss = per_pair.sum() / max(n, 1e-12)
    rc, rr = (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()
    metrics = {
        "loss/dpo": float(loss.detach()),
        "rewards/chosen": float(rc.mean()) if rc.numel() else 0.0,
        "rewards/rejected": float(rr.mean()) if rr.numel() else 0.0,
        "rewards/margins": float((rc - rr).mean()) if rc.numel() else 0.0,
        "rewards/accuracies": float((rc > rr).float().mean()) if rc.numel() else 0.0,
    }
    return loss, metrics
