"""A step's sequences, slice by slice: records -> rollouts, rewards, discriminator scores, pairs -> jobs.

`JobBuilder.build(step)` turns the paradigm's terms (`uniapl.algorithms`) into micro-batch `Job`s that the
trainer's update loop (`uniapl.trainer`) runs forward/backward:
  * expert sequences of the SFT slice (prompt + teacher/ground-truth answer)      -> "sft"      (L_SFT)
  * student rollouts on the SFT prompts, scored by the discriminator              -> "adv_sft"  (L_ADV | SFT slice)
  * G student rollouts per preference prompt, with verifiable rewards             -> "pref"     (L_GRPO, + L_ADV)
  * chosen/rejected pairs or labelled answers of the preference prompts           -> "dpo" / "kto"
    (+ student rollouts on those prompts for L_ADV | pref slice                    -> "adv_pref")
All of a step's rollouts go through ONE engine call (one decode loop). Data order and sampling depend only
on (seed, step, rank), so a resumed run replays the same batches. Every phase's wall time is reported as a
`time/<phase>_s` metric (benchmarks/step_phases.py reads them).
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from uniapl.algorithms import Paradigm
from uniapl.batching import micro_slices, pack, sample_indices, trim_padding
from uniapl.config import Config
from uniapl.data.chat import encode_prompt, encode_target, strip_think
from uniapl.data.records import Record
from uniapl.evaluation import decode_completions
from uniapl.logprobs import completion_logprobs
from uniapl.losses import group_advantages, kto_reference_point, sequence_logprobs
from uniapl.preference import PairBuilder
from uniapl.rewards import Rewards
from uniapl.rollout import RolloutBatch, SamplingParams, build_engine_from_config

JOB_KINDS = ("sft", "adv_sft", "pref", "adv_pref", "dpo", "kto")


@dataclass
class Job:
    """One micro-batch forward/backward: a kind of sequence and what its loss needs."""

    kind: str  # one of JOB_KINDS
    ids: torch.Tensor
    attn: torch.Tensor
    cmask: torch.Tensor
    temperature: float = 1.0
    coef: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    ref_seq: torch.Tensor | None = None  # dpo/kto: [rows] reference sequence log-probs
    labels: torch.Tensor | None = None  # kto: [rows] bool, True = desirable
    sampler_logprobs: torch.Tensor | None = None  # pref: [rows, T] the engine's, when rollout correction is on

    def trimmed(self) -> "Job":
        """The same job without the completion columns that are padding in every row (the prompt side is
        trimmed by `batching.trim_padding` in the update)."""
        width = int(self.cmask.sum(-1).max()) if self.cmask.numel() else 0
        cut = self.cmask.shape[1] - width
        if cut <= 0:
            return self
        per_token = {name: getattr(self, name)[:, :width] for name in
                     ("cmask", "old_logprobs", "ref_logprobs", "sampler_logprobs") if getattr(self, name) is not None}
        return replace(self, ids=self.ids[:, :-cut], attn=self.attn[:, :-cut], **per_token)


@dataclass
class StepJobs:
    """What one step trains on."""

    jobs: list[Job] = field(default_factory=list)
    # (record, student text) of every rollout the discriminator scored: what an online discriminator learns from
    scored: list[tuple[Record, str]] = field(default_factory=list)
    kto_z: torch.Tensor | float = 0.0  # KTO's reference point for this step (all processes)


@contextlib.contextmanager
def timed(metrics: dict[str, float], phase: str):
    """Adds the block's wall time to metrics[f"time/{phase}_s"]."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        key = f"time/{phase}_s"
        metrics[key] = metrics.get(key, 0.0) + time.perf_counter() - t0


