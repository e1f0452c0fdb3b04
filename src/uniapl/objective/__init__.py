"""The objective's terms, one file each; a paradigm (`uniapl.algorithms`) weighs them per slice.

    sft.py          L_SFT: NLL of the expert answer (CHORD's phi token weighting as an option)
    adversarial.py  L_ADV: the discriminator's coefficient weights the student's own log-likelihood;
                    Table 4's variants (coefficient or raw score added to the reward) as options
    grpo.py         L_GRPO: group-normalised advantages, clipped ratio, k3 KL, rollout correction
    dpo.py          L_DPO on chosen/rejected pairs
    kto.py          L_KTO on desirable/undesirable answers

`base.py` says what a term declares and does. Add one with a file here holding a `Term` subclass decorated
with `@register_term`, and one import line below (docs/contributing.md has a worked example).
"""

from __future__ import annotations

from uniapl.objective.base import (SLICES, MicroBatch, Sequences, SliceBatch, StepContext, Term, UpdateLog, Weight,
                                   resolve_weight, token_normalizer)

TERMS: dict[str, type[Term]] = {}


def register_term(cls: type[Term]) -> type[Term]:
    """Class decorator: make `cls` usable in paradigms under `cls.name`."""
    if not cls.name:
        raise ValueError(f"term {cls.__name__} has no name")
    if cls.name in TERMS and TERMS[cls.name] is not cls:
        raise ValueError(f"term {cls.name!r} is already registered ({TERMS[cls.name].__name__})")
    TERMS[cls.name] = cls
    return cls


def get_term(name: str) -> type[Term]:
    try:
        return TERMS[name]
    except KeyError:
        raise ValueError(f"unknown objective term {name!r}; registered: {', '.join(TERMS)}") from None


# the built-in terms register themselves on import
from uniapl.objective import adversarial, dpo, grpo, kto, sft  # noqa: E402,F401

__all__ = ["SLICES", "TERMS", "MicroBatch", "Sequences", "SliceBatch", "StepContext", "Term", "UpdateLog", "Weight",
           "get_term", "register_term", "resolve_weight", "token_normalizer"]
