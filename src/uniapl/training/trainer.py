"""The one training loop. Every paradigm (SFT, GRPO, A-SFT, A-GRPO, unified, CHORD, DPO, KTO ...) runs through
`Trainer.step`: build the step's batch (`uniapl.training.batch`), then one update that minimises the
paradigm's objective (`uniapl.algorithms`):

    L = w * sum_{(t, c) on sft} c * L_t  +  (1 - w) * sum_{(t, c) on pref} c * L_t

w the paradigm's weighting rule (eq. 2's alpha, CHORD's mu(step)), each term L_t (`uniapl.objective`) divided
by its normaliser over the whole step (all micro-batches, all processes), so gradient accumulation and data
parallelism give the gradient of one big batch. This file is the update, the loop and checkpointing.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_scheduler

from uniapl.algorithms import Paradigm, get_algorithm, slice_objective
from uniapl.config import Config
from uniapl.data.padding import trim_padding
from uniapl.data.records import Record
from uniapl.infra.timing import timed
from uniapl.models.logprobs import PolicyLogprobs
from uniapl.models.lora import is_peft_model, policy_module, reference_policy
from uniapl.objective import SLICES, MicroBatch
from uniapl.training.batch import BatchBuilder, Group, StepBatch
from uniapl.training.checkpoint import (ModelToSave, StateToSave, latest_checkpoint, load_trainer_state, save_checkpoint,
                               set_rng_state)
from uniapl.training.distributed import (full_model_state_dict, full_optimizer_state_dict, gathered_params, global_max, is_sharded,
                                load_full_optimizer_state_dict)
from uniapl.training.metrics import UpdateLog, reduce_over_processes


class Trainer:
    def __init__(self, cfg: Config, accelerator: Accelerator, model, tokenizer, *, sft_records: list[Record],
                 pref_records: list[Record], stage_dir: Path, eos_ids: list[int], ref_model=None):
        """`ref_model`: the frozen reference (the stage's starting weights) when the paradigm needs one;
        by default a copy of `model` (pass it explicitly when `model` holds resumed weights). With a PEFT
        `model` (model.lora) the reference is the adapter-disabled policy and no copy is made."""
        self.cfg = cfg
        self.acc = accelerator
        self.paradigm: Paradigm = get_algorithm(cfg.algorithm)
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
        self.iterations = paradigm_iterations(cfg, self.paradigm)
        updates = tc.steps * self.iterations
        self.scheduler = get_scheduler(tc.lr_scheduler, self.optimizer, num_warmup_steps=int(tc.warmup_ratio * updates),
                                       num_training_steps=max(updates, 1))
        self.ref_model = None
        needs_ref = needs_reference(cfg, self.paradigm)
        if needs_ref and self.peft is None:  # copied before sharding: every process holds the whole reference
            ref = ref_model if ref_model is not None else copy.deepcopy(model)
            self.ref_model = ref.to(self.acc.device).eval().requires_grad_(False)
        self.policy, self.optimizer, self.scheduler = accelerator.prepare(self.policy, self.optimizer, self.scheduler)
        self.batches = BatchBuilder(cfg, self.paradigm, tokenizer, sft_records=sft_records, pref_records=pref_records,
                                    eos_ids=eos_ids, policy_model=lambda: self.model, accelerator=accelerator,
                                    ref_model=self.ref_model, reference=self.reference if needs_ref else None,
                                    gathered=self.gathered)
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
        return self.batches.engine

    @property
    def discriminator(self):
        return self.batches.discriminator

    # ------------------------------------------------------------------ the step
    def step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        batch = self.batches.build(self.step_idx, metrics)
        with timed(metrics, "update"):
            self.optimise(batch, metrics)
        self.batches.update_discriminator(batch, metrics)
        metrics["learning_rate"] = float(self.scheduler.get_last_lr()[0])
        metrics["time/step_s"] = time.perf_counter() - t0
        self.step_idx += 1
        return reduce_over_processes(self.acc, metrics)

    def optimise(self, batch: StepBatch, metrics: dict[str, float]) -> None:
        """The step's updates. Pass 1 trains every term of the objective on the step's batch. With
        loss.grpo.num_iterations = K > 1 (TRL's mu), passes 2..K are further optimizer steps on the terms that
        iterate (GRPO) ALONE, over the same rollouts, with the clipped ratio against the log-probs they were
        sampled with (`old_logprobs`): the SFT, DPO/KTO and adversarial terms have no importance ratio, so they
        are trained once per batch, on-policy. Pass 1's losses are the step's `loss/*`; the last pass's GRPO
        loss and clip ratio are `loss/grpo_last_pass`, `clip_ratio/region_mean_last_pass`."""
        self.update(batch.groups, metrics)
        later = self.later_pass_groups(batch.groups)
        for _ in range(1, self.iterations):
            extra: dict[str, float] = {}
            self.update(later, extra, first_pass=False)
            for k in ("loss/grpo", "clip_ratio/region_mean", "grad_norm"):
                if k in extra:
                    metrics[f"{k}_last_pass"] = extra[k]
            metrics.update({k: v for k, v in extra.items() if k.startswith("time/")})
        if self.iterations > 1:
            metrics["grpo/passes"] = float(self.iterations)

    @staticmethod
    def later_pass_groups(groups: list[Group]) -> list[Group]:
        """What passes 2..K of loss.grpo.num_iterations train: the same micro-batches, the iterating terms only."""
        later = [Group(g.slice, g.seqs, [(t, w) for t, w in g.terms if t.iterates], g.micro_batches) for g in groups]
        return [g for g in later if g.terms]

    def update(self, groups: list[Group], metrics: dict[str, float], *, first_pass: bool = True) -> None:
        """One optimizer step on `groups`: for each micro-batch, the policy's log-probs, then the weighted sum of
        its terms' losses, backward; then clip and step.

        Every process runs the same number of forward/backward passes (the most micro-batches any process has;
        those with fewer run zero-loss passes, see `_idle_loss`), and the optimizer step is skipped only when NO
        process has one, so a process with nothing to do never leaves the others waiting in a collective.
        """
        world = self.acc.num_processes
        slice_weight = dict(zip(SLICES, self.paradigm.slice_weights(self.cfg.loss, self.step_idx)))
        if self.paradigm.uses_sft_slice and self.paradigm.uses_pref_slice:
            metrics["weight/sft_slice"] = slice_weight["sft"]
            if self.paradigm.weighting == "chord_mu":
                metrics["chord/mu"] = slice_weight["sft"]
        norms = self._normalizers(groups, first_pass)
        micro = [(g, mb) for g in groups for mb in g.micro_batches]
        log = UpdateLog()
        self.optimizer.zero_grad(set_to_none=True)
        passes = len(micro) if world == 1 else int(global_max(self.acc, len(micro)))
        if passes == 0:  # no process has a micro-batch (e.g. no preference pair could be built for any prompt)
            metrics["skipped_update"] = 1.0
            return
        # training mode for the forward/backward passes only: transformers checkpoints activations only in
        # training mode (model.gradient_checkpointing); rollouts and reference scoring run in eval mode
        self.model.train()
        try:
            for i in range(passes):
                # DDP: gradients are all-reduced once, on the last pass
                with self.acc.no_sync(self.policy) if (i < passes - 1 and world > 1) else contextlib.nullcontext():
                    if i >= len(micro):
                        self.acc.backward(self._idle_loss())
                        continue
                    group, mb = micro[i]
                    mb, logp = self._policy_logprobs(mb)
                    loss, _ = self.micro_batch_loss(group, mb, logp, norms, log, slice_weight[group.slice])
                    self.acc.backward(loss)
        finally:
            self.model.eval()
        with timed(metrics, "optimizer"):
            if self.cfg.train.max_grad_norm > 0:
                norm = self.acc.clip_grad_norm_(self.policy.parameters(), self.cfg.train.max_grad_norm)
                metrics["grad_norm"] = float(norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        # each process holds (its share of the global sum) * world; the mean over processes is the global loss
        metrics.update(log.result())

    def _policy_logprobs(self, mb: MicroBatch) -> tuple[MicroBatch, torch.Tensor]:
        """The micro-batch without its all-padding columns (on the device), and the policy's log-probs of its
        completion tokens [rows, T], with grad."""
        mb = mb.trimmed()
        ids, attn = trim_padding(mb.ids, mb.attn, mb.cmask.shape[1])
        mb = dataclasses.replace(mb, cmask=mb.cmask.to(self.acc.device))
        logp = self.policy(ids.to(self.acc.device), attn.to(self.acc.device), mb.cmask.shape[1], mb.temperature)
        return mb, logp

    def micro_batch_loss(self, group: Group, mb: MicroBatch, logp: torch.Tensor, norms: dict[tuple[str, str], float],
                         log: UpdateLog, slice_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """slice weight x sum of (weight x loss) of the terms reading `mb`; also each term's loss by its key."""
        world = self.acc.num_processes
        losses = {}
        for term, _ in group.terms:  # DDP averages gradients over processes: each normaliser is divided by world
            losses[term.loss_key] = term.loss(logp, mb, norms[(group.slice, term.name)] / world, log)
        loss = slice_objective(slice_weight, [(w, losses[term.loss_key]) for term, w in group.terms])
        for key, value in losses.items():
            log.total(f"loss/{key}", float(value.detach()))
        log.total("loss/total", float(loss.detach()))
        return loss, losses

    def _normalizers(self, groups: list[Group], first_pass: bool) -> dict[tuple[str, str], float]:
        """Each term's normaliser over the whole step: its count over this process's micro-batches, summed over
        processes. Every process reduces every term of the paradigm (of those this pass trains), in the same
        order, even the ones it has no micro-batch of."""
        norms = {}
        for s in SLICES:
            for term, _ in self.batches.terms[s]:
                if first_pass or term.iterates:
                    mbs = [mb for g in groups if any(t is term for t, _ in g.terms) for mb in g.micro_batches]
                    norms[(s, term.name)] = max(self.batches.global_sum(term.normalizer(mbs)), 1.0)
        return norms

    def _idle_loss(self) -> torch.Tensor:
        """0 * the log-prob of a 2-token dummy sequence: a forward/backward with zero gradients, run by a process
        with fewer micro-batches than the others so that every process joins every gradient collective (DDP's
        all-reduce, FSDP's gathers and reduce-scatters) the same number of times."""
        pad = self.batches.pad_id
        ids = torch.tensor([[pad, pad]], device=self.acc.device)
        logp = self.policy(ids, torch.ones_like(ids), 1, 1.0)
        return logp.sum() * 0.0

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
            path = save_checkpoint(self.stage_dir / "checkpoints", step, model=ModelToSave(self.saved_model, full),
                                   tokenizer=self.tokenizer, optimizer=StateToSave(optim), scheduler=self.scheduler,
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


def needs_reference(cfg: Config, paradigm: Paradigm) -> bool:
    """Does some term of the paradigm score its sequences under the frozen reference?"""
    from uniapl.objective import get_term

    return any(get_term(t)(cfg, paradigm, s).reference() is not None for s in SLICES for t in paradigm.term_names(s))


def paradigm_iterations(cfg: Config, paradigm: Paradigm) -> int:
    """Optimizer steps per training step: loss.grpo.num_iterations when a term iterates (GRPO), else 1."""
    from uniapl.objective import get_term

    iterates = any(get_term(t).iterates for s in SLICES for t in paradigm.term_names(s))
    return max(1, cfg.loss.grpo.num_iterations) if iterates else 1


def _round(v: float) -> float:
    return round(v, 6) if isinstance(v, float) and math.isfinite(v) else v


def _postfix(m: dict[str, float]) -> dict[str, str]:
    keys = [("reward", "reward"), ("loss/total", "loss"), ("adv/coef_mean", "coef"), ("completions/mean_length", "len"),
            ("loss/sft", "sft"), ("chord/mu", "mu"), ("loss/dpo", "dpo"), ("loss/kto", "kto")]
    return {short: f"{m[k]:.3g}" for k, short in keys if k in m}


def find_resume_checkpoint(stage_dir: Path) -> Path | None:
    return latest_checkpoint(stage_dir / "checkpoints")


__all__ = ["Trainer", "find_resume_checkpoint", "needs_reference", "paradigm_iterations"]
