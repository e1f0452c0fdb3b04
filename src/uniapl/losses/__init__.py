"""Losses as pure functions: tensors and keyword arguments in, (loss, metrics) out."""

from uniapl.losses.adversarial import adversarial_loss
from uniapl.losses.aggregation import aggregate, default_normalizer, masked_mean
from uniapl.losses.chord import chord_sft_loss, mu_schedule, phi_weights
from uniapl.losses.dpo import dpo_loss, sequence_logprobs
from uniapl.losses.grpo import group_advantages, grpo_loss, k3_kl
from uniapl.losses.importance import rollout_importance_weights
from uniapl.losses.kto import kto_loss, kto_reference_point
from uniapl.losses.sft import sft_loss

__all__ = [
    "adversarial_loss",
    "aggregate",
    "chord_sft_loss",
    "default_normalizer",
    "dpo_loss",
    "group_advantages",
    "grpo_loss",
    "k3_kl",
    "kto_loss",
    "kto_reference_point",
    "masked_mean",
    "mu_schedule",
    "phi_weights",
    "rollout_importance_weights",
    "sequence_logprobs",
    "sft_loss",
]
