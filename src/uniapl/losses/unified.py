"""The unified objective of the paper, eq. (2)."""

from __future__ import annotations

import torch


def unified_objective(
    *,
    sft: torch.Tensor | None = None,
    sft_adv: torch.Tensor | None = None,
    grpo: torch.Tensor | None = None,
    pref_adv: torch.Tensor | None = None,
    dpo: torch.Tensor | None = None,
    kto: torch.Tensor | None = None,
    alpha: float = 0.5,
    lambda_adv: float = 0.01,
    weights: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = w_sft * (L_SFT + lambda_adv * L_ADV)|SFT slice + w_pref * (L_PREF + lambda_adv * L_ADV)|pref slice.

    L_PREF is the preference slice's main term: L_GRPO (online, verifiable rewards), L_DPO or L_KTO
    (offline preference data, appendix A.4); whichever are given are summed.

    Each argument is an already-aggregated scalar term (or None when the paradigm does not use it).
    `weights` = (w_sft, w_pref) as the paradigm's weighting rule gives them (eq. 2's (alpha, 1 - alpha),
    CHORD's (mu, 1 - mu)); without it they are (alpha, 1 - alpha) when both slices are present and 1 for
    a single slice, so A-SFT = L_SFT + lambda_adv L_ADV, A-GRPO = L_GRPO + lambda_adv L_ADV, and SFT and
    GRPO are special cases. The objective is linear in its terms, so it may be evaluated per
    micro-batch (holding one slice only, given explicit `weights`) and summed.
    """
    pref_main = [t for t in (grpo, dpo, kto) if t is not None]
    has_sft = sft is not None or sft_adv is not None
    has_pref = bool(pref_main) or pref_adv is not None
    if not (has_sft or has_pref):
        raise ValueError("unified_objective: no loss term given")
    if weights is not None:
        w_sft, w_pref = weights
    else:
        w_sft, w_pref = (alpha, 1.0 - alpha) if (has_sft and has_pref) else ((1.0, 0.0) if has_sft else (0.0, 1.0))
    zero = next(t for t in (sft, sft_adv, grpo, pref_adv, dpo, kto) if t is not None) * 0.0
    sft_part = (sft if sft is not None else zero) + lambda_adv * (sft_adv if sft_adv is not None else zero)
    pref_part = sum(pref_main, zero) + lambda_adv * (pref_adv if pref_adv is not None else zero)
    loss = w_sft * sft_part + w_pref * pref_part
    return loss, {"loss/total": float(loss.detach())}
