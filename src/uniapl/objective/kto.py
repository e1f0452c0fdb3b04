"""The KTO term (paper appendix A.4.2) on desirable / undesirable answers of the preference slice's prompts.

    L_KTO = (1/N) sum_i w(y_i) (1 - v_i),   r_i = log pi(y_i|x_i) - log ref(y_i|x_i)
    desirable:   v = sigmoid(beta (r - z)),   w = loss.kto.desirable_weight
    undesirable: v = sigmoid(beta (z - r)),   w = loss.kto.undesirable_weight

z = max(0, mean(log pi - log ref)) over MISMATCHED pairs (prompt i with the answer of row i + 1), over every
process's rows, detached. Answers come from the records (completion/label or chosen/rejected) or are built
like DPO's pairs (`uniapl.data.pairs`).
"""

from __future__ import annotations

import torch

from uniapl.data.loaders import validate_specs
from uniapl.data.pairs import PairBuilder
from uniapl.infra.timing import timed
from uniapl.losses import kto_loss, kto_reference_point, sequence_logprobs
from uniapl.objective import register_term
from uniapl.objective.base import MicroBatch, Sequences, SliceBatch, StepContext, Term, UpdateLog


@register_term
class KTO(Term):
    name = "kto"
    slices = ("pref",)
    reads = "labelled"
    exclusive = "preference"

    def __init__(self, cfg, paradigm, slice_name, ctx=None):
        super().__init__(cfg, paradigm, slice_name, ctx)
        self.pairs = None if ctx is None else PairBuilder.from_config(cfg, ctx)

    def reference(self):
        return "sequence"

    def check_records(self, records) -> None:
        # data.pairs.source=data: a record's completion/label or chosen/rejected, checked as each is drawn
        if self.cfg.data.pairs.source != "data":  # answers are built from verifiers where the data has none
            validate_specs(records)

    def prepare(self, sl: SliceBatch, ctx: StepContext, metrics: dict[str, float]) -> Sequences | None:
        """Desirable rows first, then undesirable; z from mismatched (prompt, answer of the next row) pairs."""
        with timed(metrics, "pairs"):
            labelled = self.pairs.labelled(sl.records, ctx.seed(17))
        rows = [(pr, text, lab) for pr, answers in zip(ctx.prompt_ids(sl.records), labelled) for text, lab in answers]
        rows.sort(key=lambda x: not x[2])  # stable: desirable block, then undesirable block
        metrics["kto/desirable"] = float(sum(lab for _, _, lab in rows))
        metrics["kto/undesirable"] = float(sum(not lab for _, _, lab in rows))
        n = len(rows)
        local_sum = 0.0
        seqs = None
        if rows:
            enc = [ctx.encode(pr, text) for pr, text, _ in rows]
            seqs = ctx.pack([a for a, _ in enc], [b for _, b in enc], "labelled")
            seqs.fields["labels"] = torch.tensor([lab for _, _, lab in rows], dtype=torch.bool)
            with timed(metrics, "ref_old_logprobs"):
                mism = [(rows[i][0], enc[(i + 1) % n][1]) for i in range(n)]
                mismatched = ctx.pack([a for a, _ in mism], [b for _, b in mism], "mismatched")
                diff = ctx.sequence_logprobs(mismatched, "policy") - ctx.sequence_logprobs(mismatched, "reference")
            local_sum = float(diff.sum())
        total, count = ctx.global_sum(local_sum), ctx.global_sum(float(n))  # every process, rows or not
        z = kto_reference_point(torch.tensor([total / max(count, 1.0)]), torch.zeros(1))
        metrics["kto/kl"] = z
        if seqs is not None:
            seqs.info["kto_z"] = z
        return seqs

    def normalizer(self, micro_batches: list[MicroBatch]) -> float:
        return sum(float(mb.rows) for mb in micro_batches)

    def loss(self, logp: torch.Tensor, mb: MicroBatch, normalizer: float, log: UpdateLog) -> torch.Tensor:
        seq = sequence_logprobs(logp, mb.cmask)
        labels = mb.fields["labels"].to(seq.device)
        k = self.cfg.loss.kto
        loss, m = kto_loss(seq, mb.fields["ref_seq"].to(seq.device), labels, kl=mb.info["kto_z"], beta=k.beta,
                           desirable_weight=k.desirable_weight, undesirable_weight=k.undesirable_weight,
                           normalizer=normalizer)
        log.mean(m, ("rewards/chosen",), float(labels.sum()))
        log.mean(m, ("rewards/rejected",), float((~labels).sum()))
        return loss
