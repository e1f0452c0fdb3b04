"""The unified objective of the paper, eq. (2)."""

from __future__ import annotations

import torch


def unified_objective(
    *,
    sft: torch.Tensor | None = None,
    sft_adv: torch.Tensor | None = None,
    grpo: torch.Tensor | None = None,
    pref_adv: torch.Tensor | None = None,
    alpha: float = 0.5,
    lambda_adv: float = 0.01,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = alpha * (L_SFT + lambda_adv * L_ADV)|SFT slice + (1 - alpha) * (L_GRPO + lambda_adv * L_ADV)|pref slice.

    Each argument is an already-aggregated scalar term (or None when the paradigm does not use it). The
    slice weights are (alpha, 1 - alpha) when both slices are present and 1 for a single slice, so
    A-SFT = L_SFT + lambda_adv L_ADV, A-GRPO = L_GRPO + lambda_adv L_ADV, SFT and GRPO are special cases.
    The objective is linear in its terms, so it may be evaluated per micro-batch and summed.
    """
    has_sft = sft is not None or sft_adv is not None
    has_pref = grpo is not None or pref_adv is not None
    if not (has_sft or has_pref):
        raise ValueError("unified_objective: no loss term given")
    w_sft, w_pref = (alpha, 1.0 - alpha) if (has_sft and has_pref) else ((1.0, 0.0) if has_sft else (0.0, 1.0))
    zero = next(t for t in (sft, sft_adv, grpo, pref_adv) if t is not None) * 0.0
    sft_part = (sft if sft is not None else zero) + lambda_adv * (sft_adv if sft_adv is not None else zero)
    pref_part = (grpo if grpo is not None else zero) + lambda_adv * (pref_adv if pref_adv is not None else zero)
    loss = w_sft * sft_part + w_pref * pref_part
    return loss, {"loss/total": float(loss.detach())}
