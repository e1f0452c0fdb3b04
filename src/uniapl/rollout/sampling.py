"""Choosing the next token from a batch of logits: greedy, or temperature / top-k / top-p sampling.

Sampling draws ONE uniform number per row and inverts the row's cumulative distribution (one exp, one
cumsum and a binary search over the vocabulary). `torch.multinomial` does the same job by drawing an
exponential variable for every vocabulary entry, about 9x slower at V = 1024 and 4x at V = 151,936 on a
CPU core (docs/performance.md). The uniforms are drawn by the caller, so that an engine which drops
finished rows from its batch still gives every row the same random number it would have had otherwise.
"""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits outside top-k / nucleus top-p with -inf. logits: [N, V] float32."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, -1)
        remove = probs.cumsum(-1) - probs >= top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def next_tokens(logits: torch.Tensor, *, temperature: float, top_k: int = 0, top_p: float = 1.0,
                uniforms: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The next token of every row and its log-prob.

    Args:
        logits: [N, V] float32 (modified in place when sampling).
        temperature: 0 or less: greedy (log-probs returned as 0, as RolloutBatch documents).
        uniforms: [N] numbers in [0, 1), one per row (needed when sampling).
    Returns: tokens [N] long, log-probs [N] float32 under softmax(logits / temperature), before top-k/top-p
    truncation (the distribution the trainer's ratios are computed against).
    """
    if temperature <= 0:
        return logits.argmax(-1), torch.zeros(logits.shape[0], device=logits.device)
    if uniforms is None:
        raise ValueError("sampling needs one uniform number per row")
    z = logits.div_(temperature) if temperature != 1.0 else logits
    top = z.amax(-1, keepdim=True)
    truncated = bool(top_k and top_k < z.shape[-1]) or top_p < 1.0
    if truncated:
        lse = torch.logsumexp(z, -1, keepdim=True)
        weights = (filter_logits(z, top_k, top_p) - top).exp_()
    else:
        weights = (z - top).exp_()
    cdf = weights.cumsum_(-1)
    total = cdf[:, -1:]
    if not truncated:
        lse = top + total.log()
    # first index whose cumulative weight reaches u * total, u in (0, 1]: never a zero-weight token
    target = (1.0 - uniforms.to(cdf.dtype))[:, None] * total
    tok = torch.searchsorted(cdf, target).clamp_(max=z.shape[-1] - 1)
    logp = (z.gather(-1, tok) - lse).squeeze(-1)
    return tok.squeeze(-1), logp
