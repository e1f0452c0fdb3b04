"""Batched KV-cached sampling with any Hugging Face causal LM, in-process.

One prefill forward over the left-padded prompts, then one decode forward per new token over the batch;
stops when every row has emitted an EOS token or max_new_tokens is reached.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from uniapl.rollout.base import RolloutBatch, SamplingParams, register_engine


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """[N] token lists -> (ids [N, P], mask [N, P]) left-padded to the longest."""
    width = max((len(p) for p in prompts), default=0)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits outside top-k / nucleus top-p with -inf. logits: [N, V] float32."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, -1).cumsum(-1)
        remove = cum - torch.softmax(sorted_logits, -1) >= top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def _cache_kwarg(model: torch.nn.Module) -> str:
    """transformers 5.x renamed `past_key_values` to `cache` (the old name warns); remote-code models may not have."""
    import inspect

    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: list[list[int]],
    params: SamplingParams,
    *,
    eos_token_ids: list[int],
    pad_token_id: int,
) -> RolloutBatch:
    """Sample `params.num_samples` responses per prompt. See `RolloutBatch` for the shapes returned."""
    device = next(model.parameters()).device
    expanded = [p for p in prompts for _ in range(params.num_samples)]
    ids, mask = left_pad(expanded, pad_token_id, device)
    n = ids.shape[0]
    gen = None
    if params.seed is not None:
        gen = torch.Generator(device=device)
        gen.manual_seed(params.seed)
    eos = torch.tensor(sorted(set(eos_token_ids)), device=device)
    was_training = model.training
    model.eval()
    cache = DynamicCache()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    ck = _cache_kwarg(model)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True, logits_to_keep=1,
                **{ck: cache})
    next_pos = position_ids[:, -1:] + 1
    tokens = torch.full((n, params.max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logps = torch.zeros((n, params.max_new_tokens), dtype=torch.float32, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    attn = mask
    greedy = params.temperature <= 0
    steps = 0
    for t in range(params.max_new_tokens):
        logits = out.logits[:, -1].float()
        if greedy:
            nxt = logits.argmax(-1)
            lp = torch.zeros(n, device=device)
        else:
            logits = logits / params.temperature
            full_logp = torch.log_softmax(logits, -1)
            filtered = _filter_logits(logits, params.top_k, params.top_p)
            probs = torch.softmax(filtered, -1)
            nxt = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
            lp = full_logp.gather(-1, nxt[:, None]).squeeze(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
        tokens[:, t] = nxt
        logps[:, t] = torch.where(done, torch.zeros_like(lp), lp)
        lengths += (~done).long()
        done = done | torch.isin(nxt, eos)
        steps = t + 1
        if bool(done.all()) or t + 1 == params.max_new_tokens:
            break
        attn = torch.cat([attn, torch.ones((n, 1), dtype=attn.dtype, device=device)], 1)
        out = model(input_ids=nxt[:, None], attention_mask=attn, position_ids=next_pos, use_cache=True, **{ck: cache})
        next_pos = next_pos + 1
    if was_training:
        model.train()
    tokens, logps = tokens[:, :steps], logps[:, :steps]
    comp_mask = (torch.arange(steps, device=device)[None, :] < lengths[:, None]).long()
    return RolloutBatch(ids, mask, tokens, comp_mask, logps, num_samples=params.num_samples)


class HFSampler:
    """The built-in engine: samples from the live policy in the trainer's process (no weight sync needed)."""

    def __init__(self, model: torch.nn.Module, *, eos_token_ids: list[int], pad_token_id: int, batch_size: int = 0):
        self.model = model
        self.eos_token_ids = list(eos_token_ids)
        self.pad_token_id = pad_token_id
        self.batch_size = batch_size  # prompts per forward batch; 0: all at once

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.model = model

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> RolloutBatch:
        if not self.batch_size or len(prompts) <= self.batch_size:
            return sample(self.model, prompts, params, eos_token_ids=self.eos_token_ids, pad_token_id=self.pad_token_id)
        parts = []
        for i, s in enumerate(range(0, len(prompts), self.batch_size)):
            p = SamplingParams(**{**params.__dict__, "seed": None if params.seed is None else params.seed + i})
            parts.append(sample(self.model, prompts[s : s + self.batch_size], p, eos_token_ids=self.eos_token_ids,
                                pad_token_id=self.pad_token_id))
        return concat_batches(parts, self.pad_token_id)


def _pad_to(x: torch.Tensor, width: int, value: int | float, left: bool) -> torch.Tensor:
    extra = width - x.shape[1]
    if extra <= 0:
        return x
    pad = torch.full((x.shape[0], extra), value, dtype=x.dtype, device=x.device)
    return torch.cat([pad, x] if left else [x, pad], 1)


def concat_batches(parts: list[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    p = max(b.prompt_ids.shape[1] for b in parts)
    t = max(b.completion_ids.shape[1] for b in parts)
    return RolloutBatch(
        torch.cat([_pad_to(b.prompt_ids, p, pad_token_id, True) for b in parts]),
        torch.cat([_pad_to(b.prompt_mask, p, 0, True) for b in parts]),
        torch.cat([_pad_to(b.completion_ids, t, pad_token_id, False) for b in parts]),
        torch.cat([_pad_to(b.completion_mask, t, 0, False) for b in parts]),
        torch.cat([_pad_to(b.logprobs, t, 0.0, False) for b in parts]),
        num_samples=parts[0].num_samples,
    )


@register_engine("hf")
def _build_hf(model, eos_token_ids, pad_token_id, **kwargs) -> HFSampler:
    return HFSampler(model, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id, **kwargs)
