"""Preference data for DPO and KTO: from the records, or built from what instruction-following data has.

Records may carry a chosen/rejected pair (DPO) or a labelled answer (KTO). Instruction-following data
usually has neither, but it has verification functions, reference answers (ground truth, teacher) and
a starting policy, which is enough (`data.pairs.source`):

* chosen   = the first reference answer that passes the verifiers, `loss.sft_target` first, then the
             other one; else a passing sample of the reference policy;
* rejected = a sample of the reference (starting, frozen) policy that fails the verifiers, the usual
             on-policy negative; else the teacher's answer when it fails; else the record has no pair
             and is left out of the step.
KTO uses the same material unpaired: chosen is desirable, rejected undesirable. A record's own
`completion`/`label` (KTO) or `chosen`/`rejected` always win when `source` is "auto" or "data".

Pairs are built lazily, once per record (cached), when a step first draws it: the cost is
`num_samples` reference-policy samples per new prompt, and only for prompts the run uses.
"""

from __future__ import annotations

from typing import Callable, Sequence

from uniapl.data.jsonl import DataError
from uniapl.data.records import Record

# sample_fn(records, n, seed) -> n sampled answers per record (reference policy)
SampleFn = Callable[[Sequence[Record], int, int], list[list[str]]]
# passes_fn(record, answer) -> does the answer pass every verification function of the record
PassesFn = Callable[[Record, str], bool]


def data_pair(r: Record) -> tuple[str, str] | None:
    """The record's own (chosen, rejected), if it has both."""
    return (r.chosen, r.rejected) if (r.chosen is not None and r.rejected is not None) else None


def data_labelled(r: Record) -> list[tuple[str, bool]]:
    """The record's own labelled answers: completion/label, else chosen (True) / rejected (False)."""
    if r.completion is not None and r.label is not None:
        return [(r.completion, bool(r.label))]
    out = []
    if r.chosen is not None:
        out.append((r.chosen, True))
    if r.rejected is not None:
        out.append((r.rejected, False))
    return out


class PairBuilder:
    """(chosen, rejected) per record: from the data, or built from verifiers + reference-policy samples."""

    def __init__(self, *, source: str, sample_fn: SampleFn, passes_fn: PassesFn, prefer: str = "teacher",
                 num_samples: int = 4):
        if source not in ("auto", "data", "build"):
            raise ValueError(f"pairs source must be auto, data or build, got {source!r}")
        self.source = source
        self.sample_fn = sample_fn
        self.passes_fn = passes_fn
        self.order = (prefer, "teacher" if prefer == "ground_truth" else "ground_truth")
        self.num_samples = num_samples
        self._cache: dict[int, tuple[str, str] | None] = {}
        self.stats = {"built": 0, "from_data": 0, "no_pair": 0}

    @classmethod
    def from_config(cls, cfg, ctx) -> "PairBuilder":
        """The builder `data.pairs` describes, sampling the reference policy and verifying through `ctx` (a step's
        plumbing: `reference_samples`, `passes`); chosen answers prefer `loss.sft_target`."""
        return cls(source=cfg.data.pairs.source, sample_fn=ctx.reference_samples, passes_fn=ctx.passes,
                   prefer=cfg.loss.sft_target, num_samples=cfg.data.pairs.num_samples)

    def _can_build(self, r: Record) -> bool:
        return bool(r.instruction_id_list)

    def pairs(self, records: Sequence[Record], seed: int) -> list[tuple[str, str] | None]:
        """One entry per record: (chosen, rejected), or None when no pair can be made for it."""
        todo = []
        for r in records:
            if id(r) in self._cache:
                continue
            own = data_pair(r) if self.source != "build" else None
            if own is not None:
                self._cache[id(r)] = own
                self.stats["from_data"] += 1
            elif self.source == "data":
                raise DataError(f"{r.source}: record lacks 'chosen'/'rejected', which DPO needs (data.pairs.source=data)")
            elif not self._can_build(r):
                raise DataError(f"{r.source}: record has no chosen/rejected pair and no 'instruction_id_list' to build "
                                "one from (data.pairs.source=auto|build needs verification functions)")
            else:
                todo.append(r)
        if todo:
            samples = self.sample_fn(todo, self.num_samples, seed)
            for r, texts in zip(todo, samples):
                pair = self._build(r, texts)
                self._cache[id(r)] = pair
                self.stats["built" if pair else "no_pair"] += 1
        return [self._cache[id(r)] for r in records]

    def labelled(self, records: Sequence[Record], seed: int) -> list[list[tuple[str, bool]]]:
        """Per record, its labelled answers for KTO: its own, else the built pair unpaired."""
        out: list[list[tuple[str, bool]] | None] = [None] * len(records)
        need = []
        for i, r in enumerate(records):
            own = data_labelled(r) if self.source != "build" else []
            if own:
                out[i] = own
            elif self.source == "data":
                raise DataError(f"{r.source}: record lacks 'completion'/'label' (or chosen/rejected), which KTO needs "
                                "(data.pairs.source=data)")
            else:
                need.append(i)
        if need:
            pairs = self.pairs([records[i] for i in need], seed)
            for i, p in zip(need, pairs):
                out[i] = [(p[0], True), (p[1], False)] if p else []
        return [o or [] for o in out]

    def _build(self, r: Record, samples: list[str]) -> tuple[str, str] | None:
        chosen = None
        for field in self.order:
            text = getattr(r, field)
            if text is not None and self.passes_fn(r, text):
                chosen = text
                break
        verdicts = [(s, self.passes_fn(r, s)) for s in samples]
        if chosen is None:
            chosen = next((s for s, ok in verdicts if ok), None)
        rejected = next((s for s, ok in verdicts if not ok), None)
        if rejected is None and r.teacher is not None and not self.passes_fn(r, r.teacher):
            rejected = r.teacher
        if chosen is None or rejected is None or chosen == rejected:
            return None
        return chosen, rejected
