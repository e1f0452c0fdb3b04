"""Supervised fine-tuning: negative log-likelihood of the expert response."""

from __future__ import annotations

import torch

from uniapl.losses.aggregation import Aggregation, aggregate, masked_mean


def sft_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    aggregation: Aggregation = "token_mean",
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_SFT = -E_{(x,y)~D_SFT}[log pi(y|x)], on response tokens only.

    Args:
        logprobs: [B, T] log pi(y_t | x, y_<t) of the expert tokens (float32).
        mask: [B, T] 1 on response tokens that count. The prompt, padding and (for Qwen3 chat models)
            the empty think prefix are 0 here, so they carry no loss.
        aggregation / normalizer: see `uniapl.losses.aggregation.aggregate`.

    Returns: (loss, {"loss/sft": value, "sft/nll_per_token": mean NLL over this micro-batch}).
    """
    loss = aggregate(-logprobs, mask, mode=aggregation, normalizer=normalizer)
    return loss, {"loss/sft": float(loss.detach()), "sft/nll_per_token": -masked_mean(logprobs, mask)}
