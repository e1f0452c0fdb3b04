"""A learned discriminator (``name: learned``), trained online against the policy. Beyond the paper,
which kept POLAR frozen.

A small classifier C(y) (or C(x, y) with ``learned.use_prompt``) is trained to tell teacher answers
(label 1) from the student's samples (label 0); its logit is the raw score r. With the paper's transform
(Algorithm 1) coef = 1 - 8 (sigmoid(r) - 0.5)^2 is largest where the classifier cannot tell (sigmoid(r) =
0.5), the equilibrium of the game; with ``transform: 2p-1`` coef = 2 sigmoid(r) - 1 rewards samples the
classifier takes for the teacher's (the usual GAN generator objective). The reference answer is not
an input: in teacher mode it *is* the teacher answer, which would make the task trivial.

``AdversarialDiscriminator.update`` trains it once per policy step:
    every ``learned.update_every`` policy steps, ``learned.updates_per_step`` passes over the step's
    (deduplicated) teacher answers and student samples in minibatches of ``learned.minibatch_size``,
    binary cross-entropy with the two classes weighted equally (a GRPO group has G students per teacher).
Metrics (``disc/...``): accuracy on the step's batch *before* training on it (an unbiased estimate,
as the classifier has not seen these samples), per class, after the update, the loss, mean logits.

Models (``learned.model``):
    hashed_bow  word 1-2-grams and character 4-grams hashed into ``num_buckets`` embeddings (mean
                pooled) + log-length features, then an MLP. No download, trains in milliseconds on CPU.
    hf          a local AutoModelForSequenceClassification (``model_path``; one label), fine-tuned.
"""

from __future__ import annotations

import math
import random
import re
import zlib
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DiscriminatorConfig, LearnedConfig
from .polar import load_tokenizer, resolve_device
from .registry import register_discriminator
from .text import LRUCache, Prompt, as_text, prompt_key

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class HashedNgramFeaturizer:
    """Text -> bucket ids of its word 1-2-grams and char 4-grams (crc32, stable across processes)."""

    def __init__(self, num_buckets: int, max_chars: int):
        self.num_buckets = int(num_buckets)
        self.max_chars = int(max_chars)

    def ids(self, text: str) -> list[int]:
        text = text[: self.max_chars]
        low = text.lower()
        words = _WORD.findall(low)
        feats = [f"w:{w}" for w in words]
        feats += [f"b:{a} {b}" for a, b in zip(words, words[1:])]
        feats += [f"c:{low[i:i + 4]}" for i in range(0, max(0, len(low) - 3))]
        if not feats:
            feats = ["<empty>"]
        return [zlib.crc32(f.encode()) % self.num_buckets for f in feats]

    @staticmethod
    def dense(text: str) -> list[float]:
        n_words = len(text.split())
        return [math.log1p(len(text)) / 8.0, math.log1p(n_words) / 6.0, math.log1p(text.count("\n")) / 4.0]


class HashedBowClassifier(nn.Module):
    def __init__(self, cfg: LearnedConfig):
        super().__init__()
        self.use_prompt = cfg.use_prompt
        self.bag = nn.EmbeddingBag(cfg.num_buckets, cfg.embed_dim, mode="mean")
        width = cfg.embed_dim * (2 if cfg.use_prompt else 1) + 3
        self.mlp = nn.Sequential(nn.Linear(width, cfg.hidden_size), nn.GELU(), nn.Linear(cfg.hidden_size, 1))
        nn.init.normal_(self.bag.weight, std=0.1)

    def forward(self, ids: Tensor, offsets: Tensor, dense: Tensor, p_ids: Tensor | None = None,
                p_offsets: Tensor | None = None) -> Tensor:
        parts = [self.bag(ids, offsets)]
        if self.use_prompt:
            parts.append(self.bag(p_ids, p_offsets))
        parts.append(dense)
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)


