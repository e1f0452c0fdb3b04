"""POLAR (InternLM, "Pre-trained Policy Discriminators are General Reward Models"): input encoding,
token-level truncation, and the locally loaded model (``name: polar``).

Encoding (wrapper "sft"), P / REF / OUT being the prompt / reference / candidate contents joined with "\\n"
(roles dropped)::

    P + "\\n" + REF + "<|reward|>" + P + "\\n" + OUT + "[UNUSED_TOKEN_130]"

wrapper "pretrain" omits the two "\\n". ``[UNUSED_TOKEN_130]`` is the reward token whose hidden state
POLAR scores. POLAR always inserts the "\\n" in the sft wrapper, also for an empty reference or output.

Truncation (``PolarEncoder``), as POLAR's client does it: each part is tokenised with special tokens
(BOS); reference and candidate are cut to ``max_response_length`` tokens each (``response_cut_side``
right keeps the first tokens, left the last); the prompt keeps its last
``(max_length - 4 - len(ref) - len(out)) // 2`` tokens (the 4 are the reward token, ``<|reward|>`` and
the two "\\n"); each part is decoded back without special tokens and the parts are formatted as above.
Where that budget is <= 0 the prompt is dropped (POLAR's ``p_ids[-0:]`` would keep all of it; the
budget is only that small when the responses alone fill ``max_length``).

Local model: loaded with transformers from ``model_path``; POLAR's own checkpoints
(``InternLM2ForRewardModel``, remote code mapped to ``AutoModel``) need ``trust_remote_code``; any
``AutoModelForSequenceClassification`` with one label works as well. Batches are padded on the right,
as POLAR was trained (packed sequences, reward read at the last real token); the score of a sequence is
the model's output at its last non-padding token.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from torch import Tensor

from .config import DiscriminatorConfig, PolarConfig
from .registry import register_discriminator
from .text import LRUCache, Prompt, as_text, prompt_key

log = logging.getLogger(__name__)

REWARD_TOKEN = "[UNUSED_TOKEN_130]"
SEPARATOR = "<|reward|>"
_RESERVED_TOKENS = 4  # reward token, <|reward|>, two "\n"


def format_input(prompt: Prompt, reference: Prompt, candidate: Prompt, wrapper: str = "sft") -> str:
    """POLAR's input text for one (prompt, reference, candidate) triple, without truncation.

    Each argument is a string or a list of chat messages (their contents are joined with "\\n").
    """
    if wrapper not in ("sft", "pretrain"):
        raise ValueError(f"wrapper must be 'sft' or 'pretrain', got {wrapper!r}")
    p, ref, out = as_text(prompt), as_text(reference), as_text(candidate)
    sep = "\n" if wrapper == "sft" else ""
    return p + sep + ref + SEPARATOR + p + sep + out + REWARD_TOKEN


def truncate_ids(
    prompt_ids: list[int],
    reference_ids: list[int],
    candidate_ids: list[int],
    *,
    max_length: int = 16384,
    max_response_length: int = 4096,
    response_cut_side: str = "right",
) -> tuple[list[int], list[int], list[int]]:
    """POLAR's token budget: responses capped at ``max_response_length``, the prompt keeps its last
    ``(max_length - 4 - len(ref) - len(out)) // 2`` tokens (nothing where that is <= 0)."""
    if response_cut_side not in ("right", "left"):
        raise ValueError(f"response_cut_side must be 'right' or 'left', got {response_cut_side!r}")

    def cut(ids: list[int]) -> list[int]:
        if len(ids) <= max_response_length:
            return ids
        return ids[:max_response_length] if response_cut_side == "right" else ids[len(ids) - max_response_length :]

    ref, out = cut(list(reference_ids)), cut(list(candidate_ids))
    budget = (max_length - _RESERVED_TOKENS - len(ref) - len(out)) // 2
    p = list(prompt_ids)
    if len(p) > budget:
        p = p[len(p) - budget :] if budget > 0 else []
    return p, ref, out


