"""Log-likelihoods of responses under a student and a teacher model (the paper's Figure 4).

Responses are sampled from the student on held-out prompts; each is scored as TEXT under both models
(prompt through the model's own chat template, response re-tokenised by the model's own tokenizer,
plus its EOS when the sample ended), so student and teacher may use different tokenizers.
gap = log p_student(y | x) - log p_teacher(y | x): its mean over y ~ student estimates
KL(student || teacher); a distribution narrow and near 0 means the student stays close to the teacher.

Without a teacher model (e.g. a teacher known only by its published answers), the analogue goes the
other way: the held-out teacher answers y_t scored under each student, log p_student(y_t | x) per token
(`teacher_answer_logprobs`); higher = the student puts more mass on what the teacher wrote.
"""

from __future__ import annotations

import torch

from uniapl.data.chat import encode_prompt
from uniapl.data.padding import pack, trim_padding
from uniapl.data.records import Record
from uniapl.evaluation.ifeval import decode_completions
from uniapl.losses import sequence_logprobs
from uniapl.models.logprobs import completion_logprobs
from uniapl.rollout import SamplingParams
from uniapl.rollout.engine import generate


@torch.no_grad()
def sample_responses(model, tokenizer, records: list[Record], *, eos_ids: list[int], num_samples: int,
                     temperature: float, max_new_tokens: int, seed: int, batch_size: int = 64,
                     max_prompt_tokens: int = 0, enable_thinking: bool = False) -> list[dict]:
    """`num_samples` responses, one per record cycling through `records`: dicts with record index, text,
    length_tokens and finished (EOS emitted)."""
    idx = [i % len(records) for i in range(num_samples)]
    out: list[dict] = []
    eos = torch.tensor(eos_ids)
    for s in range(0, len(idx), batch_size):
        part = idx[s : s + batch_size]
        prompts = [encode_prompt(tokenizer, records[i], enable_thinking=enable_thinking, max_tokens=max_prompt_tokens)
                   for i in part]
        b = generate(model, prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + s),
                   eos_token_ids=eos_ids, pad_token_id=tokenizer.pad_token_id)
        texts = decode_completions(tokenizer, b.completion_ids, b.completion_mask, eos_ids)
        finished = torch.isin(b.completion_ids.cpu(), eos).any(-1).tolist()
        lengths = b.completion_mask.sum(-1).tolist()
        for i, t, f, n in zip(part, texts, finished, lengths):
            out.append({"record": i, "response": t, "finished": bool(f), "length_tokens": int(n)})
    return out


@torch.no_grad()
def text_logprobs(model, tokenizer, records: list[Record], texts: list[str], finished: list[bool], *,
                  eos_id: int | None = None, batch_size: int = 32, max_prompt_tokens: int = 0,
                  enable_thinking: bool = False) -> list[float]:
    """log p(text | prompt) under `model`, summed over the response tokens (and EOS where `finished`)."""
    eos_id = tokenizer.eos_token_id if eos_id is None else eos_id
    device = next(model.parameters()).device
    out: list[float] = []
    for s in range(0, len(texts), batch_size):
        recs, txts, fins = records[s : s + batch_size], texts[s : s + batch_size], finished[s : s + batch_size]
        prompts = [encode_prompt(tokenizer, r, enable_thinking=enable_thinking, max_tokens=max_prompt_tokens) for r in recs]
        comps = [tokenizer(t, add_special_tokens=False)["input_ids"] + ([eos_id] if f else []) for t, f in zip(txts, fins)]
        comps = [c if c else [eos_id] for c in comps]  # an empty unfinished sample: score its EOS
        ids, attn, cmask = pack(prompts, comps, tokenizer.pad_token_id)
        ids, attn = trim_padding(ids, attn, cmask.shape[1])
        lp = completion_logprobs(model, ids.to(device), attn.to(device), cmask.shape[1])
        out.extend(sequence_logprobs(lp, cmask.to(lp.device)).double().cpu().tolist())
    return out


@torch.no_grad()
def teacher_answer_logprobs(model, tokenizer, records, *, eos_id: int | None = None, batch_size: int = 8,
                            max_prompt_tokens: int = 0, enable_thinking: bool = False) -> list[dict]:
    """Each record's teacher answer scored under `model`: key, logp (summed, nats), tokens (answer + EOS,
    this model's tokenizer) and logp_per_token = logp / tokens. Records without a teacher answer are skipped."""
    recs = [r for r in records if r.teacher]
    eos_id = tokenizer.eos_token_id if eos_id is None else eos_id
    texts = [r.teacher for r in recs]
    lps = text_logprobs(model, tokenizer, recs, texts, [True] * len(recs), eos_id=eos_id, batch_size=batch_size,
                        max_prompt_tokens=max_prompt_tokens, enable_thinking=enable_thinking)
    out = []
    for r, t, lp in zip(recs, texts, lps):
        n = len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1
        out.append({"key": r.key, "logp": lp, "tokens": n, "logp_per_token": lp / n})
    return out
