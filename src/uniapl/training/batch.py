"""A step's batch: the shared plumbing under the objective's terms, done once per step.

`BatchBuilder.build(step)`:
  1. draws each slice's prompts (data order depends only on (seed, step, rank): a resumed run replays them);
  2. samples every slice's student rollouts in ONE engine call (one decode loop), as many per prompt as the
     slice's terms ask for;
  3. scores the rollouts where a term needs it: rewards (`uniapl.rewards`), discriminator coefficients;
  4. lets each term shape the rewards (Table 4's variants), then prepare the sequences it trains on;
  5. computes the reference and old-policy log-probs its terms need (the one place where the frozen
     reference and the sampling policy are run);
and returns the step's groups: sequences, the (term, weight) pairs that read them, their micro-batches.
The update (`uniapl.training.trainer`) runs those. Every phase's wall time is a `time/<phase>_s` metric.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

from uniapl.algorithms import Paradigm
from uniapl.config import Config
from uniapl.data.chat import encode_prompt, encode_target, strip_think
from uniapl.data.padding import micro_slices, pack, sample_indices, trim_padding
from uniapl.data.records import Record
from uniapl.evaluation.ifeval import decode_completions
from uniapl.infra.timing import timed
from uniapl.losses import sequence_logprobs
from uniapl.models.logprobs import completion_logprobs
from uniapl.objective import SLICES, MicroBatch, Sequences, SliceBatch, Term, get_term, resolve_weight
from uniapl.rewards import Rewards
from uniapl.rollout import RolloutBatch, SamplingParams, build_engine_from_config


@dataclass
class Group:
    """Sequences of one slice and the (term, weight) pairs that train on them: one forward per micro-batch."""

    slice: str
    seqs: Sequences
    terms: list[tuple[Term, float]]
    micro_batches: list[MicroBatch] = field(default_factory=list)


@dataclass
class StepBatch:
    """What one step trains on."""

    groups: list[Group] = field(default_factory=list)
    # (record, student text) of every rollout the discriminator scored: what an online discriminator learns from
    scored: list[tuple[Record, str]] = field(default_factory=list)


class BatchBuilder:
    """Owns what a step's sequences come from: records, the rollout engine, rewards, the discriminator, the
    reference policy; and the paradigm's terms, one instance per (slice, term)."""

    def __init__(self, cfg: Config, paradigm: Paradigm, tokenizer, *, sft_records: list[Record],
                 pref_records: list[Record], eos_ids: list[int], policy_model: Callable[[], torch.nn.Module],
                 accelerator, ref_model=None, reference=None, gathered=None):
        """`policy_model()` returns the current (unwrapped) policy; `ref_model` is the frozen reference or None.
        `reference()`, if given, is a context yielding the reference to score/sample with (LoRA: the
        adapter-disabled policy); `gathered()` a context in which the policy holds its full parameters
        (sharded training; uniapl.training.distributed)."""
        self.cfg = cfg
        self.paradigm = paradigm
        self.tokenizer = tokenizer
        self.records = {"sft": sft_records, "pref": pref_records}
        self.eos_ids = eos_ids
        self.pad_id = tokenizer.pad_token_id
        self.policy_model = policy_model
        self.acc = accelerator
        self.ref_model = ref_model
        self.reference = reference or (lambda: contextlib.nullcontext(self.ref_model))
        self.has_reference = ref_model is not None or reference is not None
        self.gathered = gathered or contextlib.nullcontext
        self.batch_sizes = {"sft": sft_batch_size(cfg, paradigm), "pref": cfg.train.pref_batch_size}
        self._prompt_cache: dict[int, list[int]] = {}
        self.step_idx = 0
        self.engine = build_engine_from_config(cfg, policy_model(), eos_token_ids=eos_ids, pad_token_id=self.pad_id)
        self._ref_engine = None
        self.rewards = Rewards(cfg.reward)
        self.discriminator = None
        if paradigm.uses_discriminator:
            from uniapl.discriminators import build_discriminator

            self.discriminator = build_discriminator(cfg.discriminator)
        # one instance per (slice, term), with its weight resolved against the loss config
        self.terms: dict[str, list[tuple[Term, float]]] = {
            s: [(get_term(name)(cfg, paradigm, s, self), resolve_weight(w, cfg.loss))
                for name, w in paradigm.slice_terms(s)]
            for s in SLICES}

    def term(self, slice_name: str, name: str) -> Term:
        return next(t for t, _ in self.terms[slice_name] if t.name == name)

    # ------------------------------------------------------------------ the step
    def build(self, step: int, metrics: dict[str, float]) -> StepBatch:
        self.step_idx = step
        out = StepBatch()
        slices = {s: self._draw(s, salt) for salt, s in enumerate(SLICES, start=1) if self.terms[s]}
        requests = {s: (self.prompt_ids(sl.records), self.group_size(s))
                    for s, sl in slices.items() if self.group_size(s)}
        for s, batch in self._rollout_all(requests, metrics).items():
            self._score_rollouts(slices[s], batch, metrics, out)
        for sl in slices.values():
            out.groups += self._groups(sl, metrics)
        return out

    def group_size(self, slice_name: str) -> int:
        """Rollouts per prompt of a slice: the group size a term sets (GRPO's G), else the most any term asks."""
        terms = [t for t, _ in self.terms[slice_name] if t.rollouts_per_prompt()]
        fixed = [t.rollouts_per_prompt() for t in terms if t.sets_group_size]
        return fixed[0] if fixed else max((t.rollouts_per_prompt() for t in terms), default=0)

    def update_discriminator(self, batch: StepBatch, metrics: dict[str, float]) -> None:
        """A learned discriminator learns from the teacher answers against the step's scored rollouts."""
        if self.discriminator is None or not batch.scored:
            return
        teach = [(r, t) for r, t in batch.scored if r.teacher is not None]
        if teach:
            with timed(metrics, "discriminator"):
                dm = self.discriminator.update([r.prompt for r, _ in teach], [r.teacher for r, _ in teach],
                                               [t for _, t in teach])
            metrics.update(dm or {})

    # ------------------------------------------------------------------ what terms use (StepContext)
    def prompt_ids(self, records: list[Record]) -> list[list[int]]:
        out = []
        for r in records:
            key = id(r)
            if key not in self._prompt_cache:
                self._prompt_cache[key] = encode_prompt(self.tokenizer, r, enable_thinking=self.cfg.model.enable_thinking,
                                                        max_tokens=self.cfg.data.max_prompt_tokens)
            out.append(self._prompt_cache[key])
        return out

    def encode(self, prompt_ids: list[int], text: str) -> tuple[list[int], list[int]]:
        """(prompt ids, completion ids) of a target answer (`uniapl.data.chat.encode_target`)."""
        cfg = self.cfg
        return encode_target(self.tokenizer, prompt_ids, text, eos_id=self._eos, think_prefix=cfg.model.think_prefix,
                             mask_think_prefix=cfg.loss.mask_think_prefix, max_tokens=cfg.data.max_response_tokens)

    def pack(self, prompts: list[list[int]], completions: list[list[int]], source: str,
             parts: list | None = None) -> Sequences:
        """Sequences of (prompt, completion) token lists, split into micro-batches (`parts`, by default
        train.gradient_accumulation_steps of them, length-grouped with train.group_by_length)."""
        ids, attn, cmask = pack(prompts, completions, self.pad_id)
        return Sequences(source, ids, attn, cmask, parts=parts if parts is not None else self._micro_batches(attn.sum(-1)))

    def seed(self, salt: int = 0) -> int:
        return self.cfg.seed * 1_000_003 + self.step_idx * 7919 + self.acc.process_index * 131 + salt

    def global_sum(self, value: float) -> float:
        if self.acc.num_processes == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.acc.device)
        return float(self.acc.reduce(t, reduction="sum").item())

    def sequence_logprobs(self, seqs: Sequences, model: Literal["policy", "reference"]) -> torch.Tensor:
        """[rows] summed completion log-probs of `seqs` under the policy or the frozen reference (no grad)."""
        if model == "reference":
            with self.reference() as ref:
                return self._score(ref, seqs)[1]
        with self.gathered():
            return self._score(self.policy_model(), seqs)[1]

    def passes(self, record: Record, text: str) -> bool:
        """Does `text` pass every verification function of `record` (strict or loose as reward.mode)?"""
        from uniapl.verifiers import verifiable_reward, verify

        v = verify(text, record.instruction_id_list, record.kwargs, prompt=record.prompt_text())
        return verifiable_reward(v, mode=self.cfg.reward.mode, partial=False) >= 1.0

    def reference_samples(self, records: list[Record], n: int, seed: int) -> list[list[str]]:
        """n answers per record sampled from the frozen reference policy (for building preference pairs)."""
        prompts = [pr for pr in self.prompt_ids(records) for _ in range(n)]
        with self.reference() as ref:  # LoRA: the adapter-disabled policy (merged_state_dict gives its base weights)
            if self._ref_engine is None:
                # an engine with its own weight copy (vLLM) samples the reference after a sync (every rollout
                # syncs the policy back first); a second in-process vLLM would need a second KV cache
                self._ref_engine = self.engine if getattr(self.engine, "holds_weights", False) else build_engine_from_config(
                    self.cfg, ref, eos_token_ids=self.eos_ids, pad_token_id=self.pad_id)
            self._ref_engine.sync_weights(ref)
            batch = self._ref_engine.generate(prompts, self._sampling(seed))
        texts = decode_completions(self.tokenizer, batch.completion_ids, batch.completion_mask, self.eos_ids)
        return [texts[i * n:(i + 1) * n] for i in range(len(records))]

    # ------------------------------------------------------------------ helpers
    @property
    def _eos(self) -> int:
        return self.eos_ids[0] if self.tokenizer.eos_token_id is None else self.tokenizer.eos_token_id

    def _rng(self, salt: int) -> random.Random:
        # data order and sampling depend only on (seed, step, rank): a resumed run replays the same batches
        return random.Random(hash((self.cfg.seed, self.step_idx, self.acc.process_index, salt)))

    def _sampling(self, seed: int) -> SamplingParams:
        rc = self.cfg.rollout
        return SamplingParams(max_new_tokens=rc.max_new_tokens, temperature=rc.temperature, top_p=rc.top_p,
                              top_k=rc.top_k, num_samples=1, seed=seed)

    def _micro_batches(self, lengths: torch.Tensor) -> list:
        """Row selections of a slice's micro-batches: contiguous slices, or with train.group_by_length index
        tensors of rows sorted by length (each micro-batch then pads only to its own longest row)."""
        parts = micro_slices(lengths.shape[0], self.cfg.train.gradient_accumulation_steps)
        if not self.cfg.train.group_by_length:
            return parts
        order = torch.argsort(lengths, stable=True)
        return [order[sl] for sl in parts]

    def _temperature(self) -> float:
        return self.cfg.rollout.temperature if self.cfg.rollout.temperature > 0 else 1.0

    def _draw(self, slice_name: str, salt: int) -> SliceBatch:
        """The slice's prompts of this step: a function of (seed, step, rank, slice) only."""
        pool = self.records[slice_name]
        drawn = sample_indices(len(pool), self.batch_sizes[slice_name], self._rng(salt))
        return SliceBatch(slice_name, [pool[i] for i in drawn])

    def _groups(self, sl: SliceBatch, metrics: dict[str, float]) -> list[Group]:
        """The slice's terms shape its rewards, then prepare what they train on; terms that read the same
        sequences (GRPO and the adversarial term on the same rollouts) share one group, so one forward."""
        for term, _ in self.terms[sl.name]:
            term.shape_rewards(sl, metrics)
        groups: list[Group] = []
        for term, weight in self.terms[sl.name]:
            seqs = term.prepare(sl, self, metrics)
            if seqs is None:
                continue
            group = next((g for g in groups if g.seqs is seqs), None)
            if group is None:
                groups.append(Group(sl.name, seqs, [(term, weight)]))
            else:
                group.terms.append((term, weight))
        for group in groups:
            self._reference_and_old(group, metrics)
            group.micro_batches = group.seqs.micro_batches()
        return groups

    def _rollout_all(self, requests: dict[str, tuple[list[list[int]], int]],
                     metrics: dict[str, float]) -> dict[str, RolloutBatch]:
        """All of a step's rollouts (every slice's prompts) in ONE engine call: one decode loop."""
        if not requests:
            return {}
        expanded, spans, start = [], {}, 0
        for name, (prompts, g) in requests.items():
            expanded.extend(p for p in prompts for _ in range(g))
            spans[name] = (slice(start, start + len(prompts) * g), g)
            start += len(prompts) * g
        with timed(metrics, "rollout"):
            with self.gathered():
                self.engine.sync_weights(self.policy_model())
                batch = self.engine.generate(expanded, self._sampling(self.seed()))
        metrics["rollout/tokens"] = float(batch.completion_mask.sum())
        out = {}
        for name, (sl, g) in spans.items():
            part = batch.rows(sl)
            part.num_samples = g
            out[name] = part
        return out

    def _score_rollouts(self, sl: SliceBatch, batch: RolloutBatch, metrics: dict[str, float], out: StepBatch) -> None:
        """The slice's rollouts as sequences, with rewards and discriminator coefficients where terms need them."""
        g = batch.num_samples
        sl.rollout, sl.group_size = batch, g
        sl.row_records = [r for r in sl.records for _ in range(g)]
        sl.texts = decode_completions(self.tokenizer, batch.completion_ids, batch.completion_mask, self.eos_ids)
        ids, attn = batch.sequences()
        sl.rollouts = Sequences("rollouts", ids, attn, batch.completion_mask, temperature=self._temperature(),
                                parts=self._micro_batches(attn.sum(-1)))
        terms = [t for t, _ in self.terms[sl.name]]
        if any(t.needs_rewards for t in terms):
            with timed(metrics, "reward"):
                # the IFEval verifier and/or reward.functions, NaN-aware weighted sum; rewards/<name>/mean|std as TRL
                token_ids = [c[m.bool()].tolist() for c, m in zip(batch.completion_ids.cpu(), batch.completion_mask.cpu())]
                sl.rewards, reward_metrics = self.rewards(sl.row_records, sl.texts, token_ids, step=self.step_idx)
            metrics.update(reward_metrics)  # "reward": the total's mean (the IF pass rate with the verifier alone)
        if any(t.needs_coefficients for t in terms):
            sl.coef, sl.raw, dm = self._coefficients(sl.records, sl.texts, g, metrics)
            # the discriminator's adv/* metrics of a slice with rewards (GRPO's) carry no suffix, as logged so far
            suffix = "" if sl.rewards is not None else f"_{sl.name}"
            metrics.update({f"{k}{suffix}" if k.startswith("adv/") else k: v for k, v in dm.items()})
            metrics[f"adv/coef_mean_{sl.name}"] = float(sl.coef.mean())
            out.scored += list(zip(sl.row_records, sl.texts))

    def _coefficients(self, records: list[Record], texts: list[str], reps: int, metrics: dict[str, float]
                      ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        prompts = [r.prompt for r in records for _ in range(reps)]
        # the reference answers as the student's are judged: without think blocks (the paper's SFT targets
        # start with the empty one; the student's rollouts are decoded without it)
        teachers = [None if r.teacher is None else strip_think(r.teacher) for r in records for _ in range(reps)]
        gts = [None if r.ground_truth is None else strip_think(r.ground_truth) for r in records for _ in range(reps)]
        with timed(metrics, "discriminator"):
            coef, raw, dm = self.discriminator.coefficients(prompts, texts, teachers=teachers, ground_truths=gts)
        return coef.float(), raw.float(), dm

    def _reference_and_old(self, group: Group, metrics: dict[str, float]) -> None:
        """The log-probs of the group's sequences that its terms need, under the frozen reference (per token or
        per sequence) and under the policy that sampled them."""
        forms = {t.reference() for t, _ in group.terms} - {None}
        old = any(t.needs_old_logprobs() for t, _ in group.terms)
        if not forms and not old:
            return
        seqs = group.seqs
        with timed(metrics, "ref_old_logprobs"):
            if forms:
                with self.reference() as ref:
                    tokens, sums = self._score(ref, seqs)
                if "token" in forms:
                    seqs.fields["ref_logprobs"] = tokens
                if "sequence" in forms:
                    seqs.fields["ref_seq"] = sums
            if old:
                with self.gathered():
                    seqs.fields["old_logprobs"], _ = self._score(self.policy_model(), seqs)

    @torch.no_grad()
    def _score(self, model, seqs: Sequences) -> tuple[torch.Tensor, torch.Tensor]:
        """([N, T] log-probs of `seqs`' completion tokens, [N] their sums) under `model`, no grad: the one place
        where a model other than the update's forward scores sequences. It runs the update's micro-batches,
        trimmed as the update trims them, so that its memory is bounded like the update's and its values are
        the update's own (same shapes, same kernels: at step 0 the reference's log-probs are the policy's)."""
        tokens = torch.zeros(seqs.cmask.shape, dtype=torch.float32)
        sums = torch.zeros(seqs.cmask.shape[0], dtype=torch.float32)
        for part in seqs.parts:
            mb = seqs.micro_batch(part).trimmed()
            ids, attn = trim_padding(mb.ids, mb.attn, mb.cmask.shape[1])
            cmask = mb.cmask.to(self.acc.device)
            lp = completion_logprobs(model, ids.to(self.acc.device), attn.to(self.acc.device), cmask.shape[1],
                                     temperature=seqs.temperature)
            tokens[part, : lp.shape[1]] = lp.float().cpu()
            sums[part] = sequence_logprobs(lp, cmask).float().cpu()
        return tokens, sums


def sft_batch_size(cfg: Config, p: Paradigm) -> int:
    """Expert rows per step: train.sft_batch_size, or for CHORD with loss.chord.expert_share = s,
    round(s / (1 - s) * on-policy rows) so that expert rows are a share s of all rows (at least 1)."""
    share = cfg.loss.chord.expert_share
    if p.weighting == "chord_mu" and share is not None and p.uses_pref_slice:
        terms = [get_term(name)(cfg, p, "pref") for name in p.term_names("pref")]
        group = next((t.rollouts_per_prompt() for t in terms if t.sets_group_size), 1)
        return max(1, round(share / (1.0 - share) * cfg.train.pref_batch_size * group))
    return cfg.train.sft_batch_size
