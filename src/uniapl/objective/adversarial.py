"""The adversarial term of UniAPL (paper section 3.2, Algorithm 1): the discriminator's coefficient weights the
student's own log-likelihood of its sampled answers.

    L_ADV = -E_{y ~ pi}[ D(x, y_teacher, y) ]  ->  per token  -coef_i log pi(y_it | x_i, y_i,<t)

coef_i = D(x_i, y_teacher, y_i) in [-1, 1] (computed once per step by the plumbing with the configured
discriminator), aggregated like the policy loss (`loss.grpo.aggregation`). It stands on either slice, weighted
by `loss.lambda_adv` in the paradigms of the paper; on a slice without another rollout term it samples
`rollout.adv_num_generations` answers per prompt.

Table 4's ablations are this term's options (`loss.adv_signal`):
    "loss"         (iii, the method): the separate loss term above;
    "reward_raw"   (i): the raw score, times loss.adv_reward_scale, added to the verifiable reward,
    "reward_coef"  (ii): the coefficient, likewise,
                   before the advantages are formed, and no adversarial loss on that slice. These apply where
                   the slice has rewards (GRPO's); on a slice without rewards (the SFT slice, DPO/KTO's) the
                   term stays a loss.
"""

from __future__ import annotations

import torch

from uniapl.data.loaders import require
from uniapl.losses import adversarial_loss
from uniapl.objective import register_term
from uniapl.objective.base import MicroBatch, Sequences, SliceBatch, StepContext, Term, UpdateLog, token_normalizer


@register_term
class Adversarial(Term):
    name = "adversarial"
    reads = "rollouts"
    needs_coefficients = True

    def __init__(self, cfg, paradigm, slice_name, ctx=None):
        super().__init__(cfg, paradigm, slice_name, ctx)
        self.signal = cfg.loss.adv_signal
        self.aggregation = cfg.loss.grpo.aggregation

    @property
    def loss_key(self) -> str:
        return f"{self.slice}_adv"  # loss/sft_adv, loss/pref_adv

    def rollouts_per_prompt(self) -> int:
        return self.cfg.rollout.adv_num_generations

    def check_records(self, records) -> None:
        ref = self.cfg.discriminator.reference
        require(records, [ref], f"the adversarial term (discriminator.reference={ref})")
        if ref == "ground_truth":
            require(records, ["teacher"], "the adversarial term in ground_truth mode")

    def shapes_reward(self, sl: SliceBatch) -> bool:
        return self.signal != "loss" and sl.rewards is not None

    def shape_rewards(self, sl: SliceBatch, metrics: dict[str, float]) -> None:
        if not self.shapes_reward(sl):
            return
        bonus = sl.raw if self.signal == "reward_raw" else sl.coef
        sl.rewards = sl.rewards + self.cfg.loss.adv_reward_scale * bonus
        metrics["reward/shaped"] = float(sl.rewards.mean())
        # reported as the coefficient of the rows it shaped, unless rows trained with the loss report theirs
        metrics.setdefault("adv/coef_mean", metrics[f"adv/coef_mean_{self.slice}"])

    def prepare(self, sl: SliceBatch, ctx: StepContext, metrics: dict[str, float]) -> Sequences | None:
        if self.shapes_reward(sl):
            return None
        sl.rollouts.fields["coef"] = sl.coef
        return sl.rollouts

    def normalizer(self, micro_batches: list[MicroBatch]) -> float:
        return token_normalizer(self.aggregation, micro_batches, self.cfg.rollout.max_new_tokens)

    def loss(self, logp: torch.Tensor, mb: MicroBatch, normalizer: float, log: UpdateLog) -> torch.Tensor:
        coef = mb.fields["coef"]
        loss, _ = adversarial_loss(logp, mb.cmask, coef.to(logp.device), aggregation=self.aggregation,
                                   normalizer=normalizer)
        log.total("loss/adv", float(loss.detach()))  # over both slices
        log.concat("adv/coef_mean", coef)  # over every row trained with the term
        return loss
