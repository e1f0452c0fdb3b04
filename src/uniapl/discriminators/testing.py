"""Tiny randomly initialised scoring models and a byte tokenizer, saved to a local folder.

For tests, benchmarks and dry runs without downloads: ``save_tiny_scorer(path)`` writes a folder that
``name: polar`` (``model_path: path``) loads like a real POLAR checkpoint.

    remote_code=False  a LlamaForSequenceClassification with one label (plain transformers loading)
    remote_code=True   a POLAR-like reward model whose class lives in the folder (``auto_map`` ->
                       ``AutoModel``, loaded with ``trust_remote_code``), reading the reward at the last
                       non-padding token as InternLM2ForRewardModel does
The tokenizer maps every byte to one token and prepends ``<s>`` (as InternLM2's does), so token counts
in truncation tests are character counts + 1; ``<|reward|>`` and ``[UNUSED_TOKEN_130]`` are special tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|reward|>", "[UNUSED_TOKEN_130]"]

_REMOTE_CODE = '''"""A tiny POLAR-like reward model (written by uniapl.discriminators.testing)."""
import torch
from torch import nn
from transformers import LlamaModel, LlamaPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutputWithPast


class TinyPolarRewardModel(LlamaPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.v_head = nn.Linear(config.hidden_size, 1, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rewards = self.v_head(hidden).squeeze(-1)
        ends = attention_mask.long().cumsum(dim=1).argmax(dim=1).view(-1, 1)
        return SequenceClassifierOutputWithPast(logits=torch.gather(rewards, 1, ends))
'''


def save_byte_tokenizer(path: str | Path) -> None:
    """A byte-level tokenizer with no merges (one token per UTF-8 byte), BOS prepended, saved to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )
    fast.padding_side = "right"
    fast.save_pretrained(str(path))


def save_tiny_scorer(path: str | Path, *, remote_code: bool = False, seed: int = 0, hidden_size: int = 32,
                     num_layers: int = 2) -> Path:
    """Write a tiny random scalar scoring model + byte tokenizer to ``path``; returns the path."""
    from transformers import LlamaConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_byte_tokenizer(path)
    config = LlamaConfig(
        vocab_size=len(SPECIAL_TOKENS) + 256, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        num_labels=1, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if remote_code:
        namespace: dict = {}
        exec(compile(_REMOTE_CODE, "modeling_tiny_polar.py", "exec"), namespace)
        model = namespace["TinyPolarRewardModel"](config)
        model.save_pretrained(str(path))
        (path / "modeling_tiny_polar.py").write_text(_REMOTE_CODE)
        cfg = json.loads((path / "config.json").read_text())
        cfg["architectures"] = ["TinyPolarRewardModel"]
        cfg["auto_map"] = {"AutoModel": "modeling_tiny_polar.TinyPolarRewardModel"}
        (path / "config.json").write_text(json.dumps(cfg, indent=2))
    else:
        from transformers import LlamaForSequenceClassification

        LlamaForSequenceClassification(config).save_pretrained(str(path))
    return path
