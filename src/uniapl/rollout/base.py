"""The rollout interface: every engine (the built-in KV-cache sampler, vLLM later) returns a RolloutBatch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0
    num_samples: int = 1  # responses per prompt (G); the samples of a prompt are contiguous
    seed: int | None = None


@dataclass
class RolloutBatch:
    """N = len(prompts) * num_samples sampled responses.

    prompt_ids:      [N, P] left-padded prompt tokens     prompt_mask:      [N, P]
    completion_ids:  [N, T] right-padded sampled tokens   completion_mask:  [N, T] (1 up to and including EOS)
    logprobs:        [N, T] log-probs of the sampled tokens under the sampler's distribution
                     (logits / temperature, before top-p/top-k truncation); 0 for greedy.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    logprobs: torch.Tensor
    num_samples: int = 1

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)

    def rows(self, sl: slice) -> "RolloutBatch":
        """The rows `sl` of this batch (completion width trimmed to the longest kept row)."""
        cmask = self.completion_mask[sl]
        width = int(cmask.sum(-1).max().item()) if cmask.numel() else 0
        return RolloutBatch(self.prompt_ids[sl], self.prompt_mask[sl], self.completion_ids[sl, :width], cmask[:, :width],
                            self.logprobs[sl, :width], num_samples=self.num_samples)

    def sequences(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) [N, P + T] of prompt and completion, for scoring."""
        return (torch.cat([self.prompt_ids, self.completion_ids], 1), torch.cat([self.prompt_mask, self.completion_mask], 1))


class RolloutEngine(Protocol):
    # True when RolloutBatch.logprobs equal the trainer's recomputation (then rollout.importance_sampling
    # "auto" applies no correction); engines with their own kernels or weight copies (vLLM) leave it False
    logprobs_match_trainer: bool

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> RolloutBatch: ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from `model`'s current weights (a no-op for in-process engines)."""
        ...


ENGINES: dict[str, Callable[..., RolloutEngine]] = {}


def register_engine(name: str):
    def deco(factory):
        ENGINES[name] = factory
        return factory

    return deco


def build_engine(name: str, **kwargs) -> RolloutEngine:
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; registered: {', '.join(sorted(ENGINES))}")
    return ENGINES[name](**kwargs)


def build_engine_from_config(cfg, model: torch.nn.Module, *, eos_token_ids: list[int], pad_token_id: int) -> RolloutEngine:
    """The engine `cfg.rollout.engine` with its options from the config: `rollout.builtin` for "hf",
    `rollout.vllm` for "vllm" (whose max_model_len defaults to data.max_prompt_tokens + rollout.max_new_tokens)."""
    rc = cfg.rollout
    kwargs: dict = {}
    if rc.engine == "hf":
        kwargs["options"] = rc.builtin
    elif rc.engine == "vllm":
        kwargs["options"] = rc.vllm
        kwargs["max_model_len"] = cfg.data.max_prompt_tokens + rc.max_new_tokens
    return build_engine(rc.engine, model=model, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id, **kwargs)
