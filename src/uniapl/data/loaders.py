"""Records from JSONL files, `datasets` (local dir or hub id) or the bundled synthetic task.

Every record keeps where it came from ("file:line", "dataset[row]") so that errors name it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from uniapl.data.jsonl import DataError, iter_jsonl
from uniapl.data.records import Record

# record field -> column names accepted for it, first match wins
ALIASES: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "messages", "instruction", "question"),
    "instruction_id_list": ("instruction_id_list",),
    "kwargs": ("kwargs",),
    "ground_truth": ("ground_truth", "response", "reference", "answer"),
    "teacher": ("teacher", "teacher_response"),
    "chosen": ("chosen",),
    "rejected": ("rejected",),
    "completion": ("completion",),
    "label": ("label",),
    "key": ("key", "id"),
}


def _check_messages(value: Any, where: str) -> None:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: 'prompt' must be a string or a non-empty list of chat messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: prompt message {i} must be a mapping with 'role' and 'content', got {m!r}")


def record_from_row(row: dict, where: str, field_map: dict[str, str] | None = None) -> Record:
    """One raw row (a JSON object or a dataset row) -> Record, validating types."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    field_map = field_map or {}
    values: dict[str, Any] = {}
    prompt_column = None
    for fld, names in ALIASES.items():
        names = (field_map[fld],) if fld in field_map else names
        for name in names:
            if name in row and row[name] is not None:
                values[fld] = row[name]
                if fld == "prompt":
                    prompt_column = name
                break
    if "prompt" not in values:
        raise DataError(f"{where}: missing the prompt (one of {', '.join(ALIASES['prompt'])})")
    prompt = values["prompt"]
    if not isinstance(prompt, str):
        _check_messages(prompt, where)
        # a trailing assistant turn in `messages` is the reference answer (chat-format SFT data)
        if prompt[-1].get("role") == "assistant":
            values.setdefault("ground_truth", prompt[-1]["content"])
            values["prompt"] = prompt[:-1]
            if not values["prompt"]:
                raise DataError(f"{where}: 'messages' holds only an assistant turn, no prompt")
    ids = values.get("instruction_id_list", [])
    kwargs = values.get("kwargs", [{} for _ in ids])
    if isinstance(kwargs, str):  # e.g. argilla/ifeval-like-data stores kwargs as a JSON string
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: 'kwargs' is a string but not valid JSON: {e.msg}") from e
        if isinstance(kwargs, dict) and len(ids) == 1:
            kwargs = [kwargs]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DataError(f"{where}: 'instruction_id_list' must be a list of strings")
    if not isinstance(kwargs, list) or not all(isinstance(k, dict) for k in kwargs):
        raise DataError(f"{where}: 'kwargs' must be a list of mappings, one per instruction")
    if len(kwargs) != len(ids):
        raise DataError(f"{where}: {len(ids)} instruction ids but {len(kwargs)} kwargs entries")
    for fld in ("ground_truth", "teacher", "chosen", "rejected", "completion"):
        if fld in values and not isinstance(values[fld], str):
            raise DataError(f"{where}: '{fld}' must be a string")
    values["instruction_id_list"] = ids
    values["kwargs"] = [{k: v for k, v in kw.items() if v is not None} for kw in kwargs]
    if "label" in values:
        values["label"] = bool(values["label"])
    columns = {k: v for k, v in row.items() if k != prompt_column}
    return Record(**values, source=where, columns=columns)


def read_jsonl(path: str | Path, field_map: dict[str, str] | None = None, limit: int | None = None) -> list[Record]:
    out = []
    for where, row in iter_jsonl(path):
        out.append(record_from_row(row, where, field_map))
        if limit is not None and len(out) >= limit:
            break
    return out


def read_dataset(path: str, split: str, name: str | None, field_map: dict[str, str] | None = None,
                 limit: int | None = None) -> list[Record]:
    import datasets

    p = Path(path)
    if p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "state.json").exists()):  # save_to_disk output
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    else:
        ds = datasets.load_dataset(path, name, split=split)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return [record_from_row(dict(row), f"{path}[{split}][{i}]", field_map) for i, row in enumerate(ds)]


_SYNTHETIC_CACHE: dict[tuple, dict[str, list[Record]]] = {}


def synthetic_task(cfg) -> dict[str, list[Record]]:
    """The synthetic task for `cfg`, generated once per process (stages and the tokenizer share it)."""
    import dataclasses

    from uniapl.data.synthetic import generate_task

    key = dataclasses.astuple(cfg)
    if key not in _SYNTHETIC_CACHE:
        _SYNTHETIC_CACHE.clear()  # keep one task: they are a few MB each
        _SYNTHETIC_CACHE[key] = generate_task(cfg)
    return _SYNTHETIC_CACHE[key]


def load_records(source, synthetic_cfg=None) -> list[Record]:
    """DataSource -> records. `synthetic:<split>` builds the bundled task (train / eval / warmup)."""
    path = source.path
    if not path:
        raise DataError("a data source has an empty 'path'")
    if path.startswith("synthetic:"):
        from uniapl.data.synthetic import SyntheticTaskConfig

        split = path.split(":", 1)[1]
        task = synthetic_task(synthetic_cfg or SyntheticTaskConfig())
        if split not in task:
            raise DataError(f"unknown synthetic split {split!r}; available: {', '.join(task)}")
        recs = task[split]
        return recs[: source.limit] if source.limit is not None else recs
    fmt = getattr(source, "format", "records")
    if fmt != "records":
        from uniapl.data import layouts

        load = {"ifeval_like": layouts.load_ifeval_like, "ifbench": layouts.load_ifbench, "autoif": layouts.load_autoif}[fmt]
        if Path(path).is_file():
            recs = load(path)
        else:
            import datasets

            ds = datasets.load_dataset(path, source.name, split=source.split)
            recs = load(ds, name=f"{path}[{source.split}]")
        return recs[: source.limit] if source.limit is not None else recs
    if path.endswith(".jsonl") or (path.endswith(".json") and Path(path).is_file()):
        return read_jsonl(path, source.field_map, source.limit)
    return read_dataset(path, source.split, source.name, source.field_map, source.limit)


def require(records: Iterable[Record], fields: Iterable[str], purpose: str) -> None:
    """Raise DataError naming the first record that lacks a field `purpose` needs."""
    fields = list(fields)
    for r in records:
        for f in fields:
            v = getattr(r, f)
            if v is None or (f == "instruction_id_list" and not v):
                raise DataError(f"{r.source}: record lacks '{f}', which {purpose} needs")


def validate_specs(records: Iterable[Record]) -> None:
    """Unknown instruction ids / bad kwargs are an error naming the record."""
    from uniapl.verifiers import validate_spec

    for r in records:
        if r.instruction_id_list:
            validate_spec(r.instruction_id_list, r.kwargs, where=r.source)
