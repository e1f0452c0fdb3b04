"""The adversarial term of UniAPL: the discriminator's coefficient weights the student's own log-likelihood."""

from __future__ import annotations

import torch

from uniapl.losses.aggregation import Aggregation, aggregate


def adversarial_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    coef: torch.Tensor,
    *,
    aggregation: Aggregation = "token_mean",
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_ADV = -E_{y~pi}[D(x, y_teacher, y)], as a score-function loss on sampled responses.

    D is a frozen scorer of sampled text, so its gradient flows through the policy's log-likelihood of
    the sampled response:  per token  -coef_i * log pi(y_it | x_i, y_i,<t), aggregated like the policy loss.
    A response close to the teacher (coef > 0) is made more likely; a distant one (coef < 0) less likely.

    Args:
        logprobs: [B, T] log-probs of the sampled (student) tokens under the current policy.
        mask: [B, T] completion mask.
        coef: [B] discriminator coefficient in [-1, 1] (Algorithm 1); treated as a constant.
    """
    coef = coef.detach().to(logprobs.dtype)
    loss = aggregate(-coef[:, None] * logprobs, mask, mode=aggregation, normalizer=normalizer)
    return loss, {"loss/adv": float(loss.detach()), "adv/coef_mean": float(coef.mean()) if coef.numel() else 0.0}
