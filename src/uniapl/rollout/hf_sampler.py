"""`sample(model, prompts, params, ...)`: one call of the built-in KV-cached engine (`engine.py`).

Kept as the function-style entry point (`uniapl.evaluation` uses it); `HFSampler` is the engine class.
"""

from __future__ import annotations

import torch

from uniapl.rollout.base import RolloutBatch, SamplingParams
from uniapl.rollout.engine import EngineOptions, KVCacheEngine, concat_batches, generate, left_pad

HFSampler = KVCacheEngine


def sample(
    model: torch.nn.Module,
    prompts: list[list[int]],
    params: SamplingParams,
    *,
    eos_token_ids: list[int],
    pad_token_id: int,
    cache: str = "auto",
) -> RolloutBatch:
    """Sample `params.num_samples` responses per prompt. See `RolloutBatch` for the shapes returned.

    cache: "auto" (static KV cache when the architecture is supported), "static" or "dynamic".
    """
    return generate(model, prompts, params, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id,
                    options=EngineOptions(cache=cache))


__all__ = ["HFSampler", "concat_batches", "left_pad", "sample"]
