"""Each paradigm of the paper as data: which loss terms apply to which slice of the mixed batch.

The one training loop reads a `Paradigm` and does only the work its terms need:
  * the SFT slice: expert demonstrations ("sft"), student rollouts on the same prompts ("adv");
  * the preference slice: ONE main term, "grpo" (G student rollouts per prompt with verifiable
    rewards), "dpo" (chosen/rejected pairs) or "kto" (desirable/undesirable answers), and "adv" (the
    adversarial term on student rollouts: the GRPO rollouts themselves, or rollouts drawn for it
    when the main term is offline).

How the two slices are weighted is the paradigm's `weighting` rule (a registered function of the loss
config and the step giving the SFT slice's weight w; the preference slice gets 1 - w):
  * "alpha"    eq. (2) of the paper: w = loss.alpha, every step;
  * "chord_mu" CHORD: w = mu_schedule(step, loss.chord.*) (warm-up, cosine decay, valley).
The loss is  w * (SFT + lambda_adv ADV)|sft slice + (1 - w) * (PREF + lambda_adv ADV)|pref slice;
a single-slice paradigm gets weight 1 on its slice.
Users add a paradigm with `register_algorithm`, a weighting rule with `register_weighting`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from uniapl.losses.chord import mu_schedule

SFT_TERMS = ("sft", "adv")
PREF_TERMS = ("grpo", "dpo", "kto", "adv")
PREF_MAIN_TERMS = ("grpo", "dpo", "kto")

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


@dataclass(frozen=True)
class Paradigm:
    name: str
    sft_terms: tuple[str, ...] = ()  # subset of ("sft", "adv")
    pref_terms: tuple[str, ...] = ()  # at most one of ("grpo", "dpo", "kto"), plus optionally "adv"
    weighting: str = "alpha"  # a key of WEIGHTINGS
    description: str = ""

    @property
    def uses_sft_slice(self) -> bool:
        return bool(self.sft_terms)

    @property
    def uses_pref_slice(self) -> bool:
        return bool(self.pref_terms)

    @property
    def uses_discriminator(self) -> bool:
        return "adv" in self.sft_terms or "adv" in self.pref_terms

    @property
    def pref_main(self) -> str | None:
        """The preference slice's main term: "grpo", "dpo", "kto" or None (no main term)."""
        return next((t for t in self.pref_terms if t in PREF_MAIN_TERMS), None)

    @property
    def online(self) -> bool:
        """True when the preference slice learns from the student's own rollouts (GRPO)."""
        return self.pref_main == "grpo"

    @property
    def offline_preference(self) -> bool:
        """True when the preference slice is DPO or KTO (needs preference data and a reference model)."""
        return self.pref_main in ("dpo", "kto")

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


ALGORITHMS: dict[str, Paradigm] = {}


def register_algorithm(p: Paradigm) -> Paradigm:
    for t in p.sft_terms:
        if t not in SFT_TERMS:
            raise ValueError(f"algorithm {p.name!r}: SFT-slice term {t!r} is not one of {', '.join(SFT_TERMS)}")
    for t in p.pref_terms:
        if t not in PREF_TERMS:
            raise ValueError(f"algorithm {p.name!r}: preference-slice term {t!r} is not one of {', '.join(PREF_TERMS)}")
    if sum(t in PREF_MAIN_TERMS for t in p.pref_terms) > 1:
        raise ValueError(f"algorithm {p.name!r}: at most one of {', '.join(PREF_MAIN_TERMS)} per preference slice")
    if not (p.sft_terms or p.pref_terms):
        raise ValueError(f"algorithm {p.name!r} has no loss terms")
    if p.weighting not in WEIGHTINGS:
        raise ValueError(f"algorithm {p.name!r}: unknown weighting {p.weighting!r}; registered: {', '.join(WEIGHTINGS)}")
    ALGORITHMS[p.name] = p
    return p


for _p in (
    Paradigm("sft", sft_terms=("sft",), description="supervised fine-tuning on expert responses"),
    Paradigm("grpo", pref_terms=("grpo",), description="GRPO on verifiable rewards"),
    Paradigm("a_sft", sft_terms=("sft", "adv"), description="SFT + lambda_adv * adversarial term on student rollouts"),
    Paradigm("a_grpo", pref_terms=("grpo", "adv"), description="GRPO + lambda_adv * adversarial term"),
    Paradigm(
        "unified",
        sft_terms=("sft", "adv"),
        pref_terms=("grpo", "adv"),
        description="eq. (2): alpha * A-SFT on the SFT slice + (1 - alpha) * A-GRPO on the preference slice",
    ),
    Paradigm(
        "chord",
        sft_terms=("sft",),
        pref_terms=("grpo",),
        weighting="chord_mu",
        description="CHORD: mu(step) * SFT on expert rows + (1 - mu(step)) * GRPO on on-policy rows",
    ),
    Paradigm(
        "a_chord",
        sft_terms=("sft",),
        pref_terms=("grpo", "adv"),
        weighting="chord_mu",
        description="CHORD + lambda_adv * adversarial term on the on-policy rows",
    ),
    Paradigm("dpo", pref_terms=("dpo",), description="DPO on chosen/rejected pairs (appendix A.4.1)"),
    Paradigm("a_dpo", pref_terms=("dpo", "adv"),
             description="DPO + lambda_adv * adversarial term on student rollouts of the same prompts"),
    Paradigm("kto", pref_terms=("kto",), description="KTO on desirable/undesirable answers (appendix A.4.2)"),
    Paradigm("a_kto", pref_terms=("kto", "adv"),
             description="KTO + lambda_adv * adversarial term on student rollouts of the same prompts"),
):
    register_algorithm(_p)


def get_algorithm(name: str) -> Paradigm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; allowed: {', '.join(ALGORITHMS)}") from None
