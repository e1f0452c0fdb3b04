"""CHORD (arXiv 2508.11408): a scheduled mix of on-policy GRPO and off-policy expert SFT.

    L = (1 - mu(step)) * L_GRPO|on-policy rows + mu(step) * L_SFT|expert rows

with mu warming up linearly to a peak, then decaying along a half cosine to a valley, and (CHORD-phi)
an optional token weight phi = p (1 - p) on the SFT term, p the probability of the expert token, under
stop-gradient: tokens the policy already predicts with certainty (p ~ 1) or finds impossible (p ~ 0)
carry little weight, so expert data refines the policy without overwriting it.
"""

from __future__ import annotations

import math

import torch

from uniapl.losses.aggregation import Aggregation, aggregate, masked_mean


def mu_schedule(step: int, warmup: int, decay: int, peak: float, valley: float) -> float:
    """The weight of the SFT term at `step` (0-based).

        step < warmup:                    peak * step / warmup
        step >= warmup + decay:           valley
        otherwise:                        valley + (peak - valley) * 0.5 * (1 + cos(pi * (step - warmup) / decay))

    Trinity-RFT's example uses warmup 200, decay 400, peak 0.5, valley 0.02.
    """
    if warmup < 0 or decay < 0:
        raise ValueError(f"mu_schedule: warmup and decay must be >= 0, got {warmup}, {decay}")
    if step < warmup:
        return peak * step / warmup
    if step >= warmup + decay:
        return valley
    return valley + (peak - valley) * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / decay))


def phi_weights(logprobs: torch.Tensor) -> torch.Tensor:
    """phi = p (1 - p) with p = exp(logprobs), detached (stop-gradient). [B, T] -> [B, T], values in [0, 1/4]."""
    p = logprobs.detach().exp()
    return p * (1.0 - p)


def chord_sft_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    phi: bool = False,
    aggregation: Aggregation = "token_mean",
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """CHORD's SFT term on expert rows: per token  -log p  (plain) or  -stopgrad(p (1 - p)) * log p  (phi).

    Args:
        logprobs: [B, T] log p of the expert tokens under the current policy (with grad).
        mask: [B, T] 1 on expert response tokens.
        phi: weight each token by `phi_weights(logprobs)`.
        aggregation / normalizer: see `uniapl.losses.aggregation.aggregate` (the phi weights are not
            renormalised: CHORD-phi's loss is smaller than plain SFT's by the mean weight).
    Returns: (loss, {"loss/sft": value, "sft/nll_per_token": ..., "chord/phi_mean": mean weight (phi only)}).
    """
    per_token = -logprobs
    metrics: dict[str, float] = {}
    if phi:
        w = phi_weights(logprobs)
        per_token = w * per_token
        metrics["chord/phi_mean"] = masked_mean(w, mask)
    loss = aggregate(per_token, mask, mode=aggregation, normalizer=normalizer)
    metrics["loss/sft"] = float(loss.detach())
    metrics["sft/nll_per_token"] = -masked_mean(logprobs, mask)
    return loss, metrics