class _BowBackend:
    def __init__(self, cfg: LearnedConfig, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.featurizer = HashedNgramFeaturizer(cfg.num_buckets, cfg.max_chars)
        self.model = HashedBowClassifier(cfg).to(device)
        self._prompt_ids: dict[str, list[int]] = {}
        self._text_feats: LRUCache[str, tuple[list[int], list[float]]] = LRUCache(16384)  # reused across passes

    def _features(self, text: str) -> tuple[list[int], list[float]]:
        return self._text_feats.get_or_compute(text, lambda: (self.featurizer.ids(text), self.featurizer.dense(text)))

    def _bags(self, lists: list[list[int]]) -> tuple[Tensor, Tensor]:
        offsets = torch.tensor([0] + [len(x) for x in lists[:-1]], dtype=torch.long).cumsum(0)
        ids = torch.tensor([i for x in lists for i in x], dtype=torch.long)
        return ids.to(self.device), offsets.to(self.device)

    def logits(self, prompts: Sequence[Prompt], texts: Sequence[str]) -> Tensor:
        feats = [self._features(t) for t in texts]
        ids, offsets = self._bags([f[0] for f in feats])
        dense = torch.tensor([f[1] for f in feats], dtype=torch.float32, device=self.device)
        p_ids = p_off = None
        if self.cfg.use_prompt:
            lists = []
            for p in prompts:  # prompt features computed once per prompt
                key = prompt_key(p)
                if key not in self._prompt_ids:
                    if len(self._prompt_ids) > 65536:
                        self._prompt_ids.clear()
                    self._prompt_ids[key] = self.featurizer.ids(as_text(p))
                lists.append(self._prompt_ids[key])
            p_ids, p_off = self._bags(lists)
        return self.model(ids, offsets, dense, p_ids, p_off)


class _HFBackend:
    def __init__(self, cfg: DiscriminatorConfig, device: torch.device):
        from transformers import AutoModelForSequenceClassification

        if not cfg.model_path:
            raise ValueError("learned.model=hf needs model_path (a local model folder)")
        self.cfg = cfg.learned
        self.device = device
        self.tokenizer = load_tokenizer(cfg.tokenizer_path or cfg.model_path, cfg.trust_remote_code)
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.model = AutoModelForSequenceClassification.from_pretrained(
            cfg.model_path, num_labels=1, trust_remote_code=cfg.trust_remote_code).to(device)
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def logits(self, prompts: Sequence[Prompt], texts: Sequence[str]) -> Tensor:
        if self.cfg.use_prompt:
            batch = self.tokenizer([as_text(p) for p in prompts], list(texts), truncation="only_second",
                                   max_length=self.cfg.max_tokens, padding=True, return_tensors="pt")
        else:
            batch = self.tokenizer(list(texts), truncation=True, max_length=self.cfg.max_tokens, padding=True,
                                   return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        return self.model(**batch).logits.float().reshape(-1)


def _optimizer(cfg: LearnedConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    raise ValueError(f"learned.optimizer must be adamw, adam or sgd, got {cfg.optimizer!r}")


@register_discriminator("learned")
class LearnedScorer:
    """Teacher-vs-student classifier trained online; raw score = its logit for "teacher"."""

    def __init__(self, cfg: DiscriminatorConfig | None = None):
        cfg = cfg or DiscriminatorConfig(name="learned")
        self.cfg = cfg
        self.lcfg = cfg.learned
        self._rng = random.Random(self.lcfg.seed)
        self.device = resolve_device(cfg.device)
        if self.lcfg.model not in ("hashed_bow", "hf"):
            raise ValueError(f"learned.model must be hashed_bow or hf, got {self.lcfg.model!r}")
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the trainer's RNG
            torch.manual_seed(self.lcfg.seed)
            if self.lcfg.model == "hashed_bow":
                self.backend: Any = _BowBackend(self.lcfg, self.device)
            else:
                self.backend = _HFBackend(cfg, self.device)
        self.model = self.backend.model
        self.optimizer = _optimizer(self.lcfg, self.model.parameters())
        self.policy_steps = 0
        self.updates = 0

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt], references: Sequence[str], candidates: Sequence[str]) -> Tensor:
        self.model.eval()
        out = [self.backend.logits(prompts[i : i + self.cfg.batch_size], candidates[i : i + self.cfg.batch_size])
               for i in range(0, len(candidates), self.cfg.batch_size)]
        return torch.cat(out).float().cpu() if out else torch.zeros(0)

    def update(self, prompts: Sequence[Prompt], teachers: Sequence[str], students: Sequence[str]) -> dict[str, float]:
        self.policy_steps += 1
        if (self.policy_steps - 1) % max(1, self.lcfg.update_every) != 0:
            return {"disc/updated": 0.0}
        prompts, teachers, students = self._gather(prompts, teachers, students)
        seen: set[tuple[str, str]] = set()
        rows: list[tuple[Prompt, str, float]] = []
        for p, t in zip(prompts, teachers):
            key = (prompt_key(p), t)
            if key not in seen:
                seen.add(key)
                rows.append((p, t, 1.0))
        rows += [(p, s, 0.0) for p, s in zip(prompts, students)]
        n_t = sum(1 for r in rows if r[2] == 1.0)
        n_s = len(rows) - n_t
        if n_t == 0 or n_s == 0:
            return {"disc/updated": 0.0}
        labels = torch.tensor([r[2] for r in rows], device=self.device)
        weights = torch.where(labels > 0.5, len(rows) / (2.0 * n_t), len(rows) / (2.0 * n_s))

        metrics = {f"disc/{k}": v for k, v in self._evaluate(rows, labels).items()}  # before training on them
        smooth = self.lcfg.label_smoothing
        targets = labels * (1.0 - smooth) + 0.5 * smooth
        self.model.train()
        losses = []
        for _ in range(max(1, self.lcfg.updates_per_step)):
            order = list(range(len(rows)))
            self._rng.shuffle(order)
            for start in range(0, len(order), self.lcfg.minibatch_size):
                idx = order[start : start + self.lcfg.minibatch_size]
                logits = self.backend.logits([rows[i][0] for i in idx], [rows[i][1] for i in idx])
                it = torch.tensor(idx, device=self.device)
                loss = (F.binary_cross_entropy_with_logits(logits, targets[it], reduction="none") * weights[it]).sum()
                loss = loss / weights[it].sum()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.lcfg.max_grad_norm > 0:
                    nn.utils.clip_grad_norm_(self.model.parameters(), self.lcfg.max_grad_norm)
                self.optimizer.step()
                self.updates += 1
                losses.append(float(loss.detach()))
        after = self._evaluate(rows, labels)
        metrics.update({
            "disc/updated": 1.0,
            "disc/loss": sum(losses) / len(losses),
            "disc/acc_after_update": after["acc"],
            "disc/updates": float(self.updates),
            "disc/n_teacher": float(n_t),
            "disc/n_student": float(n_s),
        })
        return metrics

    def _gather(self, prompts, teachers, students):
        """Under torch.distributed, every rank gets every rank's answers, so all ranks train identically."""
        import torch.distributed as dist

        if not (self.lcfg.sync_across_ranks and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return prompts, teachers, students
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (list(prompts), list(teachers), list(students)))
        return ([p for part in parts for p in part[0]], [t for part in parts for t in part[1]],
                [s for part in parts for s in part[2]])

    @torch.no_grad()
    def _evaluate(self, rows: list[tuple[Prompt, str, float]], labels: Tensor) -> dict[str, float]:
        self.model.eval()
        logits = torch.cat([
            self.backend.logits([r[0] for r in rows[i : i + self.cfg.batch_size]], [r[1] for r in rows[i : i + self.cfg.batch_size]])
            for i in range(0, len(rows), self.cfg.batch_size)
        ])
        correct = ((logits > 0).float() == labels).float()
        is_t = labels > 0.5
        acc_t, acc_s = float(correct[is_t].mean()), float(correct[~is_t].mean())
        return {
            "acc": 0.5 * (acc_t + acc_s),  # balanced accuracy
            "acc_teacher": acc_t,
            "acc_student": acc_s,
            "logit_teacher_mean": float(logits[is_t].mean()),
            "logit_student_mean": float(logits[~is_t].mean()),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "policy_steps": self.policy_steps, "updates": self.updates, "rng": self._rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.policy_steps = int(state.get("policy_steps", 0))
        self.updates = int(state.get("updates", 0))
        if "rng" in state:
            self._rng.setstate(state["rng"])
