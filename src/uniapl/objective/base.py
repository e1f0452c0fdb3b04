"""What an objective term is, and the data it works on.

A paradigm (`uniapl.algorithms`) is a list of (term, weight) per slice of the step's mixed batch. A TERM is one
part of that objective on one slice, written in one file of this package. It says:

  * where it may stand (`slices`) and what it trains on (`reads`): the slice's student rollouts, or sequences
    it builds itself in `prepare` from the slice's records (expert targets, DPO pairs, KTO's labelled answers);
  * what the step must compute for it, once, in the shared plumbing (`uniapl.training.batch`): rollouts per
    prompt (`rollouts_per_prompt`, `sets_group_size`), rewards (`needs_rewards`), discriminator coefficients
    (`needs_coefficients`), reference or old-policy log-probs (`reference`, `needs_old_logprobs`);
  * what the data must hold (`check_records`), checked before a run writes anything;
  * its normaliser over the whole step (`normalizer`, counted over this process's micro-batches; the
    plumbing sums it over processes), so that gradient accumulation and data parallelism give the gradient
    of one big batch;
  * its loss on one micro-batch (`loss`), calling the pure functions of `uniapl.losses`, with its metrics
    written into the update's one collector (`UpdateLog`).

The update (`uniapl.training.trainer`) then runs, per micro-batch, one forward of the policy and minimises
slice weight x sum over the terms reading it of (term weight x term loss).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import torch

if TYPE_CHECKING:  # only for annotations: a term never imports the training loop
    from uniapl.algorithms import Paradigm
    from uniapl.config import Config
    from uniapl.data.records import Record
    from uniapl.rollout import RolloutBatch

SLICES = ("sft", "pref")  # the mixed batch's two slices: expert demonstrations, preference/feedback prompts


@dataclass
class Sequences:
    """Sequences of one slice that the policy is scored on (all of this process's rows of the step), and what
    the terms reading them attached per row.

    ids / attn:  [N, P + T] left-padded prompt, then right-padded completion
    cmask:       [N, T] completion tokens that count
    fields:      per-row tensors, [N] or [N, T] (advantages, coef, ref_logprobs, ref_seq, old_logprobs,
                 sampler_logprobs, labels ...); a [N, T] field is cut with the completion columns
    info:        per-step scalars (KTO's reference point)
    parts:       row selections of the micro-batches (slices, or index tensors with train.group_by_length)
    """

    source: str  # "rollouts", or what the term that built them calls them ("targets", "pairs", "labelled")
    ids: torch.Tensor
    attn: torch.Tensor
    cmask: torch.Tensor
    temperature: float = 1.0
    fields: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, float] = field(default_factory=dict)
    parts: list = field(default_factory=list)

    def micro_batch(self, rows) -> "MicroBatch":
        return MicroBatch(self.ids[rows], self.attn[rows], self.cmask[rows], self.temperature,
                          {k: v[rows] for k, v in self.fields.items()}, self.info)

    def micro_batches(self) -> list["MicroBatch"]:
        return [self.micro_batch(p) for p in self.parts]


@dataclass
class MicroBatch:
    """One forward/backward's rows of a `Sequences` (same fields, row-sliced)."""

    ids: torch.Tensor
    attn: torch.Tensor
    cmask: torch.Tensor
    temperature: float = 1.0
    fields: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, float] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.cmask.shape[0])

    def trimmed(self) -> "MicroBatch":
        """The same rows without the completion columns that are padding in every row (the prompt side is
        trimmed by `uniapl.data.padding.trim_padding` in the update)."""
        width = int(self.cmask.sum(-1).max()) if self.cmask.numel() else 0
        cut = self.cmask.shape[1] - width
        if cut <= 0:
            return self
        per_token = {k: v[:, :width] for k, v in self.fields.items() if v.dim() == 2}
        return replace(self, ids=self.ids[:, :-cut], attn=self.attn[:, :-cut], cmask=self.cmask[:, :width],
                       fields={**self.fields, **per_token})


@dataclass
class SliceBatch:
    """One slice of one step, as the plumbing hands it to the slice's terms."""

    name: str  # "sft" | "pref"
    records: list["Record"]  # the prompts drawn for this step (this process)
    rollouts: Sequences | None = None  # the students' samples, `group_size` per record, when a term reads them
    rollout: "RolloutBatch | None" = None  # the engine's output behind `rollouts` (sampler log-probs, token ids)
    group_size: int = 0
    texts: list[str] = field(default_factory=list)  # decoded completions of the rollouts (no EOS, no think blocks)
    row_records: list["Record"] = field(default_factory=list)  # the record of each rollout row
    rewards: torch.Tensor | None = None  # [N] rewards of the rollouts (terms with needs_rewards)
    coef: torch.Tensor | None = None  # [N] discriminator coefficients in [-1, 1] (terms with needs_coefficients)
    raw: torch.Tensor | None = None  # [N] the discriminator's raw scores behind `coef`


class UpdateLog(Protocol):
    """Where a term's `loss` reports its metrics; the update reduces them over micro-batches in one place."""

    def total(self, key: str, value: float) -> None:
        """The sum over micro-batches (a loss already divided by the step's normaliser: the step's loss)."""

    def mean(self, metrics: dict[str, float], keys: tuple[str, ...], weight: float) -> None:
        """Weighted mean over micro-batches of each of `keys` present in `metrics`."""

    def extreme(self, key: str, value: float) -> None:
        """The largest (key ending in /max) or smallest (/min) value over micro-batches."""

    def concat(self, key: str, values: torch.Tensor) -> None:
        """The mean over every row the update saw (values concatenated in micro-batch order)."""


