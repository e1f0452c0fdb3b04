"""GRPO: group-normalised advantages, clipped importance ratio, k3 KL to a frozen reference."""

from __future__ import annotations

from typing import Literal

import torch

from uniapl.losses.aggregation import Aggregation, aggregate, masked_mean


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    scale: Literal["group", "batch", "none"] = "group",
    eps: float = 1e-4,
) -> torch.Tensor:
    """A_i = (r_i - mean_group(r)) / (std + eps).

    Args:
        rewards: [B] rewards, B = n_prompts * group_size, the G responses of a prompt contiguous.
        scale: "group": divide by the group's std; "batch": by the std of the whole batch;
            "none": centre only (Dr. GRPO).
    Returns: [B] advantages (float32). A group whose rewards are all equal gets 0.
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} entries, got {tuple(rewards.shape)}")
    r = rewards.float().view(-1, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale == "group":
        std = r.std(dim=1, keepdim=True, unbiased=True) if group_size > 1 else torch.zeros_like(r[:, :1])
        out = centred / (std + eps)
    elif scale == "batch":
        std = rewards.float().std(unbiased=True) if rewards.numel() > 1 else torch.zeros(())
        out = centred / (std + eps)
    elif scale == "none":
        out = centred
    else:
        raise ValueError(f"unknown advantage scale {scale!r}; allowed: group, batch, none")
    return out.reshape(-1)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1  (>= 0)."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    aggregation: Aggregation = "token_mean",
    normalizer: float | None = None,
    importance_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_GRPO = -(J_CLIP - beta * KL).

    Per token:  ratio = exp(logp - logp_old)
                l_t = -w_t * min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) + beta * k3(logp, ref)
    w_t = 1, or the rollout-correction weight pi_theta / pi_sampler (`importance.rollout_importance_weights`) when the
    rollouts came from an engine whose log-probs are not the trainer's (TRL applies it at the same place).

    Args:
        logprobs: [B, T] log-probs of the sampled tokens under the current policy (with grad).
        old_logprobs: [B, T] the same under the policy that sampled them (no grad). With one update per
            rollout batch this is logprobs.detach(), the ratio is 1 and clipping is inactive.
        advantages: [B] one advantage per response (see `group_advantages`).
        mask: [B, T] completion mask.
        ref_logprobs: [B, T] under the frozen reference; required when beta > 0.
        importance_weights: [B, T] or [B, 1] rollout-correction weights (no grad), or None.
    Returns: (loss, metrics) with TRL's names: kl, clip_ratio/low_mean, clip_ratio/high_mean,
        clip_ratio/region_mean.
    """
    if beta > 0 and ref_logprobs is None:
        raise ValueError("grpo_loss: beta > 0 needs ref_logprobs")
    ratio = torch.exp(logprobs - old_logprobs.detach())
    adv = advantages.detach().to(logprobs.dtype)[:, None]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    if importance_weights is not None:
        per_token = per_token * importance_weights.detach().to(per_token.dtype)
    metrics: dict[str, float] = {}
    if beta > 0:
        kl = k3_kl(logprobs, ref_logprobs.detach())
        per_token = per_token + beta * kl
        metrics["kl"] = masked_mean(kl, mask)
    elif ref_logprobs is not None:
        metrics["kl"] = masked_mean(k3_kl(logprobs, ref_logprobs), mask)
    loss = aggregate(per_token, mask, mode=aggregation, normalizer=normalizer)
    low = (ratio < 1.0 - eps_low) & (adv < 0)
    high = (ratio > 1.0 + eps_high) & (adv > 0)
    metrics["loss/grpo"] = float(loss.detach())
    metrics["clip_ratio/low_mean"] = masked_mean(low.float(), mask)
    metrics["clip_ratio/high_mean"] = masked_mean(high.float(), mask)
    metrics["clip_ratio/region_mean"] = masked_mean((low | high).float(), mask)
    return loss, metrics
