"""Small helpers that turn token lists into padded tensors and split batches into micro-batches."""

from __future__ import annotations

import random
from typing import Sequence, TypeVar

import torch

T = TypeVar("T")


def pack(prompts: Sequence[list[int]], completions: Sequence[list[int]], pad_id: int
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded prompts followed by right-padded completions.

    Returns input_ids [N, P + T], attention_mask [N, P + T], completion_mask [N, T].
    """
    p = max(len(x) for x in prompts)
    t = max(len(x) for x in completions)
    n = len(prompts)
    ids = torch.full((n, p + t), pad_id, dtype=torch.long)
    attn = torch.zeros((n, p + t), dtype=torch.long)
    cmask = torch.zeros((n, t), dtype=torch.long)
    for i, (pr, co) in enumerate(zip(prompts, completions)):
        ids[i, p - len(pr) : p] = torch.tensor(pr, dtype=torch.long)
        attn[i, p - len(pr) : p] = 1
        ids[i, p : p + len(co)] = torch.tensor(co, dtype=torch.long)
        attn[i, p : p + len(co)] = 1
        cmask[i, : len(co)] = 1
    return ids, attn, cmask


def trim_padding(ids: torch.Tensor, attn: torch.Tensor, n_completion: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop prompt columns that are padding in every row (micro-batches are often narrower than the batch)."""
    prompt_part = attn[:, : ids.shape[1] - n_completion]
    used = prompt_part.any(0).nonzero()
    start = int(used[0]) if used.numel() else prompt_part.shape[1]
    return ids[:, start:], attn[:, start:]


def micro_slices(n: int, parts: int) -> list[slice]:
    """Split range(n) into `parts` contiguous near-equal slices (never empty unless n < parts)."""
    parts = max(1, min(parts, n)) if n else 1
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(parts)]


def sample_indices(n: int, k: int, rng: random.Random) -> list[int]:
    """k indices out of range(n): without replacement while k <= n, cycling otherwise."""
    if n == 0:
        raise ValueError("cannot sample from an empty dataset")
    if k <= n:
        return rng.sample(range(n), k)
    out = []
    while len(out) < k:
        out.extend(rng.sample(range(n), min(n, k - len(out))))
    return out
