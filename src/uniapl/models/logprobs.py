"""Log-probs (and entropies) of chosen tokens without materialising a full-precision (batch, time, vocab) log-softmax.

The decoder runs once; the LM head and the log-softmax run over chunks of rows, each chunk in float32
(`ChunkedHeadLogprobs`), and the backward pass recomputes each chunk's logits instead of keeping them.
Peak extra memory is a few chunks of logits (CHUNK_BYTES each) and one weight-gradient buffer, not
B * T * V * 4 bytes several times over: benchmarks/logprob_memory.py measures it.
"""

from __future__ import annotations

import torch

# float32 logits per chunk. CPU: 64 MiB (110 rows at Qwen3's 151,936 vocabulary, 16,384 rows at 1,024).
# Accelerators: 256 MiB; on an H200, 8 x 2048 tokens at 151,936: the same peak as 64 MiB chunks and 13% faster
# (docs/performance.md).
CHUNK_BYTES = {"cpu": 64 * 2**20, "accelerator": 256 * 2**20}


def rows_per_chunk(vocab_size: int, chunk_bytes: int | None = None, device: torch.device | str = "cpu") -> int:
    if chunk_bytes is None:
        chunk_bytes = CHUNK_BYTES["cpu" if torch.device(device).type == "cpu" else "accelerator"]
    return max(1, chunk_bytes // (4 * max(vocab_size, 1)))


def _token_stats(logits: torch.Tensor, labels: torch.Tensor, inv_temperature: float, entropy: bool):
    """(log p(label), entropy or None) of float32 logits [R, V] scaled by 1 / temperature."""
    z = logits.float()
    if inv_temperature != 1.0:
        z = z * inv_temperature
    lse = torch.logsumexp(z, -1)
    lp = z.gather(-1, labels[:, None]).squeeze(-1) - lse
    if not entropy:
        return lp, None
    logp = z - lse[:, None]
    return lp, -(logp.exp() * logp).sum(-1)


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, *, chunk_rows: int = 1024,
                          return_entropy: bool = False):
    """log_softmax(logits)[..., index] in float32, chunked over rows (and the entropy of each row, if asked).

    Args:
        logits: [..., V] (any float dtype).
        index: [...] token ids.
    Returns: [...] float32 log-probs, or (log-probs, entropies) with return_entropy.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    idx = index.reshape(-1)
    lps, ents = [], []
    for s in range(0, flat.shape[0], chunk_rows):
        lp, ent = _token_stats(flat[s : s + chunk_rows], idx[s : s + chunk_rows], 1.0, return_entropy)
        lps.append(lp)
        ents.append(ent)
    lp = torch.cat(lps).view(index.shape) if lps else torch.zeros(index.shape, device=logits.device)
    if not return_entropy:
        return lp
    ent = torch.cat(ents).view(index.shape) if ents else torch.zeros(index.shape, device=logits.device)
    return lp, ent


class ChunkedHeadLogprobs(torch.autograd.Function):
    """log p(label) (and entropy) of `linear(hidden, weight, bias) / temperature`, holding a couple of chunks of
    float32 logits at a time, forward or backward.

    forward:  per chunk of rows, logits -> logsumexp -> log p(label) (-> entropy); keeps only the [N] logsumexp.
    backward: per chunk, recomputes the logits and forms d/dlogits directly,
                  d logp(label) / dz = onehot(label) - p,     d H / dz = -p * (log p + H),   z = logits / T,
              then grad_hidden[chunk] = g @ W and grad_W += g^T @ hidden[chunk] into ONE buffer (autograd
              through per-chunk checkpoints would allocate a [V, H] weight gradient per chunk).
    Shapes: hidden [N, H], weight [V, H], bias [V] or None, labels [N] -> [N] float32 (each output).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, inv_temperature: float, chunk_rows: int, entropy: bool):
        n = hidden.shape[0]
        lp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(lp)
        ent = torch.empty_like(lp) if entropy else None
        for s in range(0, n, chunk_rows):
            logp = _scaled_logits(hidden[s : s + chunk_rows], weight, bias, inv_temperature)
            lse[s : s + chunk_rows] = torch.logsumexp(logp, -1)
            logp.sub_(lse[s : s + chunk_rows, None])  # log-softmax, in place
            lp[s : s + chunk_rows] = logp.gather(-1, labels[s : s + chunk_rows, None]).squeeze(-1)
            if entropy:
                ent[s : s + chunk_rows] = -(logp.exp() * logp).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, labels, lse, ent)
        ctx.set_materialize_grads(False)  # an unused output (e.g. the entropies) gets None, not zeros
        ctx.inv_temperature, ctx.chunk_rows, ctx.entropy = inv_temperature, chunk_rows, entropy
        return (lp, ent) if entropy else lp

    @staticmethod
    def backward(ctx, grad_lp, grad_ent=None):
        hidden, weight, bias, labels, lse, ent = ctx.saved_tensors
        inv_t, step = ctx.inv_temperature, ctx.chunk_rows
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        acc_dtype = torch.float32 if weight.dtype != torch.float64 else weight.dtype
        grad_w = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b and bias is not None else None
        rows = torch.arange(min(step, hidden.shape[0]), device=hidden.device)
        for s in range(0, hidden.shape[0], step):
            h = hidden[s : s + step]
            logp = _scaled_logits(h, weight, bias, inv_t).sub_(lse[s : s + step, None])
            p = logp.exp()
            r = rows[: h.shape[0]]
            gl = None if grad_lp is None else grad_lp[s : s + step, None]
            if grad_ent is not None:  # dH/dz = -p (log p + H)
                g = logp.add_(ent[s : s + step, None]).mul_(p).mul_(-grad_ent[s : s + step, None])
                if gl is not None:
                    g.sub_(p.mul_(gl))
            else:
                g = p.mul_(-gl) if gl is not None else torch.zeros_like(p)
            if gl is not None:  # dlogp(y)/dz = onehot(y) - p
                g[r, labels[s : s + step]] += gl.squeeze(-1)
            del logp, p
            if inv_t != 1.0:
                g.mul_(inv_t)
            g = g.to(weight.dtype)
            if need_h:
                grad_h[s : s + step] = g @ weight
            if need_w:
                grad_w.addmm_(g.t().to(acc_dtype), h.to(acc_dtype))
            if grad_b is not None:
                grad_b += g.sum(0, dtype=torch.float32)
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        if grad_b is not None:
            grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None


