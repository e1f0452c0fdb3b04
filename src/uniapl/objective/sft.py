"""The SFT term: negative log-likelihood of the expert answer (`loss.sft_target`: teacher or ground truth).

    L_SFT = -(1/N) sum_i sum_t w_it log pi(y_it | x_i, y_i,<t),   w = 1, or CHORD-phi's stopgrad(p (1 - p))

CHORD's phi token weighting is this term's option: on in paradigms weighted by CHORD's mu schedule when
`loss.chord.phi` is true. N follows `loss.grpo.aggregation` over the step's expert tokens (or rows).
"""

from __future__ import annotations

import torch

from uniapl.data.loaders import require
from uniapl.losses import chord_sft_loss
from uniapl.objective import register_term
from uniapl.objective.base import MicroBatch, Sequences, SliceBatch, StepContext, Term, UpdateLog, token_normalizer


@register_term
class SFT(Term):
    name = "sft"
    slices = ("sft",)
    reads = "targets"

    def __init__(self, cfg, paradigm, slice_name, ctx=None):
        super().__init__(cfg, paradigm, slice_name, ctx)
        self.phi = paradigm.weighting == "chord_mu" and cfg.loss.chord.phi
        self.aggregation = cfg.loss.grpo.aggregation

    def check_records(self, records) -> None:
        target = self.cfg.loss.sft_target
        require(records, [target], f"algorithm '{self.cfg.algorithm}' (SFT target loss.sft_target={target})")

    def prepare(self, sl: SliceBatch, ctx: StepContext, metrics: dict[str, float]) -> Sequences:
        prompts = ctx.prompt_ids(sl.records)
        targets = [getattr(r, self.cfg.loss.sft_target) for r in sl.records]
        pairs = [ctx.encode(pr, t) for pr, t in zip(prompts, targets)]
        seqs = ctx.pack([a for a, _ in pairs], [b for _, b in pairs], "targets")
        metrics["sft/target_length"] = float(seqs.cmask.sum(-1).float().mean())
        metrics["sft/rows"] = float(len(sl.records))
        return seqs

    def normalizer(self, micro_batches: list[MicroBatch]) -> float:
        return token_normalizer(self.aggregation, micro_batches, self.cfg.rollout.max_new_tokens)

    def loss(self, logp: torch.Tensor, mb: MicroBatch, normalizer: float, log: UpdateLog) -> torch.Tensor:
        loss, m = chord_sft_loss(logp, mb.cmask, phi=self.phi, aggregation=self.aggregation, normalizer=normalizer)
        log.mean(m, ("chord/phi_mean",), float(mb.cmask.sum()))
        return loss
