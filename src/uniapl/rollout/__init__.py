"""Rollout engines behind one interface (`RolloutEngine.generate(prompt_ids, SamplingParams)`)."""

from uniapl.rollout.base import ENGINES, RolloutBatch, RolloutEngine, SamplingParams, build_engine, register_engine
from uniapl.rollout import engine  # noqa: F401  (registers "hf")
from uniapl.rollout.engine import EngineOptions

__all__ = ["ENGINES", "EngineOptions", "RolloutBatch", "RolloutEngine", "SamplingParams", "build_engine",
           "register_engine"]
