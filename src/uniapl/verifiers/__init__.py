"""Instruction checkers by id (the 25 IFEval instructions and your own), strict/loose verdicts, rewards.

    from uniapl.verifiers import verify, verifiable_reward
    v = verify("hello world", ["punctuation:no_comma"], [{}])
    verifiable_reward(v)  # 1.0

Add a checker by id with `register_checker`; see docs/verifiers.md.
"""

from . import autoif as _autoif  # noqa: F401  (registers "autoif:code": sandboxed AutoIF functions)
from . import ifeval as _ifeval  # noqa: F401  (registers the 25 IFEval checkers)
from .ifeval import IFEVAL_INSTRUCTION_IDS
from .registry import CHECKERS, get_checker, register_checker, validate_spec
from .verify import (
    METRIC_KEYS,
    Verdict,
    category_accuracies,
    ifeval_metrics,
    loose_variants,
    verifiable_reward,
    verify,
    verify_many,
)

__all__ = [
    "CHECKERS",
    "IFEVAL_INSTRUCTION_IDS",
    "METRIC_KEYS",
    "Verdict",
    "category_accuracies",
    "get_checker",
    "ifeval_metrics",
    "loose_variants",
    "register_checker",
    "validate_spec",
    "verifiable_reward",
    "verify",
    "verify_many",
]
