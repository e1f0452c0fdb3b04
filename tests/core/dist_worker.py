"""Run by test_distributed.py under `accelerate launch --cpu --num_processes 2`: each rank saves its own weights."""

import sys
from pathlib import Path

import torch

from uniapl.config import load_config
from uniapl.training.run import run_training


def save_rank_weights(name, model, acc):
    out = Path(acc.project_dir)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / f"rank{acc.process_index}.pt")
    (out / f"rank{acc.process_index}.world").write_text(str(acc.num_processes))


if __name__ == "__main__":
    cfg = load_config(None, sys.argv[2:] + [f"output_dir={sys.argv[1]}"])
    run_training(cfg, on_stage_end=save_rank_weights)
