"""`uniapl data build`: instruction-following prompts (IFEval layout) from plain prompts.

    base prompts -> [drop those overlapping IFEval] -> + K compatible IFEval constraints each -> JSONL

Each output line is ``{"key", "prompt", "instruction_id_list", "kwargs", "base_prompt"}``: what
`uniapl train` (``data.*.path: FILE.jsonl``) and `uniapl ifeval score --prompts` read.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uniapl.data.constraints import compose_prompt, constraints_for, generatable_ids
from uniapl.data.decontaminate import NgramIndex
from uniapl.data.jsonl import DataError, iter_jsonl

__all__ = ["BuildStats", "read_base_prompts", "parse_num_constraints", "select_ids", "build_records", "write_jsonl_atomic"]


def _prompt_text(value: Any, where: str, field_name: str) -> str:
    """A string, or the last user turn of a list of chat messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        users = [m.get("content") for m in value if m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            return users[-1]
    raise DataError(f"{where}: {field_name!r} should be a string (or chat messages with a user turn), "
                    f"got {type(value).__name__}")


def read_base_prompts(path: str, *, field_name: str = "prompt", key_field: str = "key", split: str = "train",
                      name: str | None = None) -> Iterator[tuple[str, Any, str]]:
    """(where, key or None, prompt text) for each base prompt.

    `path`: a ``.jsonl`` file (one object a line), a ``.json`` file (a list of objects or of strings), a
    ``.txt`` file (one prompt a line), a dataset saved with ``save_to_disk`` or a hub dataset id.
    """
    p = Path(path)
    if p.suffix == ".txt":
        if not p.is_file():
            raise DataError(f"file not found: {p}")
        with p.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield f"{p}:{lineno}", None, line.rstrip("\n")
        return
    if p.suffix == ".jsonl":
        rows: Iterator[tuple[str, Any]] = iter_jsonl(p)
    elif p.suffix == ".json":
        if not p.is_file():
            raise DataError(f"file not found: {p}")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{e.lineno}: not valid JSON: {e.msg}") from None
        if not isinstance(data, list):
            raise DataError(f"{p}: expected a JSON list of prompts (objects or strings), got {type(data).__name__}")
        rows = ((f"{p}[{i}]", r if isinstance(r, dict) else {field_name: r}) for i, r in enumerate(data))
    else:
        rows = _dataset_rows(path, split, name)
    for where, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object, got {type(row).__name__}")
        if row.get(field_name) is None:
            raise DataError(f"{where}: no {field_name!r} field (choose the prompt field with --field); "
                            f"fields: {', '.join(sorted(row))}")
        yield where, row.get(key_field), _prompt_text(row[field_name], where, field_name)


def _dataset_rows(path: str, split: str, name: str | None) -> Iterator[tuple[str, dict]]:
    import datasets

    p = Path(path)
    try:
        if p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "state.json").exists()):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{path}: no split {split!r}; splits: {', '.join(ds)}")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(path, name, split=split)
    except DataError:
        raise
    except Exception as e:  # not found, offline, bad split: one message, no traceback
        raise DataError(f"{path}: cannot load the dataset (split {split!r}): {type(e).__name__}: {e}") from None
    for i, row in enumerate(ds):
        yield f"{path}[{split}][{i}]", dict(row)


def parse_num_constraints(text: str) -> tuple[int, int]:
    """``"3"`` -> (3, 3); ``"1-3"`` -> (1, 3)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(text))
    if not m:
        raise DataError(f"--num-constraints: expected K or MIN-MAX (e.g. 3 or 1-3), got {text!r}")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if lo > hi:
        raise DataError(f"--num-constraints: {lo}-{hi} is an empty range")
    return lo, hi


def select_ids(include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
    """The instruction ids to draw from: all generatable ones, or those matching `include` (an id or a
    category prefix such as ``detectable_format:``), minus those matching `exclude`."""
    every = list(generatable_ids())

    def hits(pattern: str) -> list[str]:
        found = [i for i in every if i == pattern or (pattern.endswith(":") and i.startswith(pattern))]
        if not found:
            raise DataError(f"unknown instruction id or category {pattern!r}; known ids: {', '.join(every)}")
        return found

    chosen = [i for i in every if any(i in hits(p) for p in include)] if include else every
    dropped = {i for p in exclude for i in hits(p)}
    out = [i for i in chosen if i not in dropped]
    if not out:
        raise DataError("no instruction ids left to draw from (check --instructions / --exclude)")
    return out


@dataclass
class BuildStats:
    read: int = 0
    empty: int = 0
    contaminated: int = 0
    written: int = 0
    contaminated_keys: Counter = field(default_factory=Counter)  # evaluation prompt key -> how many dropped
    per_id: Counter = field(default_factory=Counter)
    per_k: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read, "empty_skipped": self.empty, "decontaminated": self.contaminated,
            "written": self.written,
            "constraints_per_prompt": {str(k): v for k, v in sorted(self.per_k.items())},
            "instruction_counts": dict(sorted(self.per_id.items())),
            "eval_prompts_matched": len(self.contaminated_keys),
        }


def build_records(base: Iterator[tuple[str, Any, str]], *, num_constraints: tuple[int, int], seed: int,
                  allowed: Sequence[str], index: NgramIndex | None = None, stats: BuildStats | None = None,
                  progress=None) -> Iterator[dict]:
    """Yield one IFEval-layout record per kept base prompt (see the module docstring)."""
    import random

    stats = stats if stats is not None else BuildStats()
    lo, hi = num_constraints
    for i, (where, key, text) in enumerate(base):
        stats.read += 1
        if progress is not None:
            progress.update(1)
        if not text.strip():
            stats.empty += 1
            continue
        if index is not None:
            hit = index.match(text)
            if hit is not None:
                stats.contaminated += 1
                stats.contaminated_keys[hit] += 1
                continue
        k = lo if lo == hi else random.Random(f"uniapl-k:{seed}:{i}").randint(lo, hi)
        try:
            ids, kwargs = constraints_for(seed, i, text, k, allowed)
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
        stats.written += 1
        stats.per_k[k] += 1
        stats.per_id.update(ids)
        yield {"key": key if key is not None else i, "prompt": compose_prompt(text, ids, kwargs),
               "instruction_id_list": ids, "kwargs": kwargs, "base_prompt": text}


def write_jsonl_atomic(path: str | Path, rows, *, overwrite: bool = False) -> int:
    """Write rows as JSONL to a temporary file next to `path`, then rename it into place."""
    out = Path(path)
    if out.exists() and not overwrite:
        raise DataError(f"{out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would survive the rename
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n
