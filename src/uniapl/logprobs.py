"""Log-probs of chosen tokens without materialising a full-precision (batch, time, vocab) log-softmax.

The decoder runs once; the LM head and the log-softmax run over chunks of rows, each chunk in float32,
and (when gradients are needed) each chunk is recomputed in the backward pass instead of keeping its
logits alive. Peak extra memory is one chunk of logits, not B * T * V.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, *, chunk_rows: int = 1024) -> torch.Tensor:
    """log_softmax(logits)[..., index] in float32, chunked over rows.

    Args:
        logits: [..., V] (any float dtype).
        index: [...] token ids.
    Returns: [...] float32 log-probs.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    idx = index.reshape(-1)
    out = torch.empty(idx.shape, dtype=torch.float32, device=logits.device)
    for s in range(0, flat.shape[0], chunk_rows):
        chunk = flat[s : s + chunk_rows].float()
        out[s : s + chunk_rows] = chunk.gather(-1, idx[s : s + chunk_rows, None]).squeeze(-1) - torch.logsumexp(chunk, -1)
    return out.view(index.shape)


def _head_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                   inv_temperature: float) -> torch.Tensor:
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    if inv_temperature != 1.0:
        logits = logits * inv_temperature
    return logits.gather(-1, labels[..., None]).squeeze(-1) - torch.logsumexp(logits, -1)


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
    chunk_rows: int = 512,
) -> torch.Tensor:
    """Log-probs of the last `n_completion` tokens of each row given everything before them.

    Args:
        input_ids: [B, L] prompt (left-padded) followed by completion (right-padded).
        attention_mask: [B, L].
        n_completion: T, the completion width; the last T tokens are scored.
        temperature: logits are divided by it (as the sampler did), so ratios match the sampler.
    Returns: [B, T] float32 log-probs (padding positions hold arbitrary values; mask them).
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
        return selective_log_softmax(logits, labels, chunk_rows=chunk_rows)
    decoder, head = parts
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     use_cache=False).last_hidden_state
    hidden = hidden[:, -n_completion - 1 : -1]  # position t predicts token t + 1
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_y = labels.reshape(-1)
    inv_t = 1.0 / temperature
    chunks = []
    for s in range(0, flat_h.shape[0], chunk_rows):
        h, y = flat_h[s : s + chunk_rows], flat_y[s : s + chunk_rows]
        if torch.is_grad_enabled() and h.requires_grad:
            chunks.append(checkpoint(_head_logprobs, h, head.weight, head.bias, y, inv_t, use_reentrant=False))
        else:
            chunks.append(_head_logprobs(h, head.weight, head.bias, y, inv_t))
    return torch.cat(chunks).view(labels.shape)


class PolicyLogprobs(torch.nn.Module):
    """Wraps a causal LM so that its forward returns completion log-probs.

    The trainer hands THIS module to `accelerator.prepare`, so DDP/FSDP see the whole computation
    (decoder + chunked head) inside one forward and synchronise gradients as usual.
    """

    def __init__(self, model: torch.nn.Module, chunk_rows: int = 512):
        super().__init__()
        self.model = model
        self.chunk_rows = chunk_rows

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_completion: int,
                temperature: float = 1.0) -> torch.Tensor:
        return completion_logprobs(self.model, input_ids, attention_mask, n_completion, temperature=temperature,
                                   chunk_rows=self.chunk_rows)
