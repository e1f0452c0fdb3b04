"""Checkpoints in Hugging Face format plus trainer state, written atomically.

A checkpoint is written into `step-NNNNNN.tmp/` and renamed to `step-NNNNNN/` only when complete, so a
crash never leaves a half-written checkpoint that `latest_checkpoint` would pick up.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"
INFO_FILE = "trainer_state.json"


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(directory: Path, step: int, *, model, tokenizer, optimizer, scheduler, extra: dict[str, Any],
                    keep: int = 0) -> Path:
    """Write checkpoint `directory/step-{step}` (main process only). Returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:06d}"
    tmp = directory / f"step-{step:06d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    torch.save(
        {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
         **extra},
        tmp / STATE_FILE,
    )
    (tmp / INFO_FILE).write_text(json.dumps({"step": step}, indent=2))
    with open(tmp / INFO_FILE) as f:  # make sure the data is on disk before the rename publishes it
        os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep > 0:
        for old in list_checkpoints(directory)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first (unfinished `.tmp` directories are ignored)."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp") and (p / INFO_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(directory: Path) -> Path | None:
    ckpts = list_checkpoints(directory)
    return ckpts[-1] if ckpts else None


def load_trainer_state(path: Path) -> dict[str, Any]:
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
