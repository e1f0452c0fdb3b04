"""Base of the offline scorers: a similarity s in [0, 1] mapped onto POLAR's raw-score scale.

    r = -offset - scale * (1 - s)          (offset = cfg.similarity_offset, scale = cfg.similarity_scale)

With the default offset 0.5, an identical answer (s = 1) scores r = -0.5, close to POLAR's -0.6 for an
identical answer, where Algorithm 1 gives coef = 0.88; r falls linearly to -(offset + scale) for s = 0.
Every raw score is <= -offset < 0, the branch of Algorithm 1 on which coef grows with r, so coef grows
with similarity. Algorithm 1 crosses coef = 0 at r = -1.76, i.e. at s = 1 - 1.26 / scale: the scale says
how similar a candidate must be before its coefficient turns positive (each scorer documents its default).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .config import DiscriminatorConfig
from .text import Prompt


class SimilarityScorer:
    """Subclasses implement ``similarity`` (values in [0, 1]); ``score`` maps it to raw r."""

    default_scale: float = 4.0

    def __init__(self, cfg: DiscriminatorConfig):
        self.cfg = cfg
        self.scale = float(cfg.similarity_scale if cfg.similarity_scale is not None else self.default_scale)
        self.offset = float(cfg.similarity_offset)
        if self.scale <= 0:
            raise ValueError(f"similarity_scale must be > 0, got {self.scale}")

    def similarity(self, prompts: Sequence[Prompt], references: Sequence[str], candidates: Sequence[str]) -> Tensor:
        raise NotImplementedError

    def raw_from_similarity(self, s: Tensor) -> Tensor:
        return -self.offset - self.scale * (1.0 - s.clamp(0.0, 1.0))

    def score(self, prompts: Sequence[Prompt], references: Sequence[str], candidates: Sequence[str]) -> Tensor:
        if not (len(prompts) == len(references) == len(candidates)):
            raise ValueError(
                f"prompts, references and candidates differ in length: {len(prompts)}, {len(references)}, {len(candidates)}"
            )
        if len(candidates) == 0:
            return torch.zeros(0, dtype=torch.float32)
        s = self.similarity(prompts, references, candidates).to(torch.float32).cpu()
        return self.raw_from_similarity(s)
