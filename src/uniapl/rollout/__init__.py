"""Rollout engines behind one interface (`RolloutEngine.generate(prompt_ids, SamplingParams)`)."""

from uniapl.rollout.base import (ENGINES, RolloutBatch, RolloutEngine, SamplingParams, build_engine,
                                 build_engine_from_config, register_engine)
from uniapl.rollout import engine, vllm_engine  # noqa: F401  (register "hf", "vllm"; vLLM is imported on use)
from uniapl.rollout.engine import EngineOptions

__all__ = ["ENGINES", "EngineOptions", "RolloutBatch", "RolloutEngine", "SamplingParams", "build_engine",
           "build_engine_from_config", "register_engine"]
