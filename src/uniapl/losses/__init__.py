"""Losses as pure functions: tensors and keyword arguments in, (loss, metrics) out."""

from uniapl.losses.adversarial import adversarial_loss
from uniapl.losses.aggregation import aggregate, default_normalizer, masked_mean
from uniapl.losses.grpo import group_advantages, grpo_loss, k3_kl
from uniapl.losses.sft import sft_loss
from uniapl.losses.unified import unified_objective

__all__ = [
    "adversarial_loss",
    "aggregate",
    "default_normalizer",
    "group_advantages",
    "grpo_loss",
    "k3_kl",
    "masked_mean",
    "sft_loss",
    "unified_objective",
]
