"""A cheap lexical scorer: word overlap and character n-gram overlap with the reference.

    s = 0.5 * F1(word unigrams) + 0.5 * cosine(character 3-gram counts)      in [0, 1]
    r = -offset - scale * (1 - s)        default scale 4.0: identical -0.5, unrelated about -4.5

Both parts are computed on lowercased text with whitespace collapsed. F1 is the SQuAD-style token F1
(multiset overlap); the character 3-grams make it tolerant to inflection and tokenisation. Two empty
texts have s = 1, one empty text s = 0. The prompt is ignored. With scale 4, coef (Algorithm 1) is
positive for s > 0.69. Examples: the same sentence reordered s ~ 0.9 (coef ~ 0.7), a reworded answer
with the same content s ~ 0.65-0.8 (coef -0.1 ... 0.3), a different answer on the same topic s ~ 0.3-0.45
(coef -0.8 ... -0.55), unrelated text s < 0.1 (coef ~ -0.9).

Reference encodings (the two count tables and their norms) are cached per reference text, so a GRPO
group of G samples per prompt encodes its reference once.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from .config import DiscriminatorConfig
from .registry import register_discriminator
from .similarity import SimilarityScorer
from .text import LRUCache, Prompt

_WORD = re.compile(r"\w+", re.UNICODE)
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class LexicalEncoding:
    words: Counter
    n_words: int
    grams: Counter
    gram_norm: float
    empty: bool


def encode_lexical(text: str, n: int = 3) -> LexicalEncoding:
    norm = _SPACE.sub(" ", text.lower()).strip()
    words = Counter(_WORD.findall(norm))
    padded = f" {norm} "
    grams = Counter(padded[i : i + n] for i in range(max(0, len(padded) - n + 1))) if norm else Counter()
    gram_norm = math.sqrt(sum(c * c for c in grams.values()))
    return LexicalEncoding(words, sum(words.values()), grams, gram_norm, not norm)


def lexical_similarity(ref: LexicalEncoding, cand: LexicalEncoding) -> float:
    """0.5 * word F1 + 0.5 * char-3-gram cosine, in [0, 1]."""
    if ref.empty and cand.empty:
        return 1.0
    if ref.empty or cand.empty:
        return 0.0
    common = sum((ref.words & cand.words).values())
    f1 = 0.0 if common == 0 else 2.0 * common / (ref.n_words + cand.n_words)
    if ref.gram_norm == 0 or cand.gram_norm == 0:
        cos = 0.0
    else:
        small, large = (ref.grams, cand.grams) if len(ref.grams) <= len(cand.grams) else (cand.grams, ref.grams)
        dot = sum(c * large.get(g, 0) for g, c in small.items())
        cos = dot / (ref.gram_norm * cand.gram_norm)
    return min(1.0, max(0.0, 0.5 * f1 + 0.5 * cos))


@register_discriminator("lexical")
class LexicalScorer(SimilarityScorer):
    """Word-F1 + char-3-gram-cosine similarity to the reference, on POLAR's raw-score scale."""

    default_scale = 4.0

    def __init__(self, cfg: DiscriminatorConfig | None = None):
        super().__init__(cfg or DiscriminatorConfig())
        self.cache: LRUCache[str, LexicalEncoding] = LRUCache(self.cfg.cache_size)

    def similarity(self, prompts: Sequence[Prompt], references: Sequence[str], candidates: Sequence[str]) -> Tensor:
        out = []
        for ref, cand in zip(references, candidates):
            enc_ref = self.cache.get_or_compute(ref, lambda ref=ref: encode_lexical(ref))
            out.append(lexical_similarity(enc_ref, encode_lexical(cand)))
        return torch.tensor(out, dtype=torch.float32)
