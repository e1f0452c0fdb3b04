"""Checkpoints in Hugging Face format plus trainer state, written atomically.

A checkpoint is written into `step-NNNNNN.tmp/` and renamed to `step-NNNNNN/` only when complete, so a
crash never leaves a half-written checkpoint that `latest_checkpoint` would pick up.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uniapl.infra.atomic import fsync_dir, fsync_file
from uniapl.infra.faults import fault_point

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
    for f in tmp.rglob("*"):  # every file on disk before the rename publishes the checkpoint
        if f.is_file():
            fsync_file(f)
    fsync_dir(tmp)
    fault_point("checkpoint.written")
    old = directory / f"step-{step:06d}.old"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():  # re-saving a step: move the complete one aside, never delete it before the new one is in
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(directory)
    if old.exists():
        shutil.rmtree(old)
    if keep > 0:
        for stale in list_checkpoints(directory)[:-keep]:  # renamed first: a half-deleted one is never listed
            aside = stale.with_name(stale.name + ".old")
            os.replace(stale, aside)
            shutil.rmtree(aside, ignore_errors=True)
    return final


class ModelToSave:
    """`model.save_pretrained` with a gathered full state dict (sharded training), else as is. A PeftModel
    saves only its adapters, whichever it is given."""

    def __init__(self, model, state_dict):
        self.model, self.state_dict = model, state_dict

    def save_pretrained(self, path, **kwargs):
        from uniapl.models.lora import is_peft_model

        sd = self.state_dict
        if sd is not None and is_peft_model(self.model):
            from peft import get_peft_model_state_dict

            prefix = "base_model.model."
            sd = get_peft_model_state_dict(self.model, state_dict={prefix + k: v for k, v in sd.items()})
        if sd is not None:
            kwargs["state_dict"] = sd
        self.model.save_pretrained(path, **kwargs)


class StateToSave:
    """A state dict already gathered (the optimizer's, under sharding) in the shape `save_checkpoint` takes."""

    def __init__(self, state):
        self.state = state

    def state_dict(self):
        return self.state


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first (unfinished `.tmp` and set-aside `.old` directories are ignored)."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob("step-*") if p.is_dir() and re.fullmatch(r"step-\d+", p.name) and (p / INFO_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(directory: Path) -> Path | None:
    ckpts = list_checkpoints(directory)
    return ckpts[-1] if ckpts else None


def load_trainer_state(path: Path) -> dict[str, Any]:
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)


def write_final(stage_dir: Path, model, tok, stage: str = "") -> Path:
    """The stage's final model: written into final.tmp/, fsync'ed, then swapped in for final/ (an earlier
    final/ is moved aside first, so there is always a complete one or none, never half of one)."""
    final_dir, tmp, old = stage_dir / "final", stage_dir / "final.tmp", stage_dir / "final.old"
    for d in (tmp, old):
        if d.exists():
            shutil.rmtree(d)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    for f in tmp.iterdir():
        if f.is_file():
            fsync_file(f)
    fsync_dir(tmp)
    fault_point("final.written", stage)
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp, final_dir)
    fsync_dir(stage_dir)
    if old.exists():
        shutil.rmtree(old)
    return final_dir


def write_merged(peft_model, final_dir: Path, tok) -> None:
    """final/merged/: the adapters folded into a plain HF model (written aside, then renamed). Main process."""
    from uniapl.models.lora import save_merged

    tmp, dst = final_dir / "merged.tmp", final_dir / "merged"
    for d in (tmp, dst):
        if d.exists():
            shutil.rmtree(d)
    save_merged(peft_model, tmp, tok)
    os.replace(tmp, dst)
