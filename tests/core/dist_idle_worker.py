"""Run by test_distributed_idle.py: rank 1 gets no micro-batches at step index 1, no rank gets any at step index 2
(as when no preference pair can be built for a process's prompts); each rank saves its weights."""

import sys

from tests.core.dist_worker import save_rank_weights
from uniapl.config import load_config
from uniapl.training import batch
from uniapl.training.run import run_training

_build = batch.BatchBuilder.build


def build(self, step, metrics):
    if (step == 1 and self.acc.process_index == 1) or step == 2:
        return batch.StepBatch()
    return _build(self, step, metrics)


if __name__ == "__main__":
    batch.BatchBuilder.build = build
    cfg = load_config(None, sys.argv[2:] + [f"output_dir={sys.argv[1]}"])
    run_training(cfg, on_stage_end=save_rank_weights)
