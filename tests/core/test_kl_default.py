"""The paper's KL coefficient (0.001) is the default; beta: 0 switches the term (and the reference) off."""

import json
from pathlib import Path

from uniapl.config import load_config
from uniapl.training.run import run_training


def test_default_beta_is_the_papers_and_kl_is_reported(tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["algorithm=grpo", "train.steps=1"])
    assert cfg.loss.grpo.beta == 0.001
    run_training(cfg)
    row = json.loads((Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()[-1])
    assert "kl" in row and row["kl"] >= 0.0  # a reference model was loaded and the k3 term computed


def test_beta_zero_loads_no_reference(tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["algorithm=grpo", "train.steps=1", "loss.grpo.beta=0"])
    run_training(cfg)
    row = json.loads((Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()[-1])
    assert "kl" not in row
