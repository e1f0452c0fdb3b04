"""Each paradigm of the paper as data: a list of (objective term, weight) per slice of the mixed batch.

A step draws two slices: "sft" (expert demonstrations) and "pref" (prompts with verifiable or comparative
feedback). A paradigm names the terms (`uniapl.objective`) on each slice, each with a weight (a constant or a
`loss` config key such as "lambda_adv"), and how the two slices are weighted against each other (a registered
rule of the loss config and the step giving the SFT slice's weight w; the preference slice gets 1 - w):

    "alpha"     eq. (2) of the paper: w = loss.alpha, every step;
    "chord_mu"  CHORD: w = mu_schedule(step, loss.chord.*) (warm-up, cosine decay, valley).

The step's objective is then

    L = w * sum_{(t, c) in sft} c * L_t|sft slice  +  (1 - w) * sum_{(t, c) in pref} c * L_t|pref slice

e.g. unified (eq. 2) = alpha (L_SFT + lambda_adv L_ADV)|sft + (1 - alpha) (L_GRPO + lambda_adv L_ADV)|pref.
A single-slice paradigm gets weight 1 on its slice. Add a paradigm with `register_algorithm`, a weighting rule
with `register_weighting`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from uniapl.losses.chord import mu_schedule
from uniapl.objective import TERMS, Weight, get_term, resolve_weight

# rule(loss_config, step) -> weight of the SFT slice when a paradigm uses both slices
WEIGHTINGS: dict[str, Callable[[Any, int], float]] = {}


def register_weighting(name: str):
    def deco(fn: Callable[[Any, int], float]):
        WEIGHTINGS[name] = fn
        return fn

    return deco


@register_weighting("alpha")
def _alpha(loss: Any, step: int) -> float:
    return float(loss.alpha)


@register_weighting("chord_mu")
def _chord_mu(loss: Any, step: int) -> float:
    c = loss.chord
    return mu_schedule(step, c.mu_warmup_steps, c.mu_decay_steps, c.mu_peak, c.mu_valley)


Terms = tuple[tuple[str, Weight], ...]


@dataclass(frozen=True)
class Paradigm:
    name: str
    sft: Terms = ()  # (term name, weight) on the SFT slice
    pref: Terms = ()  # (term name, weight) on the preference slice
    weighting: str = "alpha"  # a key of WEIGHTINGS: how the two slices are weighted
    description: str = ""

    def slice_terms(self, slice_name: str) -> Terms:
        return self.sft if slice_name == "sft" else self.pref

    def term_names(self, slice_name: str) -> tuple[str, ...]:
        return tuple(t for t, _ in self.slice_terms(slice_name))

    def term_weights(self, slice_name: str, loss: Any) -> list[tuple[str, float]]:
        """(term name, weight) of a slice, each weight resolved against the loss config."""
        return [(t, resolve_weight(w, loss)) for t, w in self.slice_terms(slice_name)]

    @property
    def uses_sft_slice(self) -> bool:
        return bool(self.sft)

    @property
    def uses_pref_slice(self) -> bool:
        return bool(self.pref)

    @property
    def uses_discriminator(self) -> bool:
        return any(get_term(t).needs_coefficients for t, _ in self.sft + self.pref)

    def slice_weights(self, loss: Any, step: int = 0) -> tuple[float, float]:
        """(weight of the SFT slice, weight of the preference slice) at `step`.

        `loss` is the LossConfig (or a plain float alpha, for the "alpha" rule).
        """
        if self.uses_sft_slice and self.uses_pref_slice:
            if isinstance(loss, (int, float)):
                w = float(loss)
            else:
                w = WEIGHTINGS[self.weighting](loss, step)
            return w, 1.0 - w
        return (1.0, 0.0) if self.uses_sft_slice else (0.0, 1.0)


def slice_objective(slice_weight: float, weighted_losses: Iterable[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """One slice's part of the objective (or one micro-batch's, the terms being linear in their rows):
    slice_weight * sum_k c_k * L_k, for (c_k, L_k) the weighted term losses."""
    return slice_weight * sum(c * loss for c, loss in weighted_losses)


ALGORITHMS: dict[str, Paradigm] = {}


def register_algorithm(p: Paradigm) -> Paradigm:
    for slice_name in ("sft", "pref"):
        exclusive: dict[str, str] = {}
        for term, weight in p.slice_terms(slice_name):
            if term not in TERMS:
                raise ValueError(f"algorithm {p.name!r}: unknown term {term!r}; registered: {', '.join(TERMS)}")
            cls = TERMS[term]
            if slice_name not in cls.slices:
                raise ValueError(f"algorithm {p.name!r}: term {term!r} cannot stand on the {slice_name} slice "
                                 f"(only on {', '.join(cls.slices)})")
            if cls.exclusive is not None:
                if cls.exclusive in exclusive:
                    same = [n for n, c in TERMS.items() if c.exclusive == cls.exclusive]
                    raise ValueError(f"algorithm {p.name!r}: at most one of {', '.join(same)} per slice "
                                     f"({exclusive[cls.exclusive]!r} and {term!r})")
                exclusive[cls.exclusive] = term
            if not isinstance(weight, (int, float, str)) or isinstance(weight, bool):
                raise ValueError(f"algorithm {p.name!r}: weight of {term!r} must be a number or a loss key, got {weight!r}")
        if len(set(p.term_names(slice_name))) != len(p.slice_terms(slice_name)):
            raise ValueError(f"algorithm {p.name!r}: a term appears twice on the {slice_name} slice")
    if not (p.sft or p.pref):
        raise ValueError(f"algorithm {p.name!r} has no loss terms")
    if p.weighting not in WEIGHTINGS:
        raise ValueError(f"algorithm {p.name!r}: unknown weighting {p.weighting!r}; registered: {', '.join(WEIGHTINGS)}")
    ALGORITHMS[p.name] = p
    return p


ADV = ("adversarial", "lambda_adv")  # the adversarial term, weighted by loss.lambda_adv

for _p in (
    Paradigm("sft", sft=(("sft", 1.0),), description="supervised fine-tuning on expert responses"),
    Paradigm("grpo", pref=(("grpo", 1.0),), description="GRPO on verifiable rewards"),
    Paradigm("a_sft", sft=(("sft", 1.0), ADV), description="SFT + lambda_adv * adversarial term on student rollouts"),
    Paradigm("a_grpo", pref=(("grpo", 1.0), ADV), description="GRPO + lambda_adv * adversarial term"),
    Paradigm("unified", sft=(("sft", 1.0), ADV), pref=(("grpo", 1.0), ADV),
             description="eq. (2): alpha * A-SFT on the SFT slice + (1 - alpha) * A-GRPO on the preference slice"),
    Paradigm("chord", sft=(("sft", 1.0),), pref=(("grpo", 1.0),), weighting="chord_mu",
             description="CHORD: mu(step) * SFT on expert rows + (1 - mu(step)) * GRPO on on-policy rows"),
    Paradigm("a_chord", sft=(("sft", 1.0),), pref=(("grpo", 1.0), ADV), weighting="chord_mu",
             description="CHORD + lambda_adv * adversarial term on the on-policy rows"),
    Paradigm("dpo", pref=(("dpo", 1.0),), description="DPO on chosen/rejected pairs (appendix A.4.1)"),
    Paradigm("a_dpo", pref=(("dpo", 1.0), ADV),
             description="DPO + lambda_adv * adversarial term on student rollouts of the same prompts"),
    Paradigm("kto", pref=(("kto", 1.0),), description="KTO on desirable/undesirable answers (appendix A.4.2)"),
    Paradigm("a_kto", pref=(("kto", 1.0), ADV),
             description="KTO + lambda_adv * adversarial term on student rollouts of the same prompts"),
):
    register_algorithm(_p)


def get_algorithm(name: str) -> Paradigm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; allowed: {', '.join(ALGORITHMS)}") from None
