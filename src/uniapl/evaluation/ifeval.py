"""Held-out instruction-following evaluation: greedy responses scored by the IFEval checkers."""

from __future__ import annotations

import torch

from uniapl.data.chat import encode_prompt, strip_think
from uniapl.data.records import Record
from uniapl.rollout import SamplingParams
from uniapl.rollout.engine import generate
from uniapl.verifiers.verify import METRIC_KEYS  # noqa: F401  (re-exported: the four IFEval metrics)


def decode_completions(tokenizer, completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                       eos_ids: list[int]) -> list[str]:
    """The answers' texts, without EOS and without think blocks (what verifiers and discriminators judge)."""
    texts = []
    eos = set(eos_ids)
    for row, m in zip(completion_ids.tolist(), completion_mask.tolist()):
        toks = [t for t, keep in zip(row, m) if keep and t not in eos]
        texts.append(strip_think(tokenizer.decode(toks, skip_special_tokens=True)))
    return texts


def _verdicts(records: list[Record], responses: list[str]):
    from uniapl.verifiers import verify

    return [verify(resp, rec.instruction_id_list, rec.kwargs, prompt=rec.prompt_text()) for rec, resp in zip(records, responses)]


def _counts(verdicts) -> torch.Tensor:
    rows = [[float(all(v.strict)), float(all(v.loose)), len(v.strict), sum(v.strict), sum(v.loose), 0.0] for v in verdicts]
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 6)


def counts_for(records: list[Record], responses: list[str]) -> torch.Tensor:
    """Per record: [prompt strict, prompt loose, n instructions, n strict passed, n loose passed, length]."""
    return _counts(_verdicts(records, responses))


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
             return_responses: bool = False, return_details: bool = False):
    """IFEval metrics of greedy responses to `records`, sharded over processes when `accelerator` is given.

    return_responses: also return this process's response texts -> (metrics, texts).
    return_details: also return one dict per record, in record order, gathered from every process ->
        (metrics, rows) with key, prompt, response, length_tokens, finished (EOS emitted), prompt_strict,
        prompt_loose, inst_strict, inst_loose.
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    shard = records[rank::world]
    counts = []
    responses: list[str] = []
    details: list[dict] = []
    eos = torch.tensor(eos_ids)
    for s in range(0, len(shard), batch_size):
        part = shard[s : s + batch_size]
        prompts = [encode_prompt(tokenizer, r, enable_thinking=enable_thinking, max_tokens=max_prompt_tokens) for r in part]
        out = generate(model, prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0),
                     eos_token_ids=eos_ids, pad_token_id=pad_id)
        texts = decode_completions(tokenizer, out.completion_ids, out.completion_mask, eos_ids)
        verdicts = _verdicts(part, texts)
        c = _counts(verdicts)
        lengths = out.completion_mask.sum(-1)
        c[:, 5] = lengths.double().cpu()
        counts.append(c)
        responses.extend(texts)
        if return_details:
            finished = torch.isin(out.completion_ids.cpu(), eos).any(-1).tolist()
            for j, (r, t, v) in enumerate(zip(part, texts, verdicts)):
                details.append({
                    "index": rank + (s + j) * world, "key": r.key, "prompt": r.prompt_text(), "messages": r.messages(),
                    "response": t,
                    "length_tokens": int(lengths[j]), "finished": bool(finished[j]),
                    "prompt_strict": bool(all(v.strict)), "prompt_loose": bool(all(v.loose)),
                    "inst_strict": [bool(x) for x in v.strict], "inst_loose": [bool(x) for x in v.loose],
                })
    local = torch.cat(counts) if counts else torch.zeros((0, 6), dtype=torch.float64)
    if accelerator is not None and world > 1:
        # pad to equal length for gather: shards differ by at most one record
        width = (len(records) + world - 1) // world
        padded = torch.full((width, 7), 0.0, dtype=torch.float64)
        padded[: local.shape[0], :6] = local
        padded[: local.shape[0], 6] = 1.0
        gathered = accelerator.gather(padded.to(accelerator.device)).cpu()
        local = gathered[gathered[:, 6] > 0][:, :6]
        if return_details:
            from accelerate.utils import gather_object

            details = gather_object(details)
    metrics = metrics_from_counts(local)
    if return_details:
        return metrics, sorted(details, key=lambda d: d["index"])
    return (metrics, responses) if return_responses else metrics
