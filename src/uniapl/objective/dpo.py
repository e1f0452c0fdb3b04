"""The DPO term (paper appendix A.4.1) on chosen/rejected pairs of the preference slice's prompts.

    L_DPO = -(1/N_pairs) sum_pairs log sigmoid(beta [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))])

with sequence log-probs summed over completion tokens. Pairs come from the records (chosen/rejected) or are
built from verifiers and samples of the frozen reference (`data.pairs`, `uniapl.data.pairs`).
"""

from __future__ import annotations

import torch

from uniapl.data.loaders import require, validate_specs
from uniapl.data.padding import micro_slices
from uniapl.data.pairs import PairBuilder
from uniapl.infra.timing import timed
from uniapl.losses import dpo_loss, sequence_logprobs
from uniapl.objective import register_term
from uniapl.objective.base import MicroBatch, Sequences, SliceBatch, StepContext, Term, UpdateLog


@register_term
class DPO(Term):
    name = "dpo"
    slices = ("pref",)
    reads = "pairs"
    exclusive = "preference"

    def __init__(self, cfg, paradigm, slice_name, ctx=None):
        super().__init__(cfg, paradigm, slice_name, ctx)
        self.pairs = None if ctx is None else PairBuilder.from_config(cfg, ctx)

    def reference(self):
        return "sequence"

    def check_records(self, records) -> None:
        if self.cfg.data.pairs.source == "data":
            require(records, ["chosen", "rejected"], f"algorithm '{self.cfg.algorithm}' (data.pairs.source=data)")
        else:  # pairs are built from verifiers where the data has none
            validate_specs(records)

    def prepare(self, sl: SliceBatch, ctx: StepContext, metrics: dict[str, float]) -> Sequences | None:
        """Rows interleaved [chosen_0, rejected_0, chosen_1, ...]; a micro-batch never splits a pair."""
        with timed(metrics, "pairs"):
            pairs = self.pairs.pairs(sl.records, ctx.seed(17))
        keep = [(pr, pair) for pr, pair in zip(ctx.prompt_ids(sl.records), pairs) if pair is not None]
        metrics["dpo/pairs"] = float(len(keep))
        if not keep:
            return None
        enc = [ctx.encode(pr, text) for pr, pair in keep for text in pair]
        pair_parts = micro_slices(len(keep), self.cfg.train.gradient_accumulation_steps)
        parts = [slice(2 * p.start, 2 * p.stop) for p in pair_parts]
        return ctx.pack([a for a, _ in enc], [b for _, b in enc], "pairs", parts=parts)

    def normalizer(self, micro_batches: list[MicroBatch]) -> float:
        return sum(float(mb.rows // 2) for mb in micro_batches)

    def loss(self, logp: torch.Tensor, mb: MicroBatch, normalizer: float, log: UpdateLog) -> torch.Tensor:
        seq = sequence_logprobs(logp, mb.cmask)
        ref = mb.fields["ref_seq"].to(seq.device)
        loss, m = dpo_loss(seq[0::2], seq[1::2], ref[0::2], ref[1::2], beta=self.cfg.loss.dpo.beta,
                           normalizer=normalizer)
        log.mean(m, ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"), seq.shape[0] / 2)
        return loss
