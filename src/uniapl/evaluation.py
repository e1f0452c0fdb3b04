"""Held-out instruction-following evaluation: greedy responses scored by the IFEval checkers."""

from __future__ import annotations

import torch

from uniapl.data.chat import encode_prompt
from uniapl.data.records import Record
from uniapl.rollout import SamplingParams
from uniapl.rollout.hf_sampler import sample

METRIC_KEYS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")


def decode_completions(tokenizer, completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                       eos_ids: list[int]) -> list[str]:
    texts = []
    eos = set(eos_ids)
    for row, m in zip(completion_ids.tolist(), completion_mask.tolist()):
        toks = [t for t, keep in zip(row, m) if keep and t not in eos]
        texts.append(tokenizer.decode(toks, skip_special_tokens=True))
    return texts


def counts_for(records: list[Record], responses: list[str]) -> torch.Tensor:
    """Per record: [prompt strict, prompt loose, n instructions, n strict passed, n loose passed, length]."""
    from uniapl.verifiers import verify

    rows = []
    for rec, resp in zip(records, responses):
        v = verify(resp, rec.instruction_id_list, rec.kwargs, prompt=rec.prompt_text())
        rows.append([float(all(v.strict)), float(all(v.loose)), len(v.strict), sum(v.strict), sum(v.loose), 0.0])
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 6)


def metrics_from_counts(counts: torch.Tensor) -> dict[str, float]:
    n = max(counts.shape[0], 1)
    n_inst = max(float(counts[:, 2].sum()), 1.0)
    return {
        "prompt_level_strict_acc": float(counts[:, 0].sum()) / n,
        "inst_level_strict_acc": float(counts[:, 3].sum()) / n_inst,
        "prompt_level_loose_acc": float(counts[:, 1].sum()) / n,
        "inst_level_loose_acc": float(counts[:, 4].sum()) / n_inst,
        "mean_length_tokens": float(counts[:, 5].mean()) if counts.shape[0] else 0.0,
        "num_prompts": int(counts.shape[0]),
    }


@torch.no_grad()
def evaluate(model, tokenizer, records: list[Record], *, eos_ids: list[int], pad_id: int, max_new_tokens: int,
             batch_size: int, enable_thinking: bool = False, max_prompt_tokens: int = 0, accelerator=None,
             return_responses: bool = False):
    """IFEval metrics of greedy responses to `records`, sharded over processes when `accelerator` is given."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    shard = records[rank::world]
    counts = []
    responses: list[str] = []
    for s in range(0, len(shard), batch_size):
        part = shard[s : s + batch_size]
        prompts = [encode_prompt(tokenizer, r, enable_thinking=enable_thinking, max_tokens=max_prompt_tokens) for r in part]
        out = sample(model, prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0),
                     eos_token_ids=eos_ids, pad_token_id=pad_id)
        texts = decode_completions(tokenizer, out.completion_ids, out.completion_mask, eos_ids)
        c = counts_for(part, texts)
        c[:, 5] = out.completion_mask.sum(-1).double()
        counts.append(c)
        responses.extend(texts)
    local = torch.cat(counts) if counts else torch.zeros((0, 6), dtype=torch.float64)
    if accelerator is not None and world > 1:
        # pad to equal length for gather: shards differ by at most one record
        width = (len(records) + world - 1) // world
        padded = torch.full((width, 7), 0.0, dtype=torch.float64)
        padded[: local.shape[0], :6] = local
        padded[: local.shape[0], 6] = 1.0
        gathered = accelerator.gather(padded.to(accelerator.device)).cpu()
        local = gathered[gathered[:, 6] > 0][:, :6]
    metrics = metrics_from_counts(local)
    return (metrics, responses) if return_responses else metrics
