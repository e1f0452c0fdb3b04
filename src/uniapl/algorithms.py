"""Each paradigm of the paper as data: which loss terms apply to which slice of the mixed batch.

The one training loop reads a `Paradigm` and does only the work its terms need: an SFT slice
(expert demonstrations), a preference slice (G student rollouts per prompt with verifiable rewards),
and the adversarial term on either slice (student rollouts scored by the discriminator).

Weights follow eq. (2) of the paper: `alpha * (SFT + lambda_adv * ADV)|sft slice +
(1 - alpha) * (GRPO + lambda_adv * ADV)|pref slice`. A single-slice paradigm gets weight 1 on its slice.
Users add a paradigm with `register_algorithm`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Paradigm:
    name: str
    sft_terms: tuple[str, ...] = ()  # subset of ("sft", "adv")
    pref_terms: tuple[str, ...] = ()  # subset of ("grpo", "adv")
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

    def slice_weights(self, alpha: float) -> tuple[float, float]:
        """(weight of the SFT slice, weight of the preference slice)."""
        if self.uses_sft_slice and self.uses_pref_slice:
            return alpha, 1.0 - alpha
        return (1.0, 0.0) if self.uses_sft_slice else (0.0, 1.0)


ALGORITHMS: dict[str, Paradigm] = {}


def register_algorithm(p: Paradigm) -> Paradigm:
    for t in p.sft_terms:
        if t not in ("sft", "adv"):
            raise ValueError(f"algorithm {p.name!r}: SFT-slice term {t!r} is not one of 'sft', 'adv'")
    for t in p.pref_terms:
        if t not in ("grpo", "adv"):
            raise ValueError(f"algorithm {p.name!r}: preference-slice term {t!r} is not one of 'grpo', 'adv'")
    if not (p.sft_terms or p.pref_terms):
        raise ValueError(f"algorithm {p.name!r} has no loss terms")
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
):
    register_algorithm(_p)


def get_algorithm(name: str) -> Paradigm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; allowed: {', '.join(ALGORITHMS)}") from None
