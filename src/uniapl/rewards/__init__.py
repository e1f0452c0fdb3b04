"""Rewards for GRPO beyond IFEval: user functions with TRL's signature, combined with the IFEval verifier.

``reward.functions: ["pkg.module:function", ...]`` (or ``"path/to/file.py:function"``), each called as TRL
calls a reward function: ``f(prompts, completions, completion_ids, trainer_state, **columns) ->
list[float | None]``; ``reward.weights`` weigh them (one per reward, the verifier first when on);
``reward.verifier: ifeval | none`` keeps or drops the IFEval reward. Bundled: `uniapl.rewards.math:final_answer`.
"""

from uniapl.rewards.functions import (RewardError, RewardFunction, Rewards, load_function, nanstd,
                                      reward_metrics, weighted_sum)

__all__ = ["RewardError", "RewardFunction", "Rewards", "load_function", "nanstd", "reward_metrics", "weighted_sum"]
