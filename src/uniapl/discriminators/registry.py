"""Scorers by name.

A scorer turns (prompt, reference, candidate) triples into raw scores r (higher = closer to the
reference). Register one with ``@register_discriminator("name")``; the registered object is called
with the ``DiscriminatorConfig`` and must return something with::

    def score(self, prompts, references: list[str], candidates: list[str]) -> Tensor  # [N] float32, cpu

Optional, for trainable scorers::

    def update(self, prompts, teachers: list[str], students: list[str]) -> dict[str, float]
    def state_dict(self) -> dict;  def load_state_dict(self, state: dict) -> None
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from torch import Tensor

from .config import DiscriminatorConfig
from .text import Prompt

SCORERS: dict[str, Callable[[DiscriminatorConfig], Any]] = {}


@runtime_checkable
class Scorer(Protocol):
    def score(self, prompts: Sequence[Prompt], references: Sequence[str], candidates: Sequence[str]) -> Tensor: ...


def register_discriminator(name: str) -> Callable:
    """Decorator: register a scorer class (or factory ``cfg -> scorer``) under ``name``."""

    def wrap(factory: Callable) -> Callable:
        if name in SCORERS and SCORERS[name] is not factory:
            raise ValueError(f"discriminator {name!r} is already registered ({SCORERS[name]!r})")
        SCORERS[name] = factory
        return factory

    return wrap


def build_scorer(cfg: DiscriminatorConfig) -> Scorer:
    """Instantiate the scorer registered under ``cfg.name``."""
    try:
        factory = SCORERS[cfg.name]
    except KeyError:
        raise KeyError(f"unknown discriminator {cfg.name!r}; registered: {sorted(SCORERS)}") from None
    scorer = factory(cfg)
    if not callable(getattr(scorer, "score", None)):
        raise TypeError(f"discriminator {cfg.name!r} built {type(scorer).__name__}, which has no score() method")
    return scorer