class PolarEncoder:
    """Formats triples with POLAR's token-level truncation; caches the per-prompt and per-reference work.

    ``tokenizer`` may be None: then texts are formatted without truncation.
    """

    def __init__(self, tokenizer: Any | None, cfg: PolarConfig | None = None, cache_size: int = 4096):
        self.tokenizer = tokenizer
        self.cfg = cfg or PolarConfig()
        self._ids: LRUCache[tuple[str, str], list[int]] = LRUCache(cache_size)
        self._texts: LRUCache[tuple[int, ...], str] = LRUCache(cache_size)

    def _encode(self, kind: str, key: str, text: str) -> list[int]:
        return self._ids.get_or_compute((kind, key), lambda: list(self.tokenizer.encode(text, add_special_tokens=True)))

    def _decode(self, ids: list[int]) -> str:
        return self._texts.get_or_compute(tuple(ids), lambda: self.tokenizer.decode(ids, skip_special_tokens=True))

    def encode(self, prompt: Prompt, reference: Prompt, candidate: Prompt) -> str:
        if self.tokenizer is None:
            return format_input(prompt, reference, candidate, self.cfg.wrapper)
        p_text, r_text = as_text(prompt), as_text(reference)
        p_ids = self._encode("p", prompt_key(prompt), p_text)  # cached: once per prompt
        r_ids = self._encode("r", r_text, r_text)  # cached: once per reference
        o_ids = list(self.tokenizer.encode(as_text(candidate), add_special_tokens=True))
        p_ids, r_ids, o_ids = truncate_ids(
            p_ids, r_ids, o_ids,
            max_length=self.cfg.max_length,
            max_response_length=self.cfg.max_response_length,
            response_cut_side=self.cfg.response_cut_side,
        )
        out_text = self.tokenizer.decode(o_ids, skip_special_tokens=True)
        return format_input(self._decode(p_ids), self._decode(r_ids), out_text, self.cfg.wrapper)

    def encode_batch(self, prompts: Sequence[Prompt], references: Sequence[Prompt], candidates: Sequence[Prompt]) -> list[str]:
        return [self.encode(p, r, c) for p, r, c in zip(prompts, references, candidates)]


def load_tokenizer(path: str, trust_remote_code: bool = True) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}") from None


def load_scoring_model(path: str, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                       trust_remote_code: bool = True) -> torch.nn.Module:
    """A scalar scoring model from a local path.

    POLAR checkpoints map ``AutoModel`` to their reward-model class in ``auto_map`` (remote code); other
    checkpoints are loaded as ``AutoModelForSequenceClassification`` and must have one label.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    auto_map = getattr(config, "auto_map", None) or {}
    archs = list(getattr(config, "architectures", None) or [])
    if "AutoModelForSequenceClassification" in auto_map or any(a.endswith("ForSequenceClassification") for a in archs):
        loader = AutoModelForSequenceClassification
    elif "AutoModel" in auto_map:
        if not trust_remote_code:
            raise ValueError(f"{path} needs its own modelling code ({auto_map['AutoModel']}); set trust_remote_code: true")
        loader = AutoModel
    else:
        loader = AutoModelForSequenceClassification
    if loader is AutoModelForSequenceClassification and getattr(config, "num_labels", 1) != 1:
        raise ValueError(f"{path}: a scoring model must have num_labels=1, found {config.num_labels}")
    model = loader.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    return model.to(device).eval()


def extract_scores(output: Any, attention_mask: Tensor) -> Tensor:
    """One score per sequence from a model output: pooled [B] / [B, 1], or per token [B, T] / [B, T, 1]
    (then read at the last non-padding token of a right-padded batch)."""
    if isinstance(output, dict) or hasattr(output, "logits"):
        x = output["logits"] if isinstance(output, dict) else output.logits
    elif isinstance(output, (tuple, list)):
        x = output[0]
    else:
        x = output
    if x.dim() == 3 and x.shape[-1] == 1:
        x = x.squeeze(-1)
    if x.dim() == 2 and x.shape[1] == 1:
        return x[:, 0]
    if x.dim() == 1:
        return x
    if x.dim() == 2 and x.shape[1] == attention_mask.shape[1]:
        last = attention_mask.long().cumsum(dim=1).argmax(dim=1)
        return x.gather(1, last.view(-1, 1)).squeeze(1)
    raise ValueError(f"cannot read one score per sequence from a model output of shape {tuple(x.shape)}")


@register_discriminator("polar")
class PolarScorer:
    """POLAR loaded locally (``model_path``); raw score = the model's unbounded scalar."""

    def __init__(self, cfg: DiscriminatorConfig, *, model: torch.nn.Module | None = None, tokenizer: Any = None):
        if model is None and not cfg.model_path:
            raise ValueError("discriminator 'polar' needs model_path (a local POLAR checkpoint); "
                             "for a served POLAR use name: polar_server")
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.tokenizer = tokenizer or load_tokenizer(cfg.tokenizer_path or cfg.model_path, cfg.trust_remote_code)
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.model = model or load_scoring_model(cfg.model_path, dtype=self.dtype, device=self.device,
                                                 trust_remote_code=cfg.trust_remote_code)
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.encoder = PolarEncoder(self.tokenizer, cfg.polar, cfg.cache_size)

    @torch.no_grad()
    def score_texts(self, texts: Sequence[str]) -> Tensor:
        """Scores of already formatted inputs; batches of similar length (less padding), right-padded."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        scores = torch.zeros(len(texts), dtype=torch.float32)
        for start in range(0, len(order), self.cfg.batch_size):
            rows = order[start : start + self.cfg.batch_size]
            batch = self.tokenizer([texts[i] for i in rows], padding=True, return_tensors="pt", add_special_tokens=True)
            batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            output = self.model(**batch)
            scores[torch.tensor(rows)] = extract_scores(output, batch["attention_mask"]).float().cpu()
        return scores

    def score(self, prompts: Sequence[Prompt], references: Sequence[str], candidates: Sequence[str]) -> Tensor:
        return self.score_texts(self.encoder.encode_batch(prompts, references, candidates))
