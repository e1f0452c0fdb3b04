"""Steppers: what runs the model during generation and owns its KV cache.

A stepper turns (tokens, positions) into next-token logits, one decode forward per call:

    prefill(ids [N, P], mask [N, P], pos [N, P]) -> logits [N, V]   (the prompts, once)
    decode(tokens [N], pos [N])                   -> logits [N, V]   (one new token per row)
    select(rows [M])                                                 (keep / repeat rows of the cache)

`StaticKVStepper` (Llama, Mistral, Qwen2, Qwen3 layouts) preallocates the whole cache once, writes each new
key/value into its column and attends to a view of the filled columns: no concatenation, no per-token
mask building, ~10 tensor ops per layer. It reuses the model's own modules (norms, projections, MLP,
rotary table), so it always samples from the live weights. Every other model goes through
`HFDynamicStepper`: the model's own forward with transformers' DynamicCache (which grows by concatenation).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from uniapl.rollout.packed_linear import maybe_packed

# model_type -> decoder layers that are `x + attn(input_layernorm(x))`, `x + mlp(post_attention_layernorm(x))`
STATIC_KV_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
_PLAIN_RMS_NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"})
_ROPE_TYPES = frozenset({"default", "linear", "llama3", "yarn"})  # position-independent tables only
_GATED_MLPS = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"})  # down(act(gate(x)) * up(x))


def cache_kwarg(model: torch.nn.Module) -> str:
    """transformers 5.x renamed `past_key_values` to `cache` (the old name warns); remote-code models may not have."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def static_kv_unsupported(model: torch.nn.Module, max_len: int) -> str | None:
    """Why `StaticKVStepper` cannot run `model` for sequences of `max_len` tokens (None: it can)."""
    cfg = getattr(model, "config", None)
    mt = getattr(cfg, "model_type", None)
    if mt not in STATIC_KV_MODEL_TYPES:
        return f"model_type {mt!r} is not one of {sorted(STATIC_KV_MODEL_TYPES)}"
    base = getattr(model, "model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if base is None or not isinstance(head, torch.nn.Linear) or not hasattr(base, "layers"):
        return "not a <Model>ForCausalLM with .model.layers and a linear lm_head"
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "attn_logit_softcapping", None):
        return "soft-capped logits"
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return "sliding-window layers"
    window = getattr(cfg, "sliding_window", None)
    if mt == "mistral" and window is not None and window < max_len:
        return f"sliding window {window} < {max_len} tokens"
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type", "default")) not in _ROPE_TYPES:
        return f"rope type {rope.get('rope_type', rope.get('type'))!r}"
    for layer in base.layers:
        a = getattr(layer, "self_attn", None)
        if a is None or not all(hasattr(a, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling", "head_dim")):
            return "unexpected attention module"
        if not all(hasattr(layer, n) for n in ("input_layernorm", "post_attention_layernorm", "mlp")):
            return "unexpected decoder layer"
    if not hasattr(base, "rotary_emb") or not hasattr(base, "embed_tokens") or not hasattr(base, "norm"):
        return "no rotary_emb / embed_tokens / norm"
    return None


def _prefill_with_hf(model: torch.nn.Module, ids, mask, pos, cache) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                **{cache_kwarg(model): cache})
    return out.logits[:, -1].float()


class HFDynamicStepper:
    """Any causal LM: its own forward with a transformers DynamicCache (the attention mask is preallocated)."""

    def __init__(self, model: torch.nn.Module, max_new_tokens: int):
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.cache = DynamicCache()
        self.kw = cache_kwarg(model)

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        n, p = ids.shape
        self.mask = torch.zeros((n, p + self.max_new_tokens), dtype=mask.dtype, device=ids.device)
        self.mask[:, :p] = mask
        self.col = p
        return _prefill_with_hf(self.model, ids, mask, pos, self.cache)

    def decode(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        self.mask[:, self.col] = 1
        self.col += 1
        out = self.model(input_ids=tokens[:, None], attention_mask=self.mask[:, : self.col], position_ids=pos[:, None],
                         use_cache=True, **{self.kw: self.cache})
        return out.logits[:, -1].float()

    def select(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.mask = self.mask.index_select(0, rows)


class StaticKVStepper:
    """Preallocated KV cache [layers, N, kv_heads, P + max_new_tokens, head_dim] and a hand-written decode step.

    The prefill is the model's own forward (its attention handles the left padding); its keys/values are
    copied once into the static cache. Each decode step then runs, per layer: norm, q/k/v projections,
    (q/k norms), rotary from a precomputed table, one write into column c, attention over columns [0, c],
    output projection, norm, MLP. Grouped-query attention needs no repeat of the keys: the G query heads
    that share a key/value head are laid out as G query rows of that head.

    prepack_rows > 0: the decode step's linear maps use copies of their weights that oneDNN pre-packed for
    that many rows (`packed_linear.py`; CPU float32 only, anything else stays the module itself), packed
    here, once per generate call.
    """

    def __init__(self, model: torch.nn.Module, max_new_tokens: int, prepack_rows: int = 0):
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.base = model.model
        self.head = model.get_output_embeddings()
        self.layers = list(self.base.layers)
        a = self.layers[0].self_attn
        cfg = model.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = a.head_dim
        self.scaling = a.scaling
        self.qk_norm = hasattr(a, "q_norm") and hasattr(a, "k_norm")
        self.fused_norm = a.k_proj.weight.dtype == torch.float32 and all(
            _plain_rms_norm(m) for layer in self.layers
            for m in (layer.input_layernorm, layer.post_attention_layernorm,
                      *((layer.self_attn.q_norm, layer.self_attn.k_norm) if self.qk_norm else ())))
        self.fused_norm = self.fused_norm and _plain_rms_norm(self.base.norm)
        self.proj = [_LayerProjections(layer, prepack_rows) for layer in self.layers]
        self.head_proj = maybe_packed(self.head, prepack_rows)

    def _norm(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        # one fused kernel instead of ~7 ops; the same float32 result as the modules' own forward
        if self.fused_norm:
            return F.rms_norm(x, (x.shape[-1],), module.weight, module.variance_epsilon)
        return module(x)

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        n, p = ids.shape
        width = p + self.max_new_tokens
        hf_cache = DynamicCache()
        logits = _prefill_with_hf(self.model, ids, mask, pos, hf_cache)
        w = self.layers[0].self_attn.k_proj.weight
        shape = (len(self.layers), n, self.n_kv, width, self.head_dim)
        self.k = torch.empty(shape, dtype=w.dtype, device=w.device)
        self.v = torch.empty(shape, dtype=w.dtype, device=w.device)
        for i, layer in enumerate(hf_cache.layers):
            self.k[i, :, :, :p] = layer.keys
            self.v[i, :, :, :p] = layer.values
        self.mask = torch.zeros((n, width), dtype=torch.bool, device=ids.device)
        self.mask[:, :p] = mask.bool()
        self.col = p
        # rotary table for every position a row can reach (at most p + max_new_tokens - 1)
        positions = torch.arange(width, device=ids.device)[None]
        cos, sin = self.base.rotary_emb(torch.empty(1, dtype=w.dtype, device=w.device), positions)
        self.cos, self.sin = cos[0], sin[0]  # [width, head_dim]
        return logits

    def select(self, rows: torch.Tensor) -> None:
        self.k = self.k.index_select(1, rows)
        self.v = self.v.index_select(1, rows)
        self.mask = self.mask.index_select(0, rows)

    def decode(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        n, c = tokens.shape[0], self.col
        nh, nkv, hd = self.n_heads, self.n_kv, self.head_dim
        self.mask[:, c] = True
        self.col = c + 1
        attend = self.mask[:, None, None, : c + 1]  # [N, 1, 1, c + 1], broadcast over heads and query rows
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # [N, 1, hd]
        x = self.base.embed_tokens(tokens)  # [N, H]
        for i, (layer, p) in enumerate(zip(self.layers, self.proj)):
            a = layer.self_attn
            h = self._norm(layer.input_layernorm, x)
            q = p.q(h).view(n, nh, hd)
            k = p.k(h).view(n, nkv, hd)
            v = p.v(h).view(n, nkv, hd)
            if self.qk_norm:
                q, k = self._norm(a.q_norm, q), self._norm(a.k_norm, k)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            self.k[i, :, :, c] = k
            self.v[i, :, :, c] = v
            o = F.scaled_dot_product_attention(q.view(n, nkv, nh // nkv, hd), self.k[i, :, :, : c + 1],
                                               self.v[i, :, :, : c + 1], attn_mask=attend, scale=self.scaling)
            x = x + p.o(o.reshape(n, nh * hd))
            x = x + p.mlp(self._norm(layer.post_attention_layernorm, x))
        return self.head_proj(self._norm(self.base.norm, x)).float()


class _LayerProjections:
    """One decoder layer's linear maps for the decode step: the modules themselves, or oneDNN-packed copies.
    The MLP is unrolled only for the plain gated MLPs (down(act(gate(x)) * up(x))); any other stays whole."""

    def __init__(self, layer: torch.nn.Module, rows: int):
        a, m = layer.self_attn, layer.mlp
        self.q, self.k, self.v, self.o = (maybe_packed(f, rows) for f in (a.q_proj, a.k_proj, a.v_proj, a.o_proj))
        self.mlp = m
        if rows > 0 and type(m).__name__ in _GATED_MLPS:
            self.act = m.act_fn
            self.gate, self.up, self.down = (maybe_packed(f, rows) for f in (m.gate_proj, m.up_proj, m.down_proj))
            self.mlp = self._gated_mlp

    def _gated_mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


def _plain_rms_norm(m: torch.nn.Module) -> bool:
    """x * rsqrt(mean(x^2) + eps) * weight, as Llama/Qwen RMSNorm modules compute it (not Gemma's 1 + weight)."""
    return (type(m).__name__ in _PLAIN_RMS_NORMS and isinstance(getattr(m, "weight", None), torch.Tensor)
            and isinstance(getattr(m, "variance_epsilon", None), float))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def make_stepper(model: torch.nn.Module, max_len: int, max_new_tokens: int, kind: str = "auto",
                 prepack_rows: int = 0):
    """kind: "auto" (static when supported, else dynamic), "static" (error if unsupported), "dynamic".
    prepack_rows > 0: the static stepper pre-packs its decode weights for that many rows (the dynamic one
    runs the model's own forward and ignores it)."""
    if kind == "dynamic":
        return HFDynamicStepper(model, max_new_tokens)
    why = static_kv_unsupported(model, max_len)
    if why is None:
        return StaticKVStepper(model, max_new_tokens, prepack_rows)
    if kind == "static":
        raise ValueError(f"the static KV cache does not support this model: {why}")
    return HFDynamicStepper(model, max_new_tokens)
