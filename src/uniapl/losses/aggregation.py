"""Reducing per-token losses [B, T] to a scalar, correctly under gradient accumulation.

The normaliser is passed in by the caller and must count the WHOLE accumulated batch (all micro-batches
and, under data parallelism, all processes), so that summing micro-batch gradients gives exactly the
gradient of the full-batch loss. When it is None, the micro-batch itself is the whole batch.
"""

from __future__ import annotations

from typing import Literal

import torch

Aggregation = Literal["token_mean", "seq_mean", "dr_grpo"]


def default_normalizer(mask: torch.Tensor, mode: Aggregation) -> float:
    """The normaliser of `mode` for a batch consisting of `mask` [B, T] alone."""
    if mode == "token_mean":
        return float(mask.sum().clamp(min=1).item())
    if mode == "seq_mean":
        return float(mask.shape[0])
    if mode == "dr_grpo":
        return float(mask.shape[0] * mask.shape[1])
    raise ValueError(f"unknown aggregation {mode!r}; allowed: token_mean, seq_mean, dr_grpo")


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, *, mode: Aggregation = "token_mean", normalizer: float | None = None
) -> torch.Tensor:
    """Scalar loss from per-token values.

    Args:
        per_token: [B, T] loss per token.
        mask: [B, T] 1 for tokens that count (completion tokens), 0 elsewhere.
        mode: "token_mean"  sum_{i,t} x_it m_it / N_tokens            (DAPO; default)
              "seq_mean"    sum_i (sum_t x_it m_it / |y_i|) / N_seqs    (original GRPO)
              "dr_grpo"     sum_{i,t} x_it m_it / (N_seqs * T_max)      (Dr. GRPO)
        normalizer: N_tokens, N_seqs or N_seqs * T_max of the whole accumulated batch.
    """
    mask = mask.to(per_token.dtype)
    if normalizer is None:
        normalizer = default_normalizer(mask, mode)
    if mode == "seq_mean":
        lengths = mask.sum(-1).clamp(min=1)
        return ((per_token * mask).sum(-1) / lengths).sum() / normalizer
    if mode in ("token_mean", "dr_grpo"):
        return (per_token * mask).sum() / normalizer
    raise ValueError(f"unknown aggregation {mode!r}; allowed: token_mean, seq_mean, dr_grpo")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of x over mask (a detached float for metrics); 0.0 for an empty mask."""
    m = mask.to(x.dtype)
    denom = m.sum()
    if denom.item() == 0:
        return 0.0
    return float(((x.detach() * m).sum() / denom).item())
