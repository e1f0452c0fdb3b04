"""Split a prompt set by key into train / validation / eval files, with the teacher's answers joined in.

    prep/data/train.jsonl, validation.jsonl, eval.jsonl   uniapl records: key, prompt, instruction_id_list,
                                                          kwargs, teacher (the published answer)
    split.json                                            {"train_keys": [...], "validation_keys": [...],
                                                           "eval_keys": [...], "seed", "sources"}
The split is a seeded shuffle of the keys (prompts that have an answer); rewriting it with the same
inputs gives the same files, and an existing split.json that disagrees is an error (results on one
split are not silently mixed with another's).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from uniapl.data.jsonl import iter_jsonl
from uniapl.experiment.config import SplitConfig
from uniapl.infra.schema import ConfigError


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def split_records(cfg: SplitConfig) -> dict[str, list[dict[str, Any]]]:
    """{"train", "validation", "eval"} -> rows (key, prompt, instruction_id_list, kwargs[, teacher])."""
    prompts = [row for _, row in iter_jsonl(cfg.prompts, error=ConfigError)]
    for i, row in enumerate(prompts, 1):
        for k in ("key", "prompt", "instruction_id_list"):
            if k not in row:
                raise ConfigError(f"{cfg.prompts}:{i}: split.prompts: record lacks '{k}'")
    answers: dict[Any, str] | None = None
    if cfg.teacher:
        answers = {}
        for where, row in iter_jsonl(cfg.teacher, error=ConfigError):
            if cfg.join not in row or not isinstance(row.get("response"), str):
                raise ConfigError(f"{where}: split.teacher: record needs '{cfg.join}' and a string 'response'")
            answers[row[cfg.join]] = row["response"]
    rows = []
    for p in prompts:
        row = {k: p[k] for k in ("key", "prompt", "instruction_id_list")}
        row["kwargs"] = p.get("kwargs") or [{} for _ in p["instruction_id_list"]]
        if answers is not None:
            if p[cfg.join] not in answers or not answers[p[cfg.join]].strip():
                continue  # no teacher answer: the prompt takes no part
            row["teacher"] = answers[p[cfg.join]]
        rows.append(row)
    if len({r["key"] for r in rows}) != len(rows):
        raise ConfigError(f"{cfg.prompts}: split.prompts: keys are not unique")
    if cfg.eval + cfg.validation >= len(rows):
        raise ConfigError(f"split: eval ({cfg.eval}) + validation ({cfg.validation}) leave no training prompt "
                          f"of {len(rows)}")
    order = sorted(rows, key=lambda r: str(r["key"]))
    random.Random(f"uniapl-split:{cfg.seed}").shuffle(order)
    ev, va = order[: cfg.eval], order[cfg.eval : cfg.eval + cfg.validation]
    tr = order[cfg.eval + cfg.validation :]
    by_key = lambda rs: sorted(rs, key=lambda r: str(r["key"]))  # noqa: E731 - files in key order
    return {"train": by_key(tr), "validation": by_key(va), "eval": by_key(ev)}


def write_split(cfg: SplitConfig, out: Path) -> dict[str, Path]:
    """Write prep/data/{train,validation,eval}.jsonl and split.json under `out`; the split's file paths."""
    parts = split_records(cfg)
    data_dir = out / "prep" / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    split = {"train_keys": [r["key"] for r in parts["train"]], "validation_keys": [r["key"] for r in parts["validation"]],
             "eval_keys": [r["key"] for r in parts["eval"]], "seed": cfg.seed,
             "sources": {"prompts": cfg.prompts, "teacher": cfg.teacher, "join": cfg.join}}
    path = out / "split.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if {k: old.get(k) for k in ("train_keys", "validation_keys", "eval_keys")} != \
                {k: split[k] for k in ("train_keys", "validation_keys", "eval_keys")}:
            raise ConfigError(f"{path} holds another split than the config now gives (split.* changed?); "
                              f"delete it (and the runs made on it) or choose another output_dir")
    _atomic(path, json.dumps(split, indent=1) + "\n")
    files = {}
    for name, rows in parts.items():
        files[name] = data_dir / f"{name}.jsonl"
        _atomic(files[name], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return files


__all__ = ["split_records", "write_split"]
