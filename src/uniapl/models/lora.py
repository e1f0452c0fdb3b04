"""LoRA adapters through PEFT (`model.lora`): what is trained, what the reference is, what engines receive.

    model.lora: {r: 16, alpha: 32, dropout: 0.0, target_modules: all-linear, merge_final: false}

* `apply_lora` wraps the policy in a `peft.PeftModel`; only the adapters require grad. PEFT injects the
  adapter layers INTO the base model's modules, so the trainer, the built-in rollout engine and the
  evaluation work on `policy_module(model)` (the Hugging Face model, adapters inside) unchanged.
* The frozen reference policy is the same model with its adapters disabled (`reference_policy`): no second
  copy of the weights, and exactly the stage's starting weights.
* Checkpoints and `final/` hold the adapters (PEFT's adapter_config.json + adapter_model.safetensors);
  `save_merged` writes a plain Hugging Face model with the adapters folded in (`final/merged/`).
* Engines that hold their own copy of the weights (vLLM) must receive MERGED weights, with the base model's
  parameter names: `merged_state_dict(model)` gives them, for a LoRA model or any other (then its own
  state dict), without modifying the model.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch

ADAPTER_CONFIG = "adapter_config.json"


def _peft():
    try:
        import peft
    except ImportError as e:  # pragma: no cover - peft is a dependency
        raise ImportError("model.lora needs PEFT: pip install 'uniapl[lora]' (or pip install peft)") from e
    return peft


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def apply_lora(model, cfg):
    """`model` wrapped in a PeftModel with fresh adapters per `cfg` (a `uniapl.config.LoraConfig`)."""
    peft = _peft()
    targets = cfg.target_modules if cfg.target_modules == "all-linear" else list(cfg.target_modules)
    pcfg = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                           bias="none", task_type="CAUSAL_LM")
    return peft.get_peft_model(model, pcfg)


def load_adapters(model, path: str | Path):
    """`model` (the base weights) with the trainable adapters saved in `path` (a checkpoint or final/)."""
    peft = _peft()
    return peft.PeftModel.from_pretrained(model, str(path), is_trainable=True)


def has_adapters(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def policy_module(model) -> torch.nn.Module:
    """The Hugging Face model the trainer and engines run: the base model, adapter layers injected."""
    return model.get_base_model() if is_peft_model(model) else model


@contextlib.contextmanager
def reference_policy(model, ref_model=None) -> Iterator[torch.nn.Module]:
    """The frozen reference to score or sample with: `ref_model` if one was given, else (LoRA) the policy
    itself with its adapters disabled for the duration of the block."""
    if ref_model is not None or not is_peft_model(model):
        if ref_model is None:
            raise ValueError("no reference model: pass one, or use LoRA (the adapter-disabled policy)")
        yield ref_model
        return
    with model.disable_adapter():
        yield policy_module(model)


def _lora_layers(module: torch.nn.Module):
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [(n, m) for n, m in module.named_modules() if isinstance(m, LoraLayer)]


@torch.no_grad()
def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The weights with every active adapter folded in (W + B A * alpha / r), under the base model's names
    (`model.layers.0.self_attn.q_proj.weight`, ...), no adapter tensors. The model is left as it is.

    For a model without adapters: its state dict. Accepts the PeftModel or the base model with adapter
    layers injected (`policy_module`)."""
    base = policy_module(model)
    layers = _lora_layers(base)
    sd = base.state_dict()
    if not layers:
        return dict(sd)
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if ".lora_" in k:
            continue
        out[k.replace(".base_layer.", ".")] = v
    for name, layer in layers:
        if getattr(layer, "merged", False) or getattr(layer, "disable_adapters", False):
            continue  # already folded in, or adapters off: the base weight is what runs
        w = layer.get_base_layer().weight
        delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A)
        if isinstance(delta, torch.Tensor):
            out[f"{name}.weight"] = (w + delta.to(w.dtype)).detach()
    return out


def save_merged(model, path: str | Path, tokenizer=None) -> None:
    """A plain Hugging Face model (adapters folded in) at `path`; `model` keeps its adapters."""
    base = policy_module(model)
    sd = merged_state_dict(model)
    config = base.config
    # a fresh module of the base architecture holding the merged weights: save_pretrained then writes the
    # standard layout (tied weights, generation config) with no PEFT key renaming
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=next(base.parameters()).dtype)
    plain.load_state_dict(sd, strict=False, assign=True)
    if hasattr(plain, "tie_weights"):
        plain.tie_weights()
    plain.generation_config = base.generation_config
    plain.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters, adapters included in both (tied weights counted once)."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
