"""The one training loop. Every paradigm (SFT, GRPO, A-SFT, A-GRPO, unified, CHORD, DPO, KTO ...) runs
through `Trainer.step`.

A step builds the sequences the paradigm's terms need (see `uniapl.algorithms`):
  * expert sequences of the SFT slice (prompt + teacher/ground-truth answer)      -> L_SFT (CHORD: optionally phi-weighted)
  * student rollouts on the SFT prompts, scored by the discriminator              -> L_ADV | SFT slice
  * G student rollouts per preference prompt, with verifiable rewards             -> L_GRPO (+ L_ADV | pref slice)
  * chosen/rejected pairs or labelled answers of the preference prompts           -> L_DPO / L_KTO
    (+ student rollouts on those prompts for L_ADV | pref slice)
and minimises  w * (SFT + lambda_adv ADV)|sft + (1 - w) * (PREF + lambda_adv ADV)|pref,  w the paradigm's
weighting rule (eq. 2's alpha, CHORD's mu(step)), with micro-batches whose normalisers count the whole
step (all micro-batches, all processes). With `loss.adv_signal` = reward_raw / reward_coef (paper
Table 4) the discriminator's raw score / coefficient is added to the verifiable reward instead of
forming a loss term on the GRPO slice.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_scheduler

from uniapl.algorithms import Paradigm, get_algorithm
from uniapl.batching import micro_slices, pack, sample_indices, trim_padding
from uniapl.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint, set_rng_state
from uniapl.config import Config
from uniapl.data.chat import encode_prompt, encode_target
from uniapl.data.records import Record
from uniapl.evaluation import decode_completions
from uniapl.logprobs import PolicyLogprobs, completion_logprobs
from uniapl.losses import (adversarial_loss, chord_sft_loss, dpo_loss, group_advantages, grpo_loss, kto_loss,
                           kto_reference_point, sequence_logprobs, unified_objective)
from uniapl.preference import PairBuilder
from uniapl.rollout import RolloutBatch, SamplingParams, build_engine

@dataclass
class _Job:
    """One micro-batch forward/backward: a kind of sequence and what its loss needs."""

    kind: str  # "sft" | "adv_sft" | "pref" (GRPO rollouts) | "adv_pref" | "dpo" | "kto"
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


_JOB_KINDS = ("sft", "adv_sft", "pref", "adv_pref", "dpo", "kto")


class Trainer:
    def __init__(self, cfg: Config, accelerator: Accelerator, model, tokenizer, *, sft_records: list[Record],
                 pref_records: list[Record], stage_dir: Path, eos_ids: list[int], ref_model=None):
        """`ref_model`: the frozen reference (the stage's starting weights) when the paradigm needs one;
        by default a copy of `model` (pass it explicitly when `model` holds resumed weights)."""
        self.cfg = cfg
        self.acc = accelerator
        self.paradigm: Paradigm = get_algorithm(cfg.algorithm)
        p = self.paradigm
        self.tokenizer = tokenizer
        self.stage_dir = stage_dir
        self.eos_ids = eos_ids
        self.pad_id = tokenizer.pad_token_id
        self.sft_records = sft_records
        self.pref_records = pref_records
        self._prompt_cache: dict[int, list[int]] = {}
        tc = cfg.train
        self.sft_batch_size = _sft_batch_size(cfg, p)
        self.policy = PolicyLogprobs(model)
        decay, no_decay = [], []
        for n, prm in model.named_parameters():
            if prm.requires_grad:
                (no_decay if prm.ndim < 2 or "norm" in n.lower() else decay).append(prm)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=tc.learning_rate, betas=(tc.adam_beta1, tc.adam_beta2),
        )
        updates = tc.steps * max(1, cfg.loss.grpo.num_iterations if p.online else 1)
        self.scheduler = get_scheduler(tc.lr_scheduler, self.optimizer, num_warmup_steps=int(tc.warmup_ratio * updates),
                                       num_training_steps=max(updates, 1))
        self.policy, self.optimizer, self.scheduler = accelerator.prepare(self.policy, self.optimizer, self.scheduler)
        self.ref_model = None
        if (p.online and cfg.loss.grpo.beta > 0) or p.offline_preference:
            ref = ref_model if ref_model is not None else copy.deepcopy(self.model)
            self.ref_model = ref.to(self.acc.device).eval().requires_grad_(False)
        self.engine = build_engine(cfg.rollout.engine, model=self.model, eos_token_ids=eos_ids, pad_token_id=self.pad_id)
        self.pairs = None
        if p.offline_preference:
            self._ref_engine = None
            self.pairs = PairBuilder(source=cfg.data.pairs.source, sample_fn=self._reference_samples,
                                     passes_fn=self._passes, prefer=cfg.loss.sft_target,
                                     num_samples=cfg.data.pairs.num_samples)
        self.discriminator = None
        if p.uses_discriminator:
            from uniapl.discriminators import build_discriminator

            self.discriminator = build_discriminator(cfg.discriminator)
        self.step_idx = 0

    # ------------------------------------------------------------------ helpers
    @property
    def model(self):
        return self.acc.unwrap_model(self.policy).model

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

    def _seed(self, salt: int = 0) -> int:
        return self.cfg.seed * 1_000_003 + self.step_idx * 7919 + self.acc.process_index * 131 + salt

    def _sampling(self, seed: int) -> SamplingParams:
        rc = self.cfg.rollout
        return SamplingParams(max_new_tokens=rc.max_new_tokens, temperature=rc.temperature, top_p=rc.top_p,
                              top_k=rc.top_k, num_samples=1, seed=seed)

    def _rollout_all(self, requests: dict[str, tuple[list[list[int]], int]]) -> dict[str, RolloutBatch]:
        """All of a step's rollouts (SFT-slice and preference-slice prompts) in ONE engine call: one decode loop."""
        if not requests:
            return {}
        expanded, spans, start = [], {}, 0
        for name, (prompts, g) in requests.items():
            expanded.extend(p for p in prompts for _ in range(g))
            spans[name] = (slice(start, start + len(prompts) * g), g)
            start += len(prompts) * g
        self.engine.sync_weights(self.model)
        batch = self.engine.generate(expanded, self._sampling(self._seed()))
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
        if self._ref_engine is None:
            self._ref_engine = build_engine(self.cfg.rollout.engine, model=self.ref_model, eos_token_ids=self.eos_ids,
                                            pad_token_id=self.pad_id)
            self._ref_engine.sync_weights(self.ref_model)
        prompts = [pr for pr in self._prompt_ids(records) for _ in range(n)]
        batch = self._ref_engine.generate(prompts, self._sampling(seed))
        texts = decode_completions(self.tokenizer, batch.completion_ids, batch.completion_mask, self.eos_ids)
        return [texts[i * n:(i + 1) * n] for i in range(len(records))]

    def _coefficients(self, records: list[Record], texts: list[str], reps: int
                      ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        prompts = [r.prompt for r in records for _ in range(reps)]
        teachers = [r.teacher for r in records for _ in range(reps)]
        gts = [r.ground_truth for r in records for _ in range(reps)]
        coef, raw, metrics = self.discriminator.coefficients(prompts, texts, teachers=teachers, ground_truths=gts)
        return coef.float(), raw.float(), metrics

    def _global_sum(self, value: float) -> float:
        if self.acc.num_processes == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.acc.device)
        return float(self.acc.reduce(t, reduction="sum").item())

    def _normalizer(self, jobs: list[_Job], kind: str) -> float:
        mode = self.cfg.loss.grpo.aggregation
        if kind == "dpo":
            local = sum(float(j.cmask.shape[0] // 2) for j in jobs)
        elif kind == "kto" or mode == "seq_mean":
            local = sum(float(j.cmask.shape[0]) for j in jobs)
        elif mode == "token_mean":
            local = sum(float(j.cmask.sum()) for j in jobs)
        else:
            local = sum(float(j.cmask.shape[0] * self.cfg.rollout.max_new_tokens) for j in jobs)
        return max(self._global_sum(local), 1.0)

    @torch.no_grad()
    def _sequence_logps(self, model, ids: torch.Tensor, attn: torch.Tensor, cmask: torch.Tensor) -> torch.Tensor:
        """[rows] summed completion log-probs under `model` (no grad), in micro-batches."""
        out = []
        for sl in micro_slices(ids.shape[0], self.cfg.train.gradient_accumulation_steps):
            i, a = trim_padding(ids[sl], attn[sl], cmask.shape[1])
            lp = completion_logprobs(model, i.to(self.acc.device), a.to(self.acc.device), cmask.shape[1])
            out.append(sequence_logprobs(lp, cmask[sl].to(lp.device)).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    # ------------------------------------------------------------------ building the step's sequences
    def _build_jobs(self, metrics: dict[str, float]) -> list[_Job]:
        cfg, p = self.cfg, self.paradigm
        jobs: list[_Job] = []
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
        t0 = time.perf_counter()
        rollouts = self._rollout_all(requests)
        if rollouts:
            metrics["time/rollout_s"] = time.perf_counter() - t0
            metrics["rollout/tokens"] = float(sum(int(b.completion_mask.sum()) for b in rollouts.values()))
        if p.uses_sft_slice:
            jobs += self._sft_jobs(sft_recs, rollouts, metrics)
        if p.online:
            jobs += self._grpo_jobs(pref_recs, rollouts["pref"], metrics)
        elif p.pref_main == "dpo":
            jobs += self._dpo_jobs(pref_recs, metrics)
        elif p.pref_main == "kto":
            jobs += self._kto_jobs(pref_recs, metrics)
        if "adv_pref" in rollouts:
            jobs += self._adv_jobs("adv_pref", pref_recs, rollouts["adv_pref"], cfg.rollout.adv_num_generations, metrics)
        return jobs

    def _sft_jobs(self, recs: list[Record], rollouts: dict[str, RolloutBatch], metrics: dict[str, float]) -> list[_Job]:
        cfg, p = self.cfg, self.paradigm
        jobs: list[_Job] = []
        prompts = self._prompt_ids(recs)
        if "sft" in p.sft_terms:
            targets = [getattr(r, cfg.loss.sft_target) for r in recs]
            pairs = [self._encode(pr, t) for pr, t in zip(prompts, targets)]
            ids, attn, cmask = pack([a for a, _ in pairs], [b for _, b in pairs], self.pad_id)
            for sl in micro_slices(len(recs), cfg.train.gradient_accumulation_steps):
                jobs.append(_Job("sft", ids[sl], attn[sl], cmask[sl]))
            metrics["sft/target_length"] = float(cmask.sum(-1).float().mean())
            metrics["sft/rows"] = float(len(recs))
        if "adv" in p.sft_terms:
            jobs += self._adv_jobs("adv_sft", recs, rollouts["sft"], cfg.rollout.adv_num_generations, metrics)
        return jobs

    def _adv_jobs(self, kind: str, recs: list[Record], batch: RolloutBatch, g: int,
                  metrics: dict[str, float]) -> list[_Job]:
        """Student rollouts scored by the discriminator -> L_ADV jobs (SFT slice, or an offline preference slice)."""
        suffix = "_sft" if kind == "adv_sft" else "_pref"
        temp = self.cfg.rollout.temperature if self.cfg.rollout.temperature > 0 else 1.0
        texts = decode_completions(self.tokenizer, batch.completion_ids, batch.completion_mask, self.eos_ids)
        coef, _raw, dm = self._coefficients(recs, texts, g)
        metrics.update({f"{k}{suffix}" if k.startswith("adv/") else k: v for k, v in dm.items()})
        metrics[f"adv/coef_mean{suffix}"] = float(coef.mean())
        self._disc_batch += list(zip([r for r in recs for _ in range(g)], texts))
        ids, attn = batch.sequences()
        return [_Job(kind, ids[sl], attn[sl], batch.completion_mask[sl], temperature=temp, coef=coef[sl])
                for sl in micro_slices(ids.shape[0], self.cfg.train.gradient_accumulation_steps)]

    def _grpo_jobs(self, recs: list[Record], batch: RolloutBatch, metrics: dict[str, float]) -> list[_Job]:
        from uniapl.verifiers import verifiable_reward, verify

        cfg, p, lc = self.cfg, self.paradigm, self.cfg.loss
        g = cfg.rollout.num_generations
        temp = cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0
        rows = [r for r in recs for _ in range(g)]
        texts = decode_completions(self.tokenizer, batch.completion_ids, batch.completion_mask, self.eos_ids)
        t0 = time.perf_counter()
        rewards = torch.tensor([
            verifiable_reward(verify(t, r.instruction_id_list, r.kwargs, prompt=r.prompt_text()),
                              mode=cfg.reward.mode, partial=cfg.reward.partial)
            for r, t in zip(rows, texts)
        ], dtype=torch.float32)
        metrics["time/reward_s"] = time.perf_counter() - t0
        metrics["reward"] = float(rewards.mean())  # the verifiable reward (the IF pass rate of the rollouts)
        coef = None
        if "adv" in p.pref_terms:
            t0 = time.perf_counter()
            coef, raw, dm = self._coefficients(recs, texts, g)
            metrics["time/discriminator_s"] = time.perf_counter() - t0
            metrics.update(dm)
            metrics["adv/coef_mean_pref"] = float(coef.mean())
            self._disc_batch += list(zip(rows, texts))
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
        ref_lp = None
        if self.ref_model is not None:
            with torch.no_grad():
                ref_lp = completion_logprobs(self.ref_model, ids, attn, cm.shape[1], temperature=temp)
        old_lp = None
        if lc.grpo.num_iterations > 1:
            with torch.no_grad():
                old_lp = completion_logprobs(self.model, ids, attn, cm.shape[1], temperature=temp)
        return [_Job("pref", ids[sl], attn[sl], cm[sl], temperature=temp, advantages=adv[sl],
                     coef=None if coef is None else coef[sl],
                     old_logprobs=None if old_lp is None else old_lp[sl],
                     ref_logprobs=None if ref_lp is None else ref_lp[sl])
                for sl in micro_slices(ids.shape[0], cfg.train.gradient_accumulation_steps)]

    def _dpo_jobs(self, recs: list[Record], metrics: dict[str, float]) -> list[_Job]:
        """Rows interleaved [chosen_0, rejected_0, chosen_1, ...]; a micro-batch never splits a pair."""
        t0 = time.perf_counter()
        pairs = self.pairs.pairs(recs, self._seed(17))
        metrics["time/pairs_s"] = time.perf_counter() - t0
        keep = [(pr, pair) for pr, pair in zip(self._prompt_ids(recs), pairs) if pair is not None]
        metrics["dpo/pairs"] = float(len(keep))
        if not keep:
            return []
        enc = [self._encode(pr, text) for pr, pair in keep for text in pair]
        ids, attn, cmask = pack([a for a, _ in enc], [b for _, b in enc], self.pad_id)
        ref_seq = self._sequence_logps(self.ref_model, ids, attn, cmask)
        jobs = []
        for sl in micro_slices(len(keep), self.cfg.train.gradient_accumulation_steps):
            rows = slice(2 * sl.start, 2 * sl.stop)
            jobs.append(_Job("dpo", ids[rows], attn[rows], cmask[rows], ref_seq=ref_seq[rows]))
        return jobs

    def _kto_jobs(self, recs: list[Record], metrics: dict[str, float]) -> list[_Job]:
        """Desirable rows first, then undesirable; z from mismatched (prompt, completion of the next row) pairs."""
        t0 = time.perf_counter()
        labelled = self.pairs.labelled(recs, self._seed(17))
        metrics["time/pairs_s"] = time.perf_counter() - t0
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
            ref_seq = self._sequence_logps(self.ref_model, ids, attn, cmask)
            # KL reference point z on mismatched pairs (prompt i, completion of row i + 1)
            mism = [(rows[i][0], enc[(i + 1) % n][1]) for i in range(n)]
            mids, mattn, mmask = pack([a for a, _ in mism], [b for _, b in mism], self.pad_id)
            diff = (self._sequence_logps(self.model, mids, mattn, mmask)
                    - self._sequence_logps(self.ref_model, mids, mattn, mmask))
            local_sum = float(diff.sum())
        total, count = self._global_sum(local_sum), self._global_sum(float(n))  # every process, rows or not
        z = kto_reference_point(torch.tensor([total / max(count, 1.0)]), torch.zeros(1))
        metrics["kto/kl"] = z
        self._kto_z = z
        if not rows:
            return []
        return [_Job("kto", ids[sl], attn[sl], cmask[sl], ref_seq=ref_seq[sl], labels=labels[sl])
                for sl in micro_slices(n, self.cfg.train.gradient_accumulation_steps)]

    # ------------------------------------------------------------------ the update
    def _job_terms(self, job: _Job, logp: torch.Tensor, cmask: torch.Tensor, norm: float,
                   acc_metrics: dict[str, list[float]]) -> dict[str, torch.Tensor]:
        """The loss terms of one micro-batch (one slice), already aggregated with the step's normaliser."""
        lc, gc, p = self.cfg.loss, self.cfg.loss.grpo, self.paradigm
        agg = gc.aggregation
        terms: dict[str, torch.Tensor] = {}
        n_tok = float(cmask.sum())

        def weigh(m: dict[str, float], keys: tuple[str, ...], w: float) -> None:
            for k in keys:
                if k in m:
                    acc_metrics.setdefault(k, [0.0, 0.0])
                    acc_metrics[k][0] += m[k] * w
                    acc_metrics[k][1] += w

        if job.kind == "sft":
            phi = p.weighting == "chord_mu" and lc.chord.phi
            terms["sft"], m = chord_sft_loss(logp, cmask, phi=phi, aggregation=agg, normalizer=norm)
            weigh(m, ("chord/phi_mean",), n_tok)
        elif job.kind in ("adv_sft", "adv_pref"):
            name = "sft_adv" if job.kind == "adv_sft" else "pref_adv"
            terms[name], _ = adversarial_loss(logp, cmask, job.coef.to(logp.device), aggregation=agg, normalizer=norm)
        elif job.kind == "pref":
            old = job.old_logprobs.to(logp.device) if job.old_logprobs is not None else logp.detach()
            terms["grpo"], m = grpo_loss(
                logp, old, job.advantages.to(logp.device), cmask,
                ref_logprobs=None if job.ref_logprobs is None else job.ref_logprobs.to(logp.device),
                beta=gc.beta, eps_low=gc.eps_low, eps_high=gc.eps_high, aggregation=agg, normalizer=norm)
            weigh(m, ("kl", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"), n_tok)
            if job.coef is not None:
                terms["pref_adv"], _ = adversarial_loss(logp, cmask, job.coef.to(logp.device), aggregation=agg,
                                                        normalizer=norm)
        elif job.kind == "dpo":
            seq = sequence_logprobs(logp, cmask)
            ref = job.ref_seq.to(seq.device)
            terms["dpo"], m = dpo_loss(seq[0::2], seq[1::2], ref[0::2], ref[1::2], beta=lc.dpo.beta, normalizer=norm)
            weigh(m, ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"), seq.shape[0] / 2)
        elif job.kind == "kto":
            seq = sequence_logprobs(logp, cmask)
            lab = job.labels.to(seq.device)
            terms["kto"], m = kto_loss(seq, job.ref_seq.to(seq.device), lab, kl=self._kto_z.to(seq.device) if torch.is_tensor(self._kto_z) else self._kto_z, beta=lc.kto.beta,
                                       desirable_weight=lc.kto.desirable_weight,
                                       undesirable_weight=lc.kto.undesirable_weight, normalizer=norm)
            weigh(m, ("rewards/chosen",), float(lab.sum()))
            weigh(m, ("rewards/rejected",), float((~lab).sum()))
        else:
            raise ValueError(f"unknown job kind {job.kind!r}")
        return terms

    def _update(self, jobs: list[_Job], metrics: dict[str, float]) -> None:
        cfg, p = self.cfg, self.paradigm
        lc = cfg.loss
        world = self.acc.num_processes
        weights = p.slice_weights(lc, self.step_idx)
        if p.uses_sft_slice and p.uses_pref_slice:
            metrics["weight/sft_slice"] = weights[0]
            if p.weighting == "chord_mu":
                metrics["chord/mu"] = weights[0]
        # one normaliser per kind of job, over the whole step: exact under accumulation and data parallelism
        # (every process reduces every kind, in the same order, even those it has no job of)
        norms = {k: self._normalizer([j for j in jobs if j.kind == k], k) for k in _JOB_KINDS}
        totals: dict[str, float] = {}
        weighted: dict[str, list[float]] = {}
        self.optimizer.zero_grad(set_to_none=True)
        if not jobs:  # e.g. no preference pair could be built for this step's prompts
            metrics["skipped_update"] = 1.0
            return
        for i, job in enumerate(jobs):
            ids, attn = trim_padding(job.ids, job.attn, job.cmask.shape[1])
            ids, attn, cmask = ids.to(self.acc.device), attn.to(self.acc.device), job.cmask.to(self.acc.device)
            last = i == len(jobs) - 1
            ctx = self.acc.no_sync(self.policy) if (not last and world > 1) else _nullcontext()
            with ctx:
                logp = self.policy(ids, attn, cmask.shape[1], job.temperature)
                # DDP averages gradients over processes
                terms = self._job_terms(job, logp, cmask, norms[job.kind] / world, weighted)
                loss, _ = unified_objective(**terms, lambda_adv=lc.lambda_adv, weights=weights)
                self.acc.backward(loss)
            for k, v in terms.items():
                totals[f"loss/{k}"] = totals.get(f"loss/{k}", 0.0) + float(v.detach())
            totals["loss/total"] = totals.get("loss/total", 0.0) + float(loss.detach())
        if cfg.train.max_grad_norm > 0:
            gn = self.acc.clip_grad_norm_(self.policy.parameters(), cfg.train.max_grad_norm)
            metrics["grad_norm"] = float(gn)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        # each process holds (its share of the global sum) * world; the mean over processes is the global loss
        metrics.update(totals)
        metrics.update({k: s / w for k, (s, w) in weighted.items() if w > 0})
        if "loss/pref_adv" in totals or "loss/sft_adv" in totals:
            metrics["loss/adv"] = totals.get("loss/sft_adv", 0.0) + totals.get("loss/pref_adv", 0.0)
            coefs = [j.coef for j in jobs if j.coef is not None]
            metrics["adv/coef_mean"] = float(torch.cat(coefs).mean()) if coefs else 0.0
        elif "adv/coef_mean_pref" in metrics:  # reward-shaping ablations: the coefficient is still reported
            metrics["adv/coef_mean"] = metrics["adv/coef_mean_pref"]

    def step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        self._disc_batch = []
        self._kto_z = 0.0
        jobs = self._build_jobs(metrics)
        t1 = time.perf_counter()
        iterations = self.cfg.loss.grpo.num_iterations if self.paradigm.online else 1
        for _ in range(max(1, iterations)):
            self._update(jobs, metrics)
        metrics["time/update_s"] = time.perf_counter() - t1
        if self.discriminator is not None and self._disc_batch:
            recs, texts = zip(*self._disc_batch)
            teach = [(r, t) for r, t in zip(recs, texts) if r.teacher is not None]
            if teach:
                dm = self.discriminator.update([r.prompt for r, _ in teach], [r.teacher for r, _ in teach],
                                               [t for _, t in teach])
                metrics.update(dm or {})
        metrics["learning_rate"] = float(self.scheduler.get_last_lr()[0])
        metrics["time/step_s"] = time.perf_counter() - t0
        self.step_idx += 1
        return self._reduce_metrics(metrics)

    def _reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        if self.acc.num_processes == 1:
            return metrics
        keys = sorted(metrics)
        t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.acc.device)
        t = self.acc.reduce(t, reduction="mean")
        return dict(zip(keys, t.tolist()))

    # ------------------------------------------------------------------ checkpoints
    def save(self, step: int) -> Path | None:
        path = None
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            extra = {}
            if self.discriminator is not None:
                extra["discriminator"] = self.discriminator.state_dict()
            path = save_checkpoint(self.stage_dir / "checkpoints", step, model=self.model, tokenizer=self.tokenizer,
                                   optimizer=self.optimizer, scheduler=self.scheduler, extra=extra,
                                   keep=self.cfg.train.keep_checkpoints)
        self.acc.wait_for_everyone()
        return path

    def restore(self, ckpt: Path) -> None:
        """Optimizer, scheduler, RNG and step from `ckpt` (weights were loaded when the model was built)."""
        state = load_trainer_state(ckpt)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        if self.discriminator is not None and state.get("discriminator"):
            self.discriminator.load_state_dict(state["discriminator"])
        self.step_idx = int(state["step"])

    # ------------------------------------------------------------------ the loop
    def train(self, metrics_path: Path, eval_fn=None, stage: str = "") -> int:
        cfg = self.cfg
        bar = tqdm(total=cfg.train.steps, initial=self.step_idx, desc=f"{cfg.algorithm}",
                   disable=not (cfg.logging.progress and self.acc.is_main_process), dynamic_ncols=True)
        while self.step_idx < cfg.train.steps:
            m = self.step()
            step = self.step_idx
            if cfg.eval.every and eval_fn is not None and step % cfg.eval.every == 0 and step < cfg.train.steps:
                m.update({f"eval/{k}": v for k, v in eval_fn(self.model).items()})
            if self.acc.is_main_process and (step % max(cfg.train.log_every, 1) == 0 or step == cfg.train.steps):
                row = {"step": step, "stage": stage or cfg.algorithm, **{k: _round(v) for k, v in sorted(m.items())}}
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            self.acc.log(m, step=step)
            bar.set_postfix(_postfix(m), refresh=False)
            bar.update(1)
            if cfg.train.save_every and step % cfg.train.save_every == 0 and step < cfg.train.steps:
                self.save(step)
        bar.close()
        return self.step_idx


def _sft_batch_size(cfg: Config, p: Paradigm) -> int:
    """Expert rows per step: train.sft_batch_size, or for CHORD with loss.chord.expert_share = s,
    round(s / (1 - s) * on-policy rows) so that expert rows are a share s of all rows (at least 1)."""
    share = cfg.loss.chord.expert_share
    if p.weighting == "chord_mu" and share is not None and p.uses_pref_slice:
        on_policy = cfg.train.pref_batch_size * (cfg.rollout.num_generations if p.online else 1)
        return max(1, round(share / (1.0 - share) * on_policy))
    return cfg.train.sft_batch_size


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _round(v: float) -> float:
    return round(v, 6) if isinstance(v, float) and math.isfinite(v) else v


def _postfix(m: dict[str, float]) -> dict[str, str]:
    keys = [("reward", "reward"), ("loss/total", "loss"), ("adv/coef_mean", "coef"), ("completions/mean_length", "len"),
            ("loss/sft", "sft"), ("chord/mu", "mu"), ("loss/dpo", "dpo"), ("loss/kto", "kto")]
    return {short: f"{m[k]:.3g}" for k, short in keys if k in m}


def find_resume_checkpoint(stage_dir: Path) -> Path | None:
    return latest_checkpoint(stage_dir / "checkpoints")
