"""The GRPO term: G sampled answers per prompt, rewards turned into group-normalised advantages, the clipped
surrogate and a k3 KL to the frozen reference.

    A_i   = (r_i - mean_group(r)) / (std_group(r) + 1e-4)          (loss.grpo.advantage_scale: group | batch | none)
    l_it  = -w_it min(rho_it A_i, clip(rho_it, 1 - eps_low, 1 + eps_high) A_i) + beta k3(pi, pi_ref)_it
    rho   = pi_theta / pi_old,   w = 1 or the rollout correction pi_theta / pi_sampler (truncated or masked)

aggregated by `loss.grpo.aggregation` over the step's completion tokens (or rows). pi_old is the policy that
sampled (its log-probs are recorded when loss.grpo.num_iterations > 1; on pass 1 they equal pi_theta's, the
ratio is 1 and clipping is inactive). The term iterates: passes 2..K train it alone on the same rollouts.
"""

from __future__ import annotations

import torch

from uniapl.data.loaders import require, validate_specs
from uniapl.losses import group_advantages, grpo_loss, rollout_importance_weights
from uniapl.objective import register_term
from uniapl.objective.base import MicroBatch, Sequences, SliceBatch, StepContext, Term, UpdateLog, token_normalizer


@register_term
class GRPO(Term):
    name = "grpo"
    slices = ("pref",)
    reads = "rollouts"
    exclusive = "preference"
    sets_group_size = True
    needs_rewards = True
    iterates = True

    def __init__(self, cfg, paradigm, slice_name, ctx=None):
        super().__init__(cfg, paradigm, slice_name, ctx)
        self.grpo = cfg.loss.grpo
        isc = cfg.rollout.importance_sampling.correction
        # "auto": on for an engine whose log-probs are not the trainer's own (vLLM); the built-in engine's are
        # (tests/core/test_logprobs_and_sampler.py)
        engine = getattr(ctx, "engine", None)
        self.importance_correction = (not getattr(engine, "logprobs_match_trainer", False)) if isc == "auto" else isc

    def rollouts_per_prompt(self) -> int:
        return self.cfg.rollout.num_generations

    def reference(self):
        return "token" if self.grpo.beta > 0 else None

    def needs_old_logprobs(self) -> bool:
        return self.grpo.num_iterations > 1

    def check_records(self, records) -> None:
        if self.cfg.reward.verifier == "ifeval":  # reward.verifier=none: only reward.functions score the rollouts
            require(records, ["instruction_id_list"], f"algorithm '{self.cfg.algorithm}' (verifiable rewards)")
        validate_specs(records)

    def prepare(self, sl: SliceBatch, ctx: StepContext, metrics: dict[str, float]) -> Sequences:
        g = sl.group_size
        rewards = sl.rewards
        grouped = rewards.view(-1, g)
        metrics["reward_std"] = float(grouped.std(1, unbiased=True).mean()) if g > 1 else 0.0
        metrics["frac_reward_zero_std"] = float((grouped.std(1, unbiased=False) == 0).float().mean())
        batch = sl.rollout
        lengths = batch.completion_mask.sum(-1).float()
        metrics["completions/mean_length"] = float(lengths.mean())
        metrics["completions/min_length"] = float(lengths.min())
        metrics["completions/max_length"] = float(lengths.max())
        ended = torch.isin(batch.completion_ids.cpu(), torch.tensor(ctx.eos_ids)).any(-1)
        metrics["completions/clipped_ratio"] = float((~ended).float().mean())
        seqs = sl.rollouts
        seqs.fields["advantages"] = group_advantages(rewards, g, scale=self.grpo.advantage_scale)
        if self.importance_correction and self.cfg.rollout.temperature > 0:
            seqs.fields["sampler_logprobs"] = batch.logprobs
        return seqs

    def normalizer(self, micro_batches: list[MicroBatch]) -> float:
        return token_normalizer(self.grpo.aggregation, micro_batches, self.cfg.rollout.max_new_tokens)

    def loss(self, logp: torch.Tensor, mb: MicroBatch, normalizer: float, log: UpdateLog) -> torch.Tensor:
        f, g = mb.fields, self.grpo
        n_tok = float(mb.cmask.sum())
        old = f["old_logprobs"].to(logp.device) if "old_logprobs" in f else logp.detach()
        weights = None
        if "sampler_logprobs" in f:  # rollout correction: the trainer's log-probs at sampling time vs the engine's
            isc = self.cfg.rollout.importance_sampling
            weights, im = rollout_importance_weights(old, f["sampler_logprobs"], mb.cmask, mode=isc.mode,
                                                     clip_min=isc.clip_min, clip_max=isc.clip_max)
            log.mean(im, tuple(k for k in im if k.endswith("/mean")), n_tok)
            for k, v in im.items():
                if not k.endswith("/mean"):
                    log.extreme(k, v)
        ref = f["ref_logprobs"].to(logp.device) if "ref_logprobs" in f else None
        loss, m = grpo_loss(logp, old, f["advantages"].to(logp.device), mb.cmask, ref_logprobs=ref, beta=g.beta,
                            eps_low=g.eps_low, eps_high=g.eps_high, aggregation=g.aggregation, normalizer=normalizer,
                            importance_weights=weights)
        log.mean(m, ("kl", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"), n_tok)
        return loss
