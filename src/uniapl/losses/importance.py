"""Rollout correction: importance weights for the gap between the sampler's and the trainer's log-probs.

An engine that is not the trainer (vLLM: other kernels, other precision, a weight copy) samples from a
distribution pi_sampler slightly different from the trainer's pi_theta. The policy gradient is then biased;
weighting each token (or sequence) by pi_theta / pi_sampler, truncated or masked to keep the variance bounded,
removes most of it (truncated importance sampling, "Your Efficient RL Framework Secretly Brings You Off-Policy
RL Training", Yao et al. 2025; TRL's `vllm_importance_sampling_correction`, verl's rollout correction).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

ISMode = Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


def rollout_importance_weights(
    trainer_logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    mode: ISMode = "token_truncate",
    clip_min: float | None = None,
    clip_max: float | None = 3.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Importance weights w = pi_theta(y) / pi_sampler(y), truncated or masked (no grad).

    token modes:     w_t = exp(logp_t - logp_sampler_t)                          -> [B, T]
    sequence modes:  w   = exp(sum_t m_t (logp_t - logp_sampler_t))               -> [B, 1]
    *_truncate: w <- clamp(w, clip_min, clip_max);  *_mask: w <- 0 where w < clip_min or w > clip_max.
    Tokens whose sampler log-prob is NaN (not reported) get a zero difference (weight 1).

    Args:
        trainer_logprobs: [B, T] the trainer's log-probs of the sampled tokens (the policy that is updated).
        sampler_logprobs: [B, T] the rollout engine's log-probs of the same tokens.
        mask: [B, T] completion mask.
    Returns: (weights, metrics) with TRL's names: sampling/sampling_logp_difference/mean|max (|logp - logp_sampler|
        over the completion tokens), sampling/importance_sampling_ratio/min|mean|max (of the weights after truncation
        or masking; per token in token modes, per sequence in sequence modes).
    """
    m = mask.bool()
    diff = (trainer_logprobs.detach().float() - sampler_logprobs.detach().float().to(trainer_logprobs.device))
    diff = torch.nan_to_num(diff, nan=0.0) * m
    sequence = mode.startswith("sequence")
    log_w = diff.sum(-1, keepdim=True) if sequence else diff
    w = torch.exp(log_w)
    if mode.endswith("truncate"):
        w = torch.clamp(w, min=clip_min, max=clip_max)
    elif mode.endswith("mask"):
        lo = -math.inf if clip_min is None else clip_min
        hi = math.inf if clip_max is None else clip_max
        w = w.masked_fill((w < lo) | (w > hi), 0.0)
    else:
        raise ValueError(f"unknown importance-sampling mode {mode!r}; allowed: token_truncate, token_mask, "
                         "sequence_truncate, sequence_mask")
    delta = diff.abs()[m]
    flat = w.flatten() if sequence else w[m]
    metrics = {
        "sampling/sampling_logp_difference/mean": float(delta.mean()) if delta.numel() else 0.0,
        "sampling/sampling_logp_difference/max": float(delta.max()) if delta.numel() else 0.0,
        "sampling/importance_sampling_ratio/min": float(flat.min()) if flat.numel() else 0.0,
        "sampling/importance_sampling_ratio/mean": float(flat.mean()) if flat.numel() else 0.0,
        "sampling/importance_sampling_ratio/max": float(flat.max()) if flat.numel() else 0.0,
    }
    return w.to(trainer_logprobs.dtype), metrics
