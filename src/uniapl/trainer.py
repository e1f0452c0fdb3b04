"""The one training loop. Every paradigm (SFT, GRPO, A-SFT, A-GRPO, unified ...) runs through `Trainer.step`.

A step builds up to three kinds of sequences, as the paradigm's terms require:
  * expert sequences of the SFT slice (prompt + teacher/ground-truth answer)      -> L_SFT
  * student rollouts on the SFT prompts, scored by the discriminator              -> L_ADV | SFT slice
  * G student rollouts per preference prompt, with verifiable rewards             -> L_GRPO (+ L_ADV | pref slice)
and minimises eq. (2), `alpha * (SFT + lambda_adv ADV) + (1 - alpha) * (GRPO + lambda_adv ADV)`, with
micro-batches whose normalisers count the whole step (all micro-batches, all processes).
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
from uniapl.losses import adversarial_loss, group_advantages, grpo_loss, sft_loss, unified_objective
from uniapl.rollout import RolloutBatch, SamplingParams, build_engine


@dataclass
class _Job:
    """One micro-batch forward/backward: a kind of sequence and what its loss needs."""

    kind: str  # "sft" | "adv_sft" | "pref"
    ids: torch.Tensor
    attn: torch.Tensor
    cmask: torch.Tensor
    temperature: float = 1.0
    coef: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None


class Trainer:
    def __init__(self, cfg: Config, accelerator: Accelerator, model, tokenizer, *, sft_records: list[Record],
                 pref_records: list[Record], stage_dir: Path, eos_ids: list[int]):
        self.cfg = cfg
        self.acc = accelerator
        self.paradigm: Paradigm = get_algorithm(cfg.algorithm)
        self.tokenizer = tokenizer
        self.stage_dir = stage_dir
        self.eos_ids = eos_ids
        self.pad_id = tokenizer.pad_token_id
        self.sft_records = sft_records
        self.pref_records = pref_records
        self._prompt_cache: dict[int, list[int]] = {}
        tc = cfg.train
        self.policy = PolicyLogprobs(model)
        decay, no_decay = [], []
        for n, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "norm" in n.lower() else decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=tc.learning_rate, betas=(tc.adam_beta1, tc.adam_beta2),
        )
        updates = tc.steps * max(1, cfg.loss.grpo.num_iterations if self.paradigm.uses_pref_slice else 1)
        self.scheduler = get_scheduler(tc.lr_scheduler, self.optimizer, num_warmup_steps=int(tc.warmup_ratio * updates),
                                       num_training_steps=max(updates, 1))
        self.policy, self.optimizer, self.scheduler = accelerator.prepare(self.policy, self.optimizer, self.scheduler)
        self.ref_model = None
        if self.paradigm.uses_pref_slice and cfg.loss.grpo.beta > 0:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.engine = build_engine(cfg.rollout.engine, model=self.model, eos_token_ids=eos_ids, pad_token_id=self.pad_id)
        self.discriminator = None
        if self.paradigm.uses_discriminator:
            from uniapl.discriminators import build_discriminator

            self.discriminator = build_discriminator(cfg.discriminator)
        self.step_idx = 0

    # ------------------------------------------------------------------ helpers
    @property
    def model(self):
        return self.acc.unwrap_model(self.policy).model

    def _prompt_ids(self, records: list[Record]) -> list[list[int]]:
        out = []
        for r in records:
            key = id(r)
            if key not in self._prompt_cache:
                self._prompt_cache[key] = encode_prompt(self.tokenizer, r, enable_thinking=self.cfg.model.enable_thinking,
                                                        max_tokens=self.cfg.data.max_prompt_tokens)
            out.append(self._prompt_cache[key])
        return out

    def _rng(self, salt: int) -> random.Random:
        # data order and sampling depend only on (seed, step, rank): a resumed run replays the same batches
        return random.Random(hash((self.cfg.seed, self.step_idx, self.acc.process_index, salt)))

    def _rollout_all(self, requests: dict[str, tuple[list[list[int]], int]]) -> dict[str, RolloutBatch]:
        """All of a step's rollouts (SFT-slice and preference-slice prompts) in ONE engine call: one decode loop."""
        if not requests:
            return {}
        rc = self.cfg.rollout
        expanded, spans, start = [], {}, 0
        for name, (prompts, g) in requests.items():
            expanded.extend(p for p in prompts for _ in range(g))
            spans[name] = (slice(start, start + len(prompts) * g), g)
            start += len(prompts) * g
        params = SamplingParams(max_new_tokens=rc.max_new_tokens, temperature=rc.temperature, top_p=rc.top_p,
                                top_k=rc.top_k, num_samples=1,
                                seed=(self.cfg.seed * 1_000_003 + self.step_idx * 7919 + self.acc.process_index * 131))
        self.engine.sync_weights(self.model)
        batch = self.engine.generate(expanded, params)
        out = {}
        for name, (sl, g) in spans.items():
            part = batch.rows(sl)
            part.num_samples = g
            out[name] = part
        return out

    def _coefficients(self, records: list[Record], texts: list[str], reps: int) -> tuple[torch.Tensor, dict[str, float]]:
        prompts = [r.prompt for r in records for _ in range(reps)]
        teachers = [r.teacher for r in records for _ in range(reps)]
        gts = [r.ground_truth for r in records for _ in range(reps)]
        coef, _raw, metrics = self.discriminator.coefficients(prompts, texts, teachers=teachers, ground_truths=gts)
        return coef.float(), metrics

    def _global_sum(self, value: float) -> float:
        if self.acc.num_processes == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.acc.device)
        return float(self.acc.reduce(t, reduction="sum").item())

    def _normalizer(self, jobs: list[_Job]) -> float:
        mode = self.cfg.loss.grpo.aggregation
        if mode == "token_mean":
            local = sum(float(j.cmask.sum()) for j in jobs)
        elif mode == "seq_mean":
            local = sum(float(j.cmask.shape[0]) for j in jobs)
        else:
            local = sum(float(j.cmask.shape[0] * self.cfg.rollout.max_new_tokens) for j in jobs)
        return max(self._global_sum(local), 1.0)

    # ------------------------------------------------------------------ building the step's sequences
    def _build_jobs(self, metrics: dict[str, float]) -> list[_Job]:
        cfg, p = self.cfg, self.paradigm
        jobs: list[_Job] = []
        accum = cfg.train.gradient_accumulation_steps
        temp = cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0
        sft_recs = pref_recs = []
        requests: dict[str, tuple[list[list[int]], int]] = {}
        if p.uses_sft_slice:
            sft_recs = [self.sft_records[i] for i in sample_indices(len(self.sft_records), cfg.train.sft_batch_size, self._rng(1))]
            if "adv" in p.sft_terms:
                requests["sft"] = (self._prompt_ids(sft_recs), cfg.rollout.adv_num_generations)
        if p.uses_pref_slice:
            pref_recs = [self.pref_records[i] for i in sample_indices(len(self.pref_records), cfg.train.pref_batch_size, self._rng(2))]
            requests["pref"] = (self._prompt_ids(pref_recs), cfg.rollout.num_generations)
        t0 = time.perf_counter()
        rollouts = self._rollout_all(requests)
        if rollouts:
            metrics["time/rollout_s"] = time.perf_counter() - t0
        if p.uses_sft_slice:
            recs = sft_recs
            prompts = self._prompt_ids(recs)
            if "sft" in p.sft_terms:
                targets = [getattr(r, cfg.loss.sft_target) for r in recs]
                pairs = [encode_target(self.tokenizer, pr, t, eos_id=self.eos_ids[0] if self.tokenizer.eos_token_id is None
                                       else self.tokenizer.eos_token_id, think_prefix=cfg.model.think_prefix,
                                       mask_think_prefix=cfg.loss.mask_think_prefix, max_tokens=cfg.data.max_response_tokens)
                         for pr, t in zip(prompts, targets)]
                ids, attn, cmask = pack([a for a, _ in pairs], [b for _, b in pairs], self.pad_id)
                for sl in micro_slices(len(recs), accum):
                    jobs.append(_Job("sft", ids[sl], attn[sl], cmask[sl]))
                metrics["sft/target_length"] = float(cmask.sum(-1).float().mean())
            if "adv" in p.sft_terms:
                g = cfg.rollout.adv_num_generations
                batch = rollouts["sft"]
                texts = decode_completions(self.tokenizer, batch.completion_ids, batch.completion_mask, self.eos_ids)
                coef, dm = self._coefficients(recs, texts, g)
                metrics.update({f"{k}_sft" if k.startswith("adv/") else k: v for k, v in dm.items()})
                metrics["adv/coef_mean_sft"] = float(coef.mean())
                self._disc_batch = getattr(self, "_disc_batch", []) + list(zip([r for r in recs for _ in range(g)], texts))
                ids, attn = batch.sequences()
                for sl in micro_slices(ids.shape[0], accum):
                    jobs.append(_Job("adv_sft", ids[sl], attn[sl], batch.completion_mask[sl], temperature=temp,
                                     coef=coef[sl]))
        if p.uses_pref_slice:
            from uniapl.verifiers import verifiable_reward, verify

            g = cfg.rollout.num_generations
            recs = pref_recs
            batch = rollouts["pref"]
            texts = decode_completions(self.tokenizer, batch.completion_ids, batch.completion_mask, self.eos_ids)
            t0 = time.perf_counter()
            rewards = torch.tensor([
                verifiable_reward(verify(t, r.instruction_id_list, r.kwargs, prompt=r.prompt_text()),
                                  mode=cfg.reward.mode, partial=cfg.reward.partial)
                for r, t in zip([r for r in recs for _ in range(g)], texts)
            ], dtype=torch.float32)
            metrics["time/reward_s"] = time.perf_counter() - t0
            adv = group_advantages(rewards, g, scale=cfg.loss.grpo.advantage_scale)
            grouped = rewards.view(-1, g)
            metrics["reward"] = float(rewards.mean())
            metrics["reward_std"] = float(grouped.std(1, unbiased=True).mean()) if g > 1 else 0.0
            metrics["frac_reward_zero_std"] = float((grouped.std(1, unbiased=False) == 0).float().mean())
            lengths = batch.completion_mask.sum(-1).float()
            metrics["completions/mean_length"] = float(lengths.mean())
            metrics["completions/min_length"] = float(lengths.min())
            metrics["completions/max_length"] = float(lengths.max())
            ended = torch.isin(batch.completion_ids, torch.tensor(self.eos_ids)).any(-1)
            metrics["completions/clipped_ratio"] = float((~ended).float().mean())
            coef = None
            if "adv" in p.pref_terms:
                t0 = time.perf_counter()
                coef, dm = self._coefficients(recs, texts, g)
                metrics["time/discriminator_s"] = time.perf_counter() - t0
                metrics.update(dm)
                metrics["adv/coef_mean_pref"] = float(coef.mean())
                self._disc_batch = getattr(self, "_disc_batch", []) + list(zip([r for r in recs for _ in range(g)], texts))
            ids, attn = batch.sequences()
            cm = batch.completion_mask
            ref_lp = None
            if self.ref_model is not None:
                with torch.no_grad():
                    ref_lp = completion_logprobs(self.ref_model, ids, attn, cm.shape[1], temperature=temp)
            old_lp = None
            if cfg.loss.grpo.num_iterations > 1:
                with torch.no_grad():
                    old_lp = completion_logprobs(self.model, ids, attn, cm.shape[1], temperature=temp)
            for sl in micro_slices(ids.shape[0], accum):
                jobs.append(_Job("pref", ids[sl], attn[sl], cm[sl], temperature=temp, advantages=adv[sl],
                                 coef=None if coef is None else coef[sl],
                                 old_logprobs=None if old_lp is None else old_lp[sl],
                                 ref_logprobs=None if ref_lp is None else ref_lp[sl]))
        return jobs

    # ------------------------------------------------------------------ the update
    def _update(self, jobs: list[_Job], metrics: dict[str, float]) -> None:
        cfg, p = self.cfg, self.paradigm
        lc, gc = cfg.loss, cfg.loss.grpo
        agg = gc.aggregation
        world = self.acc.num_processes
        # one normaliser per term, over the whole step: exact under accumulation and data parallelism
        norms = {k: self._normalizer([j for j in jobs if j.kind == k]) for k in ("sft", "adv_sft", "pref")}
        totals: dict[str, float] = {}
        token_weighted: dict[str, float] = {}
        pref_tokens = 0.0
        self.optimizer.zero_grad(set_to_none=True)
        for i, job in enumerate(jobs):
            ids, attn = trim_padding(job.ids, job.attn, job.cmask.shape[1])
            ids, attn, cmask = ids.to(self.acc.device), attn.to(self.acc.device), job.cmask.to(self.acc.device)
            last = i == len(jobs) - 1
            ctx = self.acc.no_sync(self.policy) if (not last and world > 1) else _nullcontext()
            with ctx:
                logp = self.policy(ids, attn, cmask.shape[1], job.temperature)
                terms: dict[str, torch.Tensor] = {}
                norm = norms[job.kind] / world  # DDP averages gradients over processes
                if job.kind == "sft":
                    terms["sft"], m = sft_loss(logp, cmask, aggregation=agg, normalizer=norm)
                elif job.kind == "adv_sft":
                    terms["sft_adv"], m = adversarial_loss(logp, cmask, job.coef.to(logp.device), aggregation=agg,
                                                           normalizer=norm)
                else:
                    old = job.old_logprobs.to(logp.device) if job.old_logprobs is not None else logp.detach()
                    if "grpo" in p.pref_terms:
                        terms["grpo"], m = grpo_loss(
                            logp, old, job.advantages.to(logp.device), cmask,
                            ref_logprobs=None if job.ref_logprobs is None else job.ref_logprobs.to(logp.device),
                            beta=gc.beta, eps_low=gc.eps_low, eps_high=gc.eps_high, aggregation=agg, normalizer=norm)
                        n_tok = float(cmask.sum())
                        pref_tokens += n_tok
                        for k in ("kl", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
                            if k in m:
                                token_weighted[k] = token_weighted.get(k, 0.0) + m[k] * n_tok
                    if job.coef is not None:
                        terms["pref_adv"], _ = adversarial_loss(logp, cmask, job.coef.to(logp.device), aggregation=agg,
                                                                normalizer=norm)
                loss, _ = unified_objective(**_slice_terms(terms, p), alpha=lc.alpha, lambda_adv=lc.lambda_adv)
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
        metrics.update({k: v / max(pref_tokens, 1.0) for k, v in token_weighted.items()})
        metrics["loss/adv"] = totals.get("loss/sft_adv", 0.0) + totals.get("loss/pref_adv", 0.0)
        if "loss/pref_adv" in totals or "loss/sft_adv" in totals:
            coefs = [j.coef for j in jobs if j.coef is not None]
            metrics["adv/coef_mean"] = float(torch.cat(coefs).mean()) if coefs else 0.0

    def step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        self._disc_batch = []
        jobs = self._build_jobs(metrics)
        t1 = time.perf_counter()
        iterations = self.cfg.loss.grpo.num_iterations if self.paradigm.uses_pref_slice else 1
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


def _slice_terms(terms: dict[str, torch.Tensor], p: Paradigm) -> dict[str, Any]:
    """Name the terms for `unified_objective`, making sure slice weights follow the PARADIGM, not the job."""
    out: dict[str, Any] = dict(terms)
    # a micro-batch holds one slice only; the objective must still weight it as eq. (2) does for the paradigm
    if p.uses_sft_slice and p.uses_pref_slice:
        zero = next(iter(terms.values())) * 0.0
        if not any(k in terms for k in ("sft", "sft_adv")):
            out["sft_adv" if "adv" in p.sft_terms else "sft"] = zero
        if not any(k in terms for k in ("grpo", "pref_adv")):
            out["pref_adv" if "adv" in p.pref_terms else "grpo"] = zero
    return out


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _round(v: float) -> float:
    return round(v, 6) if isinstance(v, float) and math.isfinite(v) else v


def _postfix(m: dict[str, float]) -> dict[str, str]:
    keys = [("reward", "reward"), ("loss/total", "loss"), ("adv/coef_mean", "coef"), ("completions/mean_length", "len"),
            ("loss/sft", "sft")]
    return {short: f"{m[k]:.3g}" for k, short in keys if k in m}


def find_resume_checkpoint(stage_dir: Path) -> Path | None:
    return latest_checkpoint(stage_dir / "checkpoints")
