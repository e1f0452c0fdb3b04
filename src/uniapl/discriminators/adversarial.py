"""The discriminator D(x, y_t, y_s) the trainer calls: a scorer + a reference mode + a transform.

    teacher mode (paper main setting):   r = score(x, ref = y_teacher, cand = y_student)
    ground_truth mode (paper Table 6):   r = score(x, y_gt, y_student) - score(x, y_gt, y_teacher)
    coef = transform(r)                  (Algorithm 1 by default)

Triples are de-duplicated before scoring (a GRPO group repeats the teacher/ground truth of its prompt,
and in ground_truth mode the teacher term is the same for every sample of the group) and scored in
chunks of ``cfg.batch_size``.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch
from torch import Tensor

from .config import DiscriminatorConfig
from .registry import Scorer, build_scorer
from .text import Prompt, prompt_key
from .transforms import Transform, get_transform


def _missing(values: Sequence[Any] | None, n: int) -> list[int]:
    if values is None:
        return list(range(n))
    return [i for i, v in enumerate(values) if v is None]


def _stats(prefix: str, x: Tensor) -> dict[str, float]:
    if x.numel() == 0:
        return {}
    x = x.double()
    return {
        f"{prefix}_mean": float(x.mean()),
        f"{prefix}_std": float(x.std(unbiased=False)),
        f"{prefix}_min": float(x.min()),
        f"{prefix}_max": float(x.max()),
    }


class AdversarialDiscriminator:
    """What the trainer uses. Build it with ``build_discriminator(cfg)``."""

    def __init__(self, scorer: Scorer, *, transform: str | Transform = "algorithm1", reference: str = "teacher",
                 batch_size: int = 32, name: str = ""):
        if reference not in ("teacher", "ground_truth"):
            raise ValueError(f"reference must be 'teacher' or 'ground_truth', got {reference!r}")
        self.scorer = scorer
        self.transform = get_transform(transform) if isinstance(transform, str) else transform
        self.transform_name = transform if isinstance(transform, str) else getattr(transform, "__name__", "custom")
        self.reference = reference
        self.batch_size = max(1, int(batch_size))
        self.name = name or type(scorer).__name__
        self._policy_steps = 0

    # ------------------------------------------------------------------ scoring
    @property
    def trainable(self) -> bool:
        return callable(getattr(self.scorer, "update", None))

    def score_raw(self, prompts: Sequence[Prompt], references: Sequence[str], candidates: Sequence[str]) -> Tensor:
        """Raw scores [N] (float32, cpu) of (prompt, reference, candidate) triples: de-duplicated, batched."""
        n = len(candidates)
        if not (len(prompts) == len(references) == n):
            raise ValueError(f"prompts, references and candidates differ in length: {len(prompts)}, {len(references)}, {n}")
        index: dict[tuple[str, str, str], int] = {}
        uniq: list[int] = []
        where = []
        for i in range(n):
            key = (prompt_key(prompts[i]), references[i], candidates[i])
            if key not in index:
                index[key] = len(uniq)
                uniq.append(i)
            where.append(index[key])
        out = torch.empty(len(uniq), dtype=torch.float32)
        for start in range(0, len(uniq), self.batch_size):
            rows = uniq[start : start + self.batch_size]
            s = self.scorer.score([prompts[i] for i in rows], [references[i] for i in rows], [candidates[i] for i in rows])
            s = torch.as_tensor(s).detach().to("cpu", torch.float32).reshape(-1)
            if s.numel() != len(rows):
                raise ValueError(f"discriminator {self.name!r} returned {s.numel()} scores for {len(rows)} triples")
            out[start : start + len(rows)] = s
        raw = out[torch.tensor(where, dtype=torch.long)] if n else out
        bad = (~torch.isfinite(raw)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"discriminator {self.name!r} returned non-finite raw scores for rows {bad[:10]}")
        return raw

    def coefficients(
        self,
        prompts: Sequence[Prompt],
        candidates: Sequence[str],
        *,
        teachers: Sequence[str | None] | None = None,
        ground_truths: Sequence[str | None] | None = None,
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        """(coef [N] float32 in [-1, 1], raw r [N] float32, metrics) for N student candidates.

        teacher mode needs ``teachers[i]`` for every row; ground_truth mode needs ``ground_truths[i]`` and
        ``teachers[i]``. A missing one raises ValueError naming the rows.
        """
        n = len(candidates)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} candidates")
        for label, values in (("teachers", teachers), ("ground_truths", ground_truths)):
            if values is not None and len(values) != n:
                raise ValueError(f"{len(values)} {label} for {n} candidates")
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        if self.reference == "teacher":
            miss = _missing(teachers, n)
            if miss:
                raise ValueError(
                    f"discriminator reference='teacher' needs a teacher answer for every row; missing for rows "
                    f"{miss[:10]}{' ...' if len(miss) > 10 else ''} (set discriminator.reference=ground_truth or add "
                    f"teacher answers to the data)"
                )
            raw = self.score_raw(prompts, list(teachers), list(candidates))  # type: ignore[arg-type]
        else:
            miss = sorted(set(_missing(ground_truths, n)) | set(_missing(teachers, n)))
            if miss:
                raise ValueError(
                    f"discriminator reference='ground_truth' needs both a ground-truth and a teacher answer for every "
                    f"row; missing for rows {miss[:10]}{' ...' if len(miss) > 10 else ''}"
                )
            gts = list(ground_truths)  # type: ignore[arg-type]
            both = self.score_raw(list(prompts) * 2, gts + gts, list(candidates) + list(teachers))  # type: ignore[arg-type]
            r_s, r_t = both[:n], both[n:]
            raw = r_s - r_t
            metrics.update(_stats("adv/raw_student", r_s))
            metrics.update(_stats("adv/raw_teacher", r_t))
        coef = self.transform(raw).to(torch.float32).clamp(-1.0, 1.0)
        metrics.update(_stats("adv/raw", raw))
        metrics.update(_stats("adv/coef", coef))
        if n:
            metrics["adv/coef_frac_positive"] = float((coef > 0).float().mean())
        metrics["adv/score_seconds"] = time.perf_counter() - t0
        return coef, raw, metrics

    __call__ = coefficients

    # ------------------------------------------------------------------ training of learned discriminators
    def update(self, prompts: Sequence[Prompt], teachers: Sequence[str | None], students: Sequence[str]) -> dict[str, float]:
        """Train a learned discriminator on teacher (label 1) vs student (label 0) answers; frozen: {}.

        Called once per policy step. Rows whose teacher answer is None are left out.
        """
        self._policy_steps += 1
        fn = getattr(self.scorer, "update", None)
        if not callable(fn):
            return {}
        if not (len(prompts) == len(teachers) == len(students)):
            raise ValueError(f"prompts, teachers and students differ in length: {len(prompts)}, {len(teachers)}, {len(students)}")
        keep = [i for i, t in enumerate(teachers) if t is not None]
        if not keep:
            return {}
        return fn([prompts[i] for i in keep], [teachers[i] for i in keep], [students[i] for i in keep])

    def state_dict(self) -> dict[str, Any]:
        fn = getattr(self.scorer, "state_dict", None)
        return fn() if callable(fn) and self.trainable else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        fn = getattr(self.scorer, "load_state_dict", None)
        if not callable(fn) or not self.trainable:
            raise ValueError(f"discriminator {self.name!r} is frozen and has no state to load")
        fn(state)

    def __repr__(self) -> str:
        return (f"AdversarialDiscriminator(name={self.name!r}, reference={self.reference!r}, "
                f"transform={self.transform_name!r}, batch_size={self.batch_size})")


def build_discriminator(cfg: DiscriminatorConfig | None = None) -> AdversarialDiscriminator:
    """Build the discriminator a config names (``cfg.name`` scorer, ``cfg.transform``, ``cfg.reference``)."""
    cfg = cfg or DiscriminatorConfig()
    get_transform(cfg.transform)  # fail early on a typo, before loading any model
    scorer = build_scorer(cfg)
    return AdversarialDiscriminator(scorer, transform=cfg.transform, reference=cfg.reference,
                                    batch_size=cfg.batch_size, name=cfg.name)


__all__ = ["AdversarialDiscriminator", "build_discriminator"]
