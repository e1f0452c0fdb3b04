"""The one training loop. Every paradigm (SFT, GRPO, A-SFT, A-GRPO, unified, CHORD, DPO, KTO ...) runs
through `Trainer.step`: build the step's jobs (`uniapl.jobs`: rollouts, rewards, discriminator scores,
preference pairs -> micro-batches), then one update that minimises

    w * (SFT + lambda_adv ADV)|sft + (1 - w) * (PREF + lambda_adv ADV)|pref,

w the paradigm's weighting rule (eq. 2's alpha, CHORD's mu(step)), with micro-batches whose normalisers count
the whole step (all micro-batches, all processes), so gradient accumulation and data parallelism give the
gradient of one big batch. This file is the update, the loop and checkpointing; what the sequences are is
`uniapl.jobs`, how they are sampled is `uniapl.rollout`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_scheduler

from uniapl.algorithms import Paradigm, get_algorithm
from uniapl.batching import trim_padding
from uniapl.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint, set_rng_state
from uniapl.config import Config
from uniapl.distributed import (full_model_state_dict, full_optimizer_state_dict, gathered_params, global_max, is_sharded,
                                load_full_optimizer_state_dict)
from uniapl.lora import is_peft_model, policy_module, reference_policy
from uniapl.data.records import Record
from uniapl.jobs import JOB_KINDS, Job, JobBuilder, StepJobs, timed
from uniapl.logprobs import PolicyLogprobs
from uniapl.losses import (adversarial_loss, chord_sft_loss, dpo_loss, grpo_loss, kto_loss, rollout_importance_weights,
                           sequence_logprobs, unified_objective)


class Trainer:
    def __init__(self, cfg: Config, accelerator: Accelerator, model, tokenizer, *, sft_records: list[Record],
                 pref_records: list[Record], stage_dir: Path, eos_ids: list[int], ref_model=None):
        """`ref_model`: the frozen reference (the stage's starting weights) when the paradigm needs one;
        by default a copy of `model` (pass it explicitly when `model` holds resumed weights). With a PEFT
        `model` (model.lora) the reference is the adapter-disabled policy and no copy is made."""
        self.cfg = cfg
        self.acc = accelerator
        self.paradigm: Paradigm = get_algorithm(cfg.algorithm)
        p = self.paradigm
        self.tokenizer = tokenizer
        self.stage_dir = stage_dir
        tc = cfg.train
        self.peft = model if is_peft_model(model) else None  # adapters: what checkpoints hold
        model = policy_module(model)
        if cfg.model.gradient_checkpointing:
            # non-reentrant: gradients reach the adapters even though the (frozen) inputs need no grad
            enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x's name
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.eval()  # training mode (dropout, checkpointing) only inside the update, see `update`
        self.policy = PolicyLogprobs(model)
        # FSDP's transformer-based auto-wrap reads the module it is given: shard per decoder layer
        self.policy._no_split_modules = getattr(model, "_no_split_modules", None)
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
        self.ref_model = None
        needs_ref = (p.online and cfg.loss.grpo.beta > 0) or p.offline_preference
        if needs_ref and self.peft is None:  # copied before sharding: every process holds the whole reference
            ref = ref_model if ref_model is not None else copy.deepcopy(model)
            self.ref_model = ref.to(self.acc.device).eval().requires_grad_(False)
        self.policy, self.optimizer, self.scheduler = accelerator.prepare(self.policy, self.optimizer, self.scheduler)
        self.jobs = JobBuilder(cfg, p, tokenizer, sft_records=sft_records, pref_records=pref_records, eos_ids=eos_ids,
                               policy_model=lambda: self.model, accelerator=accelerator, ref_model=self.ref_model,
                               reference=self.reference if needs_ref else None, gathered=self.gathered)
        self.step_idx = 0

    @property
    def model(self):
        """The policy's Hugging Face model (LoRA: the base model, adapter layers injected)."""
        return self.acc.unwrap_model(self.policy).model

    @property
    def saved_model(self):
        """What checkpoints and final/ save: the PeftModel (adapters) with LoRA, else the model."""
        return self.peft if self.peft is not None else self.model

    def gathered(self):
        """Context in which `self.model` holds its full parameters on every process (sharded training:
        for the decode loop and no-grad scoring, which run a different number of forwards per process)."""
        return gathered_params(self.acc, self.policy)

    @contextlib.contextmanager
    def reference(self):
        """The frozen reference policy: the adapter-disabled policy with LoRA, else the reference copy."""
        if self.peft is None:
            yield self.ref_model
            return
        with self.gathered(), reference_policy(self.peft) as ref:
            yield ref

    @property
    def engine(self):
        return self.jobs.engine

    @property
    def discriminator(self):
        return self.jobs.discriminator

    def _normalizer(self, jobs: list[Job], kind: str) -> float:
        mode = self.cfg.loss.grpo.aggregation
        if kind == "dpo":
            local = sum(float(j.cmask.shape[0] // 2) for j in jobs)
        elif kind == "kto" or mode == "seq_mean":
            local = sum(float(j.cmask.shape[0]) for j in jobs)
        elif mode == "token_mean":
            local = sum(float(j.cmask.sum()) for j in jobs)
        else:
            local = sum(float(j.cmask.shape[0] * self.cfg.rollout.max_new_tokens) for j in jobs)
        return max(self.jobs.global_sum(local), 1.0)

    # ------------------------------------------------------------------ the update
    def _job_terms(self, job: Job, logp: torch.Tensor, cmask: torch.Tensor, norm: float,
                   acc_metrics: dict[str, list[float]], kto_z: torch.Tensor | float = 0.0,
                   extremes: dict[str, float] | None = None, adversarial: bool = True) -> dict[str, torch.Tensor]:
        """The loss terms of one micro-batch (one slice), already aggregated with the step's normaliser.
        `acc_metrics` accumulates weighted means, `extremes` the */max and */min metrics; `adversarial=False`
        leaves out the adversarial term of GRPO jobs."""
        extremes = {} if extremes is None else extremes
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
            is_w = None
            if job.sampler_logprobs is not None:  # rollout correction: the trainer's log-probs at sampling time
                isc = self.cfg.rollout.importance_sampling
                is_w, im = rollout_importance_weights(old, job.sampler_logprobs, cmask, mode=isc.mode,
                                                      clip_min=isc.clip_min, clip_max=isc.clip_max)
                weigh(im, tuple(k for k in im if k.endswith("/mean")), n_tok)
                for k, v in im.items():
                    if not k.endswith("/mean"):
                        extremes[k] = v if k not in extremes else (max if k.endswith("/max") else min)(extremes[k], v)
            terms["grpo"], m = grpo_loss(
                logp, old, job.advantages.to(logp.device), cmask,
                ref_logprobs=None if job.ref_logprobs is None else job.ref_logprobs.to(logp.device),
                beta=gc.beta, eps_low=gc.eps_low, eps_high=gc.eps_high, aggregation=agg, normalizer=norm,
                importance_weights=is_w)
            weigh(m, ("kl", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"), n_tok)
            if job.coef is not None and adversarial:
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
            terms["kto"], m = kto_loss(seq, job.ref_seq.to(seq.device), lab, kl=kto_z.to(seq.device) if torch.is_tensor(kto_z) else kto_z, beta=lc.kto.beta,
                                       desirable_weight=lc.kto.desirable_weight,
                                       undesirable_weight=lc.kto.undesirable_weight, normalizer=norm)
            weigh(m, ("rewards/chosen",), float(lab.sum()))
            weigh(m, ("rewards/rejected",), float((~lab).sum()))
        else:
            raise ValueError(f"unknown job kind {job.kind!r}")
        return terms

    def _idle_loss(self) -> torch.Tensor:
        """0 * the log-prob of a 2-token dummy sequence: a forward/backward with zero gradients, run by a process
        with fewer jobs than the others so that every process joins every gradient collective (DDP's all-reduce,
        FSDP's gathers and reduce-scatters) the same number of times."""
        pad = self.jobs.pad_id
        ids = torch.tensor([[pad, pad]], device=self.acc.device)
        logp = self.policy(ids, torch.ones_like(ids), 1, 1.0)
        return logp.sum() * 0.0

    def update(self, step_jobs: StepJobs, metrics: dict[str, float], *, kinds: tuple[str, ...] | None = None,
               adversarial: bool = True) -> None:
        """One optimizer step on `step_jobs` (its jobs of `kinds`, if given): forward/backward every job, clip, step.

        Every process runs the same number of forward/backward passes (the most jobs any process has; those
        with fewer run zero-loss passes, see `_idle_loss`), and the optimizer step is skipped only when NO
        process has a job, so a process with nothing to do never leaves the others waiting in a collective.
        `adversarial=False` leaves out the adversarial term of GRPO jobs (passes 2.. of loss.grpo.num_iterations).
        """
        jobs = [j for j in step_jobs.jobs if kinds is None or j.kind in kinds]
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
        norms = {k: self._normalizer([j for j in jobs if j.kind == k], k) for k in JOB_KINDS}
        totals: dict[str, float] = {}
        weighted: dict[str, list[float]] = {}
        extremes: dict[str, float] = {}
        self.optimizer.zero_grad(set_to_none=True)
        passes = len(jobs) if world == 1 else int(global_max(self.acc, len(jobs)))
        if passes == 0:  # no process has a job (e.g. no preference pair could be built for any prompt)
            metrics["skipped_update"] = 1.0
            return
        # training mode for the forward/backward passes only: transformers checkpoints activations only in
        # training mode (model.gradient_checkpointing); rollouts and reference scoring run in eval mode
        self.model.train()
        try:
            self._passes(jobs, passes, step_jobs, norms, weights, weighted, extremes, totals, adversarial)
        finally:
            self.model.eval()
        with timed(metrics, "optimizer"):
            if cfg.train.max_grad_norm > 0:
                gn = self.acc.clip_grad_norm_(self.policy.parameters(), cfg.train.max_grad_norm)
                metrics["grad_norm"] = float(gn)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        # each process holds (its share of the global sum) * world; the mean over processes is the global loss
        metrics.update(totals)
        metrics.update({k: s / w for k, (s, w) in weighted.items() if w > 0})
        metrics.update(extremes)
        if "loss/pref_adv" in totals or "loss/sft_adv" in totals:
            metrics["loss/adv"] = totals.get("loss/sft_adv", 0.0) + totals.get("loss/pref_adv", 0.0)
            coefs = [j.coef for j in jobs if j.coef is not None]
            metrics["adv/coef_mean"] = float(torch.cat(coefs).mean()) if coefs else 0.0
        elif "adv/coef_mean_pref" in metrics:  # reward-shaping ablations: the coefficient is still reported
            metrics["adv/coef_mean"] = metrics["adv/coef_mean_pref"]

    def _passes(self, jobs, passes, step_jobs, norms, weights, weighted, extremes, totals, adversarial) -> None:
        lc, world = self.cfg.loss, self.acc.num_processes
        for i in range(passes):
            job = jobs[i] if i < len(jobs) else None
            last = i == passes - 1
            ctx = self.acc.no_sync(self.policy) if (not last and world > 1) else contextlib.nullcontext()
            with ctx:
                if job is None:
                    self.acc.backward(self._idle_loss())
                    continue
                job = job.trimmed()
                ids, attn = trim_padding(job.ids, job.attn, job.cmask.shape[1])
                ids, attn, cmask = ids.to(self.acc.device), attn.to(self.acc.device), job.cmask.to(self.acc.device)
                logp = self.policy(ids, attn, cmask.shape[1], job.temperature)
                # DDP averages gradients over processes
                terms = self._job_terms(job, logp, cmask, norms[job.kind] / world, weighted, step_jobs.kto_z, extremes,
                                        adversarial=adversarial)
                loss, _ = unified_objective(**terms, lambda_adv=lc.lambda_adv, weights=weights)
                self.acc.backward(loss)
            for k, v in terms.items():
                totals[f"loss/{k}"] = totals.get(f"loss/{k}", 0.0) + float(v.detach())
            totals["loss/total"] = totals.get("loss/total", 0.0) + float(loss.detach())

    def optimise(self, step_jobs: StepJobs, metrics: dict[str, float]) -> None:
        """The step's updates. Pass 1 trains every term of the objective on the step's jobs. With
        loss.grpo.num_iterations = K > 1 (TRL's mu), passes 2..K are further optimizer steps on the GRPO term
        ALONE, over the same rollouts, with the clipped ratio against the log-probs they were sampled with
        (`Job.old_logprobs`): the SFT, DPO/KTO and adversarial terms have no importance ratio, so they are
        trained once per batch, on-policy. Pass 1's losses are the step's `loss/*`; the last pass's GRPO loss
        and clip ratio are `loss/grpo_last_pass`, `clip_ratio/region_mean_last_pass`."""
        self.update(step_jobs, metrics)
        iterations = self.cfg.loss.grpo.num_iterations if self.paradigm.online else 1
        for _ in range(1, iterations):
            extra: dict[str, float] = {}
            self.update(step_jobs, extra, kinds=("pref",), adversarial=False)
            for k in ("loss/grpo", "clip_ratio/region_mean", "grad_norm"):
                if k in extra:
                    metrics[f"{k}_last_pass"] = extra[k]
            metrics.update({k: v for k, v in extra.items() if k.startswith("time/")})
        if iterations > 1:
            metrics["grpo/passes"] = float(iterations)

    def step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        step_jobs = self.jobs.build(self.step_idx, metrics)
        with timed(metrics, "update"):
            self.optimise(step_jobs, metrics)
        if self.discriminator is not None and step_jobs.scored:
            teach = [(r, t) for r, t in step_jobs.scored if r.teacher is not None]
            if teach:
                with timed(metrics, "discriminator"):
                    dm = self.discriminator.update([r.prompt for r, _ in teach], [r.teacher for r, _ in teach],
                                                   [t for _, t in teach])
                metrics.update(dm or {})
        metrics["learning_rate"] = float(self.scheduler.get_last_lr()[0])
        metrics["time/step_s"] = time.perf_counter() - t0
        self.step_idx += 1
        return self._reduce_metrics(metrics)

    def _reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """The mean over processes of each metric (*/max and */min: the max / min). Processes may report
        different keys (one had no DPO pair, no KTO row): a key is averaged over the processes that report it,
        except the `loss/*` totals, which each process reports as its share of the global sum (times world)
        and a process without the term contributes 0 to."""
        if self.acc.num_processes == 1:
            return metrics
        from accelerate.utils import gather_object

        keys = sorted(set().union(*gather_object([sorted(metrics)])))
        inf = float("inf")
        rows = []
        for k in keys:
            present = k in metrics or k.startswith("loss/")
            fill = -inf if k.endswith("/max") else inf if k.endswith("/min") else 0.0
            rows.append([metrics.get(k, 0.0 if present else fill), float(present)])
        t = torch.tensor(rows, dtype=torch.float64, device=self.acc.device)
        every = self.acc.gather(t[None]).view(self.acc.num_processes, len(keys), 2)
        out = {}
        for i, k in enumerate(keys):
            vals, seen = every[:, i, 0], every[:, i, 1]
            if k.endswith("/max"):
                out[k] = float(vals.max())
            elif k.endswith("/min"):
                out[k] = float(vals.min())
            else:
                out[k] = float(vals.sum() / max(float(seen.sum()), 1.0))
        return out

    # ------------------------------------------------------------------ checkpoints
    def full_state_dict(self, every_process: bool = False) -> dict[str, torch.Tensor] | None:
        """The policy's full (unsharded) state dict, or None when `self.saved_model` can save itself (no
        sharding). A collective under FSDP / ZeRO-3: every process calls it."""
        if not is_sharded(self.acc):
            return None
        return full_model_state_dict(self.acc, self.policy, every_process=every_process)

    def save(self, step: int) -> Path | None:
        """checkpoints/step-N: weights (LoRA: the adapters), tokenizer, optimizer, scheduler, RNG. Under FSDP the
        full state dicts are gathered (on every process) and the main process writes them."""
        path = None
        self.acc.wait_for_everyone()
        full = self.full_state_dict()
        optim = full_optimizer_state_dict(self.acc, self.policy, self.optimizer)
        if self.acc.is_main_process:
            extra = {}
            if self.discriminator is not None:
                extra["discriminator"] = self.discriminator.state_dict()
            path = save_checkpoint(self.stage_dir / "checkpoints", step, model=_Saving(self.saved_model, full),
                                   tokenizer=self.tokenizer, optimizer=_State(optim), scheduler=self.scheduler,
                                   extra=extra, keep=self.cfg.train.keep_checkpoints)
        self.acc.wait_for_everyone()
        return path

    def restore(self, ckpt: Path) -> None:
        """Optimizer, scheduler, RNG and step from `ckpt` (weights were loaded when the model was built)."""
        state = load_trainer_state(ckpt)
        load_full_optimizer_state_dict(self.acc, self.policy, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        if self.discriminator is not None and state.get("discriminator"):
            self.discriminator.load_state_dict(state["discriminator"])
        self.step_idx = int(state["step"])

    # ------------------------------------------------------------------ the loop
    def train(self, metrics_path: Path, eval_fn=None, stage: str = "", on_step=None) -> int:
        """Steps until train.steps; `on_step(step)`, if given, runs after each step is logged and saved."""
        cfg = self.cfg
        bar = tqdm(total=cfg.train.steps, initial=self.step_idx, desc=f"{cfg.algorithm}",
                   disable=not (cfg.logging.progress and self.acc.is_main_process), dynamic_ncols=True)
        while self.step_idx < cfg.train.steps:
            m = self.step()
            step = self.step_idx
            if cfg.eval.every and eval_fn is not None and step % cfg.eval.every == 0 and step < cfg.train.steps:
                with self.gathered():
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
            if on_step is not None:
                on_step(step)
        bar.close()
        return self.step_idx



class _Saving:
    """`model.save_pretrained` with a gathered full state dict (sharded training), else as is. A PeftModel
    saves only its adapters, whichever it is given."""

    def __init__(self, model, state_dict):
        self.model, self.state_dict = model, state_dict

    def save_pretrained(self, path, **kwargs):
        sd = self.state_dict
        if sd is not None and is_peft_model(self.model):
            from peft import get_peft_model_state_dict

            prefix = "base_model.model."
            sd = get_peft_model_state_dict(self.model, state_dict={prefix + k: v for k, v in sd.items()})
        if sd is not None:
            kwargs["state_dict"] = sd
        self.model.save_pretrained(path, **kwargs)


class _State:
    def __init__(self, state):
        self.state = state

    def state_dict(self):
        return self.state


def _round(v: float) -> float:
    return round(v, 6) if isinstance(v, float) and math.isfinite(v) else v


def _postfix(m: dict[str, float]) -> dict[str, str]:
    keys = [("reward", "reward"), ("loss/total", "loss"), ("adv/coef_mean", "coef"), ("completions/mean_length", "len"),
            ("loss/sft", "sft"), ("chord/mu", "mu"), ("loss/dpo", "dpo"), ("loss/kto", "kto")]
    return {short: f"{m[k]:.3g}" for k, short in keys if k in m}


def find_resume_checkpoint(stage_dir: Path) -> Path | None:
    return latest_checkpoint(stage_dir / "checkpoints")