class StepContext(Protocol):
    """What the plumbing (`uniapl.training.batch.BatchBuilder`) offers a term while it prepares a step."""

    cfg: "Config"
    engine: Any  # the rollout engine (its `logprobs_match_trainer` decides the rollout correction)
    eos_ids: list[int]

    def prompt_ids(self, records: list["Record"]) -> list[list[int]]: ...

    def encode(self, prompt_ids: list[int], text: str) -> tuple[list[int], list[int]]: ...

    def pack(self, prompts: list[list[int]], completions: list[list[int]], source: str,
             parts: list | None = None) -> Sequences: ...

    def seed(self, salt: int = 0) -> int: ...

    def global_sum(self, value: float) -> float: ...

    def sequence_logprobs(self, seqs: Sequences, model: Literal["policy", "reference"]) -> torch.Tensor: ...

    def reference_samples(self, records: list["Record"], n: int, seed: int) -> list[list[str]]: ...

    def passes(self, record: "Record", text: str) -> bool: ...


Weight = float | str  # a constant, or the name of a `loss` config key (e.g. "lambda_adv")


class Term:
    """One term of the objective on one slice. Subclass it in a file of its own and register it with
    `uniapl.objective.register_term`; place it in a paradigm with `uniapl.algorithms.Paradigm`."""

    name: ClassVar[str] = ""  # the registry name paradigms use
    slices: ClassVar[tuple[str, ...]] = SLICES  # the slices it may stand on
    reads: ClassVar[str] = "rollouts"  # "rollouts" (the slice's student samples) or its own sequences (`prepare`)
    # at most one term of an exclusive group per slice (e.g. one preference objective: GRPO, DPO or KTO)
    exclusive: ClassVar[str | None] = None
    sets_group_size: ClassVar[bool] = False  # its rollouts_per_prompt decides the slice's group size (GRPO's G)
    needs_rewards: ClassVar[bool] = False  # rewards of the slice's rollouts (`SliceBatch.rewards`)
    needs_coefficients: ClassVar[bool] = False  # the discriminator's coefficients of the rollouts (`SliceBatch.coef`)
    # trained again on passes 2..K of loss.grpo.num_iterations (a term with an importance ratio to the sampler)
    iterates: ClassVar[bool] = False

    def __init__(self, cfg: "Config", paradigm: "Paradigm", slice_name: str, ctx: StepContext | None = None):
        self.cfg = cfg
        self.paradigm = paradigm
        self.slice = slice_name

    # ------------------------------------------------------------------ what it needs
    @property
    def loss_key(self) -> str:
        """Its loss in the metrics: loss/<loss_key>."""
        return self.name

    def rollouts_per_prompt(self) -> int:
        """Student samples per prompt it needs of the slice's prompts (0: none)."""
        return 0

    def reference(self) -> Literal[None, "token", "sequence"]:
        """Log-probs of its sequences under the frozen reference: per token (fields["ref_logprobs"], [N, T]) or
        summed per sequence (fields["ref_seq"], [N]); None: not needed."""
        return None

    def needs_old_logprobs(self) -> bool:
        """Log-probs of its sequences under the policy that sampled them (fields["old_logprobs"], [N, T])."""
        return False

    def check_records(self, records: list["Record"]) -> None:
        """Raise `DataError` naming a record that lacks what this term needs (before anything is written)."""

    # ------------------------------------------------------------------ the step
    def shape_rewards(self, sl: SliceBatch, metrics: dict[str, float]) -> None:
        """Change `sl.rewards` before any term prepares (Table 4's reward variants of the adversarial term)."""

    def prepare(self, sl: SliceBatch, ctx: StepContext, metrics: dict[str, float]) -> Sequences | None:
        """The sequences it trains on this step, with the per-row fields its loss needs: the slice's rollouts
        (`sl.rollouts`, fields added) or sequences of its own; None when it has nothing to train on."""
        raise NotImplementedError

    def normalizer(self, micro_batches: list[MicroBatch]) -> float:
        """Its normaliser's count over this process's micro-batches (rows, tokens, pairs ...)."""
        raise NotImplementedError

    def loss(self, logp: torch.Tensor, mb: MicroBatch, normalizer: float, log: UpdateLog) -> torch.Tensor:
        """Its loss on one micro-batch, already divided by the step's `normalizer`. logp: [rows, T] the policy's
        log-probs of mb's completion tokens (with grad)."""
        raise NotImplementedError


def token_normalizer(mode: str, micro_batches: list[MicroBatch], max_new_tokens: int) -> float:
    """Count behind `aggregate`'s modes over micro-batches: tokens (token_mean), sequences (seq_mean) or
    sequences x the rollout's max length (dr_grpo)."""
    if mode == "seq_mean":
        return sum(float(mb.rows) for mb in micro_batches)
    if mode == "token_mean":
        return sum(float(mb.cmask.sum()) for mb in micro_batches)
    return sum(float(mb.rows * max_new_tokens) for mb in micro_batches)


def resolve_weight(weight: Weight, loss_cfg: Any) -> float:
    """A term weight: a constant, or the value of the `loss` config key it names."""
    return float(getattr(loss_cfg, weight)) if isinstance(weight, str) else float(weight)


__all__ = ["SLICES", "MicroBatch", "Sequences", "SliceBatch", "StepContext", "Term", "UpdateLog", "Weight",
           "resolve_weight", "token_normalizer"]
