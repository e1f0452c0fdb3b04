"""Loading policies: any Hugging Face causal LM (hub id, local path, GGUF) or the embedded tiny Qwen3.

The embedded model is a real Qwen3 architecture built from config, with a byte-level BPE tokenizer
trained locally on the synthetic task's text and a ChatML chat template (as Qwen2.5 / Qwen3 use).
Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from uniapl.config import EmbeddedModelConfig, ModelConfig
from uniapl.infra.schema import ConfigError

EMBEDDED = "embedded"

# ChatML, as Qwen2.5 uses it (no think block): what the embedded tokenizer ships.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def build_embedded_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` (deterministic) and give it a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    hf.chat_template = CHATML_TEMPLATE
    hf.padding_side = "left"
    return hf


def build_embedded_model(tokenizer: PreTrainedTokenizerFast, cfg: EmbeddedModelConfig, seed: int) -> Qwen3ForCausalLM:
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


@contextlib.contextmanager
def _load_errors(src: str, path: str | None):
    """transformers' OSError for a missing / unreachable / malformed model -> one ConfigError naming the key."""
    try:
        yield
    except OSError as e:
        what = f"checkpoint {src}" if path is not None else f"key 'model.name_or_path': {src}"
        raise ConfigError(f"{what} cannot be loaded: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def load_tokenizer(cfg: ModelConfig, path: str | None = None):
    src = path or cfg.name_or_path
    kwargs = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.gguf_file and path is None:
        kwargs["gguf_file"] = cfg.gguf_file
    if cfg.revision and path is None:
        kwargs["revision"] = cfg.revision
    with _load_errors(src, path):
        tok = AutoTokenizer.from_pretrained(src, **kwargs)
    if cfg.chat_template:
        tok.chat_template = cfg.chat_template
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(cfg: ModelConfig, path: str | None = None):
    src = path or cfg.name_or_path
    kwargs = {"trust_remote_code": cfg.trust_remote_code, "dtype": _DTYPES[cfg.dtype]}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.gguf_file and path is None:
        kwargs["gguf_file"] = cfg.gguf_file
    if cfg.revision and path is None:
        kwargs["revision"] = cfg.revision
    with _load_errors(src, path):
        return AutoModelForCausalLM.from_pretrained(src, **kwargs)  # gradient checkpointing: uniapl.training.trainer


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every token that ends a turn: the generation config's EOS ids plus the tokenizer's."""
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(e) for e in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if im_end is not None:
        ids.add(im_end)
    if not ids:
        raise ValueError("the model has no EOS token: set generation_config.eos_token_id or the tokenizer's eos_token")
    return sorted(ids)


def model_source_is_local_checkpoint(path: str) -> bool:
    from pathlib import Path

    return (Path(path) / "config.json").is_file()


__all__ = [
    "AutoConfig",
    "CHATML_TEMPLATE",
    "EMBEDDED",
    "build_embedded_model",
    "build_embedded_tokenizer",
    "eos_token_ids",
    "load_model",
    "load_tokenizer",
]


def build_policy(cfg, init_from: str | None):
    """(model, tokenizer): from a checkpoint directory, the embedded default, or cfg.model.name_or_path."""
    if init_from is not None:
        return load_model(cfg.model, init_from), load_tokenizer(cfg.model, init_from)
    if cfg.model.name_or_path == EMBEDDED:
        from uniapl.data.loaders import synthetic_task
        from uniapl.data.synthetic import task_corpus

        task = synthetic_task(cfg.data.synthetic)
        tok = build_embedded_tokenizer(task_corpus(cfg.data.synthetic, task), cfg.model.embedded.vocab_size)
        return build_embedded_model(tok, cfg.model.embedded, cfg.seed), tok
    return load_model(cfg.model), load_tokenizer(cfg.model)