class JobBuilder:
    """Owns what a step's sequences come from: records, the rollout engine, the reference policy, the
    discriminator, the preference-pair builder."""

    def __init__(self, cfg: Config, paradigm: Paradigm, tokenizer, *, sft_records: list[Record],
                 pref_records: list[Record], eos_ids: list[int], policy_model: Callable[[], torch.nn.Module],
                 accelerator, ref_model=None, reference=None, gathered=None):
        """`policy_model()` returns the current (unwrapped) policy; `ref_model` is the frozen reference or None.
        `reference()`, if given, is a context yielding the reference to score/sample with (LoRA: the
        adapter-disabled policy); `gathered()` a context in which the policy holds its full parameters
        (sharded training; uniapl.distributed)."""
        self.cfg = cfg
        self.paradigm = paradigm
        self.tokenizer = tokenizer
        self.sft_records = sft_records
        self.pref_records = pref_records
        self.eos_ids = eos_ids
        self.pad_id = tokenizer.pad_token_id
        self.policy_model = policy_model
        self.acc = accelerator
        self.ref_model = ref_model
        self.reference = reference or (lambda: contextlib.nullcontext(self.ref_model))
        self.has_reference = ref_model is not None or reference is not None
        self.gathered = gathered or contextlib.nullcontext
        self.sft_batch_size = sft_batch_size(cfg, paradigm)
        self._prompt_cache: dict[int, list[int]] = {}
        self.step_idx = 0
        self.engine = build_engine_from_config(cfg, policy_model(), eos_token_ids=eos_ids, pad_token_id=self.pad_id)
        self._ref_engine = None
        isc = cfg.rollout.importance_sampling.correction
        # the built-in engine's log-probs are the trainer's own (tests/core/test_logprobs_and_sampler.py)
        self.importance_correction = (not getattr(self.engine, "logprobs_match_trainer", False)) if isc == "auto" else isc
        self.pairs = None
        if paradigm.offline_preference:
            self.pairs = PairBuilder(source=cfg.data.pairs.source, sample_fn=self._reference_samples,
                                     passes_fn=self._passes, prefer=cfg.loss.sft_target,
                                     num_samples=cfg.data.pairs.num_samples)
        self.rewards = Rewards(cfg.reward)
        self.discriminator = None
        if paradigm.uses_discriminator:
            from uniapl.discriminators import build_discriminator

            self.discriminator = build_discriminator(cfg.discriminator)

    # ------------------------------------------------------------------ the step
    def build(self, step: int, metrics: dict[str, float]) -> StepJobs:
        cfg, p = self.cfg, self.paradigm
        self.step_idx = step
        out = StepJobs()
        sft_recs: list[Record] = []
        pref_recs: list[Record] = []
        requests: dict[str, tuple[list[list[int]], int]] = {}
        if p.uses_sft_slice:
            sft_recs = [self.sft_records[i] for i in sample_indices(len(self.sft_records), self.sft_batch_size, self._rng(1))]
            if "adv" in p.sft_terms:
                requests["sft"] = (self._prompt_ids(sft_recs), cfg.rollout.adv_num_generations)
        if p.uses_pref_slice:
            pref_recs = [self.pref_records[i] for i in sample_indices(len(self.pref_records), cfg.train.pref_batch_size, self._rng(2))]
            if p.online:
                requests["pref"] = (self._prompt_ids(pref_recs), cfg.rollout.num_generations)
            elif "adv" in p.pref_terms:
                requests["adv_pref"] = (self._prompt_ids(pref_recs), cfg.rollout.adv_num_generations)
        rollouts = self._rollout_all(requests, metrics)
        if p.uses_sft_slice:
            out.jobs += self._sft_jobs(sft_recs, rollouts, metrics, out)
        if p.online:
            out.jobs += self._grpo_jobs(pref_recs, rollouts["pref"], metrics, out)
        elif p.pref_main == "dpo":
            out.jobs += self._dpo_jobs(pref_recs, metrics)
        elif p.pref_main == "kto":
            out.jobs += self._kto_jobs(pref_recs, metrics, out)
        if "adv_pref" in rollouts:
            out.jobs += self._adv_jobs("adv_pref", pref_recs, rollouts["adv_pref"], cfg.rollout.adv_num_generations,
                                       metrics, out)
        return out

    # ------------------------------------------------------------------ helpers
    @property
    def _eos(self) -> int:
        return self.eos_ids[0] if self.tokenizer.eos_token_id is None else self.tokenizer.eos_token_id

    def _prompt_ids(self, records: list[Record]) -> list[list[int]]:
        out = []
        for r in records:
            key = id(r)
            if key not in self._prompt_cache:
                self._prompt_cache[key] = encode_prompt(self.tokenizer, r, enable_thinking=self.cfg.model.enable_thinking,
                                                        max_tokens=self.cfg.data.max_prompt_tokens)
            out.append(self._prompt_cache[key])
        return out

    def _encode(self, prompt_ids: list[int], text: str) -> tuple[list[int], list[int]]:
        cfg = self.cfg
        return encode_target(self.tokenizer, prompt_ids, text, eos_id=self._eos, think_prefix=cfg.model.think_prefix,
                             mask_think_prefix=cfg.loss.mask_think_prefix, max_tokens=cfg.data.max_response_tokens)

    def _rng(self, salt: int) -> random.Random:
        # data order and sampling depend only on (seed, step, rank): a resumed run replays the same batches
        return random.Random(hash((self.cfg.seed, self.step_idx, self.acc.process_index, salt)))

    def seed(self, salt: int = 0) -> int:
        return self.cfg.seed * 1_000_003 + self.step_idx * 7919 + self.acc.process_index * 131 + salt

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

    def global_sum(self, value: float) -> float:
        if self.acc.num_processes == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.acc.device)
        return float(self.acc.reduce(t, reduction="sum").item())

    def _rollout_all(self, requests: dict[str, tuple[list[list[int]], int]],
                     metrics: dict[str, float]) -> dict[str, RolloutBatch]:
        """All of a step's rollouts (SFT-slice and preference-slice prompts) in ONE engine call: one decode loop."""
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

    def _passes(self, record: Record, text: str) -> bool:
        from uniapl.verifiers import verifiable_reward, verify

        v = verify(text, record.instruction_id_list, record.kwargs, prompt=record.prompt_text())
        return verifiable_reward(v, mode=self.cfg.reward.mode, partial=False) >= 1.0

    def _reference_samples(self, records: list[Record], n: int, seed: int) -> list[list[str]]:
        """n answers per record sampled from the frozen reference policy (for building preference pairs)."""
        prompts = [pr for pr in self._prompt_ids(records) for _ in range(n)]
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

    @torch.no_grad()
    def _sequence_logps(self, model, ids: torch.Tensor, attn: torch.Tensor, cmask: torch.Tensor) -> torch.Tensor:
        """[rows] summed completion log-probs under `model` (no grad), in micro-batches."""
        out = []
        for sl in micro_slices(ids.shape[0], self.cfg.train.gradient_accumulation_steps):
            i, a = trim_padding(ids[sl], attn[sl], cmask.shape[1])
            lp = completion_logprobs(model, i.to(self.acc.device), a.to(self.acc.device), cmask.shape[1])
            out.append(sequence_logprobs(lp, cmask[sl].to(lp.device)).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    # ------------------------------------------------------------------ the slices
    def _sft_jobs(self, recs: list[Record], rollouts: dict[str, RolloutBatch], metrics: dict[str, float],
                  out: StepJobs) -> list[Job]:
        cfg, p = self.cfg, self.paradigm
        jobs: list[Job] = []
        prompts = self._prompt_ids(recs)
        if "sft" in p.sft_terms:
            targets = [getattr(r, cfg.loss.sft_target) for r in recs]
            pairs = [self._encode(pr, t) for pr, t in zip(prompts, targets)]
            ids, attn, cmask = pack([a for a, _ in pairs], [b for _, b in pairs], self.pad_id)
            for sl in self._micro_batches(attn.sum(-1)):
                jobs.append(Job("sft", ids[sl], attn[sl], cmask[sl]))
            metrics["sft/target_length"] = float(cmask.sum(-1).float().mean())
            metrics["sft/rows"] = float(len(recs))
        if "adv" in p.sft_terms:
            jobs += self._adv_jobs("adv_sft", recs, rollouts["sft"], cfg.rollout.adv_num_generations, metrics, out)
        return jobs

    def _adv_jobs(self, kind: str, recs: list[Record], batch: RolloutBatch, g: int, metrics: dict[str, float],
                  out: StepJobs) -> list[Job]:
        """Student rollouts scored by the discriminator -> L_ADV jobs (SFT slice, or an offline preference slice)."""
        suffix = "_sft" if kind == "adv_sft" else "_pref"
        texts = decode_completions(self.tokenizer, batch.completion_ids, batch.completion_mask, self.eos_ids)
        coef, _raw, dm = self._coefficients(recs, texts, g, metrics)
        metrics.update({f"{k}{suffix}" if k.startswith("adv/") else k: v for k, v in dm.items()})
        metrics[f"adv/coef_mean{suffix}"] = float(coef.mean())
        out.scored += list(zip([r for r in recs for _ in range(g)], texts))
        ids, attn = batch.sequences()
        return [Job(kind, ids[sl], attn[sl], batch.completion_mask[sl], temperature=self._temperature(), coef=coef[sl])
                for sl in self._micro_batches(attn.sum(-1))]

    def _grpo_jobs(self, recs: list[Record], batch: RolloutBatch, metrics: dict[str, float], out: StepJobs) -> list[Job]:
        cfg, p, lc = self.cfg, self.paradigm, self.cfg.loss
        g = cfg.rollout.num_generations
        temp = self._temperature()
        rows = [r for r in recs for _ in range(g)]
        texts = decode_completions(self.tokenizer, batch.completion_ids, batch.completion_mask, self.eos_ids)
        with timed(metrics, "reward"):
            # the IFEval verifier and/or reward.functions, NaN-aware weighted sum; rewards/<name>/mean|std as TRL
            ids = [c[m.bool()].tolist() for c, m in zip(batch.completion_ids.cpu(), batch.completion_mask.cpu())]
            rewards, reward_metrics = self.rewards(rows, texts, ids, step=self.step_idx)
        metrics.update(reward_metrics)  # "reward": the total's mean (the IF pass rate with the verifier alone)
        coef = None
        if "adv" in p.pref_terms:
            coef, raw, dm = self._coefficients(recs, texts, g, metrics)
            metrics.update(dm)
            metrics["adv/coef_mean_pref"] = float(coef.mean())
            out.scored += list(zip(rows, texts))
            if lc.adv_signal != "loss":  # Table 4 (i)/(ii): shape the reward, no separate adversarial term
                bonus = raw if lc.adv_signal == "reward_raw" else coef
                rewards = rewards + lc.adv_reward_scale * bonus
                metrics["reward/shaped"] = float(rewards.mean())
                coef = None
        adv = group_advantages(rewards, g, scale=lc.grpo.advantage_scale)
        grouped = rewards.view(-1, g)
        metrics["reward_std"] = float(grouped.std(1, unbiased=True).mean()) if g > 1 else 0.0
        metrics["frac_reward_zero_std"] = float((grouped.std(1, unbiased=False) == 0).float().mean())
        lengths = batch.completion_mask.sum(-1).float()
        metrics["completions/mean_length"] = float(lengths.mean())
        metrics["completions/min_length"] = float(lengths.min())
        metrics["completions/max_length"] = float(lengths.max())
        ended = torch.isin(batch.completion_ids.cpu(), torch.tensor(self.eos_ids)).any(-1)
        metrics["completions/clipped_ratio"] = float((~ended).float().mean())
        ids, attn = batch.sequences()
        cm = batch.completion_mask
        ref_lp = old_lp = None
        with timed(metrics, "ref_old_logprobs"), torch.no_grad():
            if self.has_reference:
                with self.reference() as ref:
                    ref_lp = completion_logprobs(ref, ids, attn, cm.shape[1], temperature=temp)
            if lc.grpo.num_iterations > 1:
                with self.gathered():
                    old_lp = completion_logprobs(self.policy_model(), ids, attn, cm.shape[1], temperature=temp)
        sampler_lp = batch.logprobs if self.importance_correction and cfg.rollout.temperature > 0 else None
        return [Job("pref", ids[sl], attn[sl], cm[sl], temperature=temp, advantages=adv[sl],
                    coef=None if coef is None else coef[sl],
                    old_logprobs=None if old_lp is None else old_lp[sl],
                    ref_logprobs=None if ref_lp is None else ref_lp[sl],
                    sampler_logprobs=None if sampler_lp is None else sampler_lp[sl])
                for sl in self._micro_batches(attn.sum(-1))]

    def _dpo_jobs(self, recs: list[Record], metrics: dict[str, float]) -> list[Job]:
        """Rows interleaved [chosen_0, rejected_0, chosen_1, ...]; a micro-batch never splits a pair."""
        with timed(metrics, "pairs"):
            pairs = self.pairs.pairs(recs, self.seed(17))
        keep = [(pr, pair) for pr, pair in zip(self._prompt_ids(recs), pairs) if pair is not None]
        metrics["dpo/pairs"] = float(len(keep))
        if not keep:
            return []
        enc = [self._encode(pr, text) for pr, pair in keep for text in pair]
        ids, attn, cmask = pack([a for a, _ in enc], [b for _, b in enc], self.pad_id)
        with timed(metrics, "ref_old_logprobs"), self.reference() as ref:
            ref_seq = self._sequence_logps(ref, ids, attn, cmask)
        jobs = []
        for sl in micro_slices(len(keep), self.cfg.train.gradient_accumulation_steps):
            rows = slice(2 * sl.start, 2 * sl.stop)
            jobs.append(Job("dpo", ids[rows], attn[rows], cmask[rows], ref_seq=ref_seq[rows]))
        return jobs

    def _kto_jobs(self, recs: list[Record], metrics: dict[str, float], out: StepJobs) -> list[Job]:
        """Desirable rows first, then undesirable; z from mismatched (prompt, completion of the next row) pairs."""
        with timed(metrics, "pairs"):
            labelled = self.pairs.labelled(recs, self.seed(17))
        prompts = self._prompt_ids(recs)
        rows = [(pr, text, lab) for pr, answers in zip(prompts, labelled) for text, lab in answers]
        rows.sort(key=lambda x: not x[2])  # stable: desirable block, then undesirable block
        metrics["kto/desirable"] = float(sum(lab for _, _, lab in rows))
        metrics["kto/undesirable"] = float(sum(not lab for _, _, lab in rows))
        n = len(rows)
        local_sum = 0.0
        if rows:
            enc = [self._encode(pr, text) for pr, text, _ in rows]
            ids, attn, cmask = pack([a for a, _ in enc], [b for _, b in enc], self.pad_id)
            labels = torch.tensor([lab for _, _, lab in rows], dtype=torch.bool)
            with timed(metrics, "ref_old_logprobs"):
                # KL reference point z on mismatched pairs (prompt i, completion of row i + 1)
                mism = [(rows[i][0], enc[(i + 1) % n][1]) for i in range(n)]
                mids, mattn, mmask = pack([a for a, _ in mism], [b for _, b in mism], self.pad_id)
                with self.reference() as ref:
                    ref_seq = self._sequence_logps(ref, ids, attn, cmask)
                    ref_mism = self._sequence_logps(ref, mids, mattn, mmask)
                with self.gathered():
                    diff = self._sequence_logps(self.policy_model(), mids, mattn, mmask) - ref_mism
            local_sum = float(diff.sum())
        total, count = self.global_sum(local_sum), self.global_sum(float(n))  # every process, rows or not
        z = kto_reference_point(torch.tensor([total / max(count, 1.0)]), torch.zeros(1))
        metrics["kto/kl"] = z
        out.kto_z = z
        if not rows:
            return []
        return [Job("kto", ids[sl], attn[sl], cmask[sl], ref_seq=ref_seq[sl], labels=labels[sl])
                for sl in self._micro_batches(attn.sum(-1))]


def sft_batch_size(cfg: Config, p: Paradigm) -> int:
    """Expert rows per step: train.sft_batch_size, or for CHORD with loss.chord.expert_share = s,
    round(s / (1 - s) * on-policy rows) so that expert rows are a share s of all rows (at least 1)."""
    share = cfg.loss.chord.expert_share
    if p.weighting == "chord_mu" and share is not None and p.uses_pref_slice:
        on_policy = cfg.train.pref_batch_size * (cfg.rollout.num_generations if p.online else 1)
        return max(1, round(share / (1.0 - share) * on_policy))
    return cfg.train.sft_batch_size
