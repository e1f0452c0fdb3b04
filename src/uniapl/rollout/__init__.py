"""Rollout engines behind one interface (`RolloutEngine.generate(prompt_ids, SamplingParams)`)."""

from uniapl.rollout.base import ENGINES, RolloutBatch, RolloutEngine, SamplingParams, build_engine, register_engine
from uniapl.rollout import hf_sampler  # noqa: F401  (registers "hf")

__all__ = ["ENGINES", "RolloutBatch", "RolloutEngine", "SamplingParams", "build_engine", "register_engine"]