def _scaled_logits(hidden, weight, bias, inv_temperature: float) -> torch.Tensor:
    z = torch.nn.functional.linear(hidden, weight, bias).float()
    return z.mul_(inv_temperature) if inv_temperature != 1.0 else z


def _decoder_and_head(model: torch.nn.Module):
    """(decoder, lm_head) of a standard HF causal LM, or None when logits need model-specific processing."""
    cfg = getattr(model, "config", None)
    if cfg is not None and (getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None)):
        return None
    get_dec = getattr(model, "get_decoder", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    decoder = get_dec() if callable(get_dec) else None
    if decoder is None or not isinstance(head, torch.nn.Linear):
        return None
    return decoder, head


def completion_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    n_completion: int,
    *,
    temperature: float = 1.0,
    chunk_rows: int | None = None,
    return_entropy: bool = False,
    share_prompts: bool = True,
):
    """Log-probs of the last `n_completion` tokens of each row given everything before them.

    Args:
        input_ids: [B, L] prompt (left-padded) followed by completion (right-padded).
        attention_mask: [B, L].
        n_completion: T, the completion width; the last T tokens are scored.
        temperature: logits are divided by it (as the sampler did), so ratios match the sampler.
        chunk_rows: rows of float32 logits per chunk; default: as many as fit in CHUNK_BYTES (per device type).
        return_entropy: also return the entropy of each position's distribution (with its gradient).
        share_prompts: rows with the same prompt (a GRPO group) run the prompt through the decoder once
            (see `_shared_prompt_hidden`); results equal the unshared computation up to float rounding.
    Returns: [B, T] float32 log-probs, or (log-probs, entropies) [B, T] each with return_entropy
    (padding positions hold arbitrary values; mask them).
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    labels = input_ids[:, -n_completion:]
    parts = _decoder_and_head(model)
    if parts is None:  # e.g. soft-capped logits: let the model compute them, then reduce in chunks
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    logits_to_keep=n_completion + 1, use_cache=False)
        logits = out.logits[:, :-1]
        if temperature != 1.0:
            logits = logits / temperature
        return selective_log_softmax(logits, labels,
                                     chunk_rows=chunk_rows or rows_per_chunk(logits.shape[-1], device=logits.device),
                                     return_entropy=return_entropy)
    decoder, head = parts
    hidden = None
    if share_prompts and n_completion < input_ids.shape[1]:
        hidden = _shared_prompt_hidden(model, decoder, input_ids, attention_mask, position_ids, n_completion)
    if hidden is None:
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=False).last_hidden_state
        hidden = hidden[:, -n_completion - 1 : -1]  # position t predicts token t + 1
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_y = labels.reshape(-1)
    inv_t = 1.0 / temperature
    step = chunk_rows or rows_per_chunk(head.out_features, device=flat_h.device)
    out = ChunkedHeadLogprobs.apply(flat_h, head.weight, head.bias, flat_y, inv_t, step, return_entropy)
    if return_entropy:
        return out[0].view(labels.shape), out[1].view(labels.shape)
    return out.view(labels.shape)


def _shared_prompt_hidden(model, decoder, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, t: int):
    """Decoder states [B, T, H] predicting the completion tokens, each DISTINCT prompt run once.

    The G samples of a GRPO group repeat their prompt: the prompts (first L - T columns) are deduplicated,
    run through the decoder once with a KV cache (keeping the graph), the cache rows are repeated to the B
    rows, and the completions run on top of it. Gradients flow into the prompt positions through the
    repeated keys/values, so values and gradients are those of the full forward. Returns None when no
    prompt repeats or the model is not one whose cache path is known to be exact (Llama/Mistral/Qwen2/Qwen3
    layouts without sliding windows; no gradient checkpointing).
    """
    from transformers import DynamicCache

    from uniapl.rollout.steppers import cache_kwarg, static_kv_unsupported

    p = ids.shape[1] - t
    key = torch.cat([ids[:, :p] * attn[:, :p], attn[:, :p]], 1)
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    if uniq.shape[0] == ids.shape[0]:
        return None
    if static_kv_unsupported(model, ids.shape[1]) or (decoder.training and getattr(decoder, "gradient_checkpointing", False)):
        return None
    rows = torch.arange(ids.shape[0], device=ids.device)
    first = torch.full((uniq.shape[0],), ids.shape[0], dtype=torch.long, device=ids.device)
    first = first.scatter_reduce(0, inverse, rows, "amin")
    kw = cache_kwarg(decoder)
    cache = DynamicCache()
    prompt = decoder(input_ids=ids[first, :p], attention_mask=attn[first, :p], position_ids=pos[first, :p],
                     use_cache=True, **{kw: cache}).last_hidden_state
    cache.batch_select_indices(inverse)
    completion = decoder(input_ids=ids[:, p:], attention_mask=attn, position_ids=pos[:, p:], use_cache=True,
                         **{kw: cache}).last_hidden_state
    # the last prompt position predicts the first completion token
    return torch.cat([prompt[inverse, -1:], completion[:, :-1]], 1)


class PolicyLogprobs(torch.nn.Module):
    """Wraps a causal LM so that its forward returns completion log-probs (and entropies, if asked).

    The trainer hands THIS module to `accelerator.prepare`, so DDP/FSDP see the whole computation
    (decoder + chunked head) inside one forward and synchronise gradients as usual.
    """

    def __init__(self, model: torch.nn.Module, chunk_rows: int | None = None):
        super().__init__()
        self.model = model
        self.chunk_rows = chunk_rows

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_completion: int,
                temperature: float = 1.0, return_entropy: bool = False):
        return completion_logprobs(self.model, input_ids, attention_mask, n_completion, temperature=temperature,
                                   chunk_rows=self.chunk_rows, return_entropy=return_entropy)
