"""Loaders for instruction-following training data in its published layouts -> uniapl `Record`s.

* **IFEval-like** (IFEval's ``input_data.jsonl``, ``google/IFEval``, ``argilla/ifeval-like-data``):
  ``key``, ``prompt``, ``instruction_id_list``, ``kwargs`` (a list of objects, or its JSON string;
  None-valued entries are dropped as in the reference).
* **IFBench / IF-RLVR** (``allenai/IF_multi_constraints_upto5``, ``allenai/RLVR-IFeval``):
  ``key``, ``messages`` (chat turns), ``ground_truth`` — a JSON (or Python-literal) string of a list
  of ``{"instruction_id": [...], "kwargs": [...]}`` — plus ``dataset``, ``constraint_type``,
  ``constraint``. IFBench-train constraint ids have no built-in checker: register one by id, or pass
  ``skip_unknown=True`` to drop such records (counted in the log).
* **AutoIF** (QwenLM/AutoIF ``query_rft.jsonl`` layout): ``prompt`` (or ``query`` + ``instruction``),
  ``instruction``, ``eval_func`` (a list of ``[source, accuracy]`` pairs or of sources), ``cases``.
  Each function becomes one ``autoif:code`` instruction, run sandboxed when verified.

Every record carries ``source`` (``file:line`` or ``name[row]``); a malformed record, an unknown
instruction id or bad kwargs raise `DataError` naming it.
"""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from uniapl.data.jsonl import DataError, iter_jsonl
from uniapl.data.records import Record

from uniapl.verifiers.registry import validate_spec


log = logging.getLogger(__name__)

__all__ = ["DataError", "load_ifeval_like", "load_ifbench", "load_autoif", "load_instruction_data", "detect_style"]

Rows = Iterable[tuple[str, Mapping[str, Any]]]


def _rows(data: str | Path | Iterable[Mapping[str, Any]], name: str = "data") -> Rows:
    """(where, row) pairs from a JSONL file or an iterable of mappings (e.g. a `datasets.Dataset`)."""
    if isinstance(data, (str, Path)):
        yield from iter_jsonl(data, error=DataError)
    else:
        for i, row in enumerate(data):
            yield f"{name}[{i}]", dict(row)


def _parse_structured(value: Any, where: str, field: str) -> Any:
    """A JSON string, a Python-literal string, or the value itself."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise DataError(f"{where}: {field} is neither JSON nor a Python literal: {value[:80]!r}") from None


def _kwargs_list(value: Any, n: int, where: str) -> list[dict]:
    value = _parse_structured(value, where, "kwargs")
    if value is None:
        return [{} for _ in range(n)]
    if isinstance(value, Mapping) and n == 1:
        value = [value]
    if not isinstance(value, list) or len(value) != n:
        raise DataError(f"{where}: kwargs should be a list of {n} objects, got {value!r:.80}")
    out = []
    for kw in value:
        kw = _parse_structured(kw, where, "kwargs")
        if kw is None:
            kw = {}
        if not isinstance(kw, Mapping):
            raise DataError(f"{where}: each kwargs entry should be an object, got {kw!r:.80}")
        out.append({k: v for k, v in kw.items() if v is not None})
    return out


def _check(rec: Record) -> Record:
    try:
        validate_spec(rec.instruction_id_list, rec.kwargs, where=rec.source)
    except ValueError as e:
        raise DataError(str(e)) from None
    return rec


def _messages(value: Any, where: str) -> tuple[list[dict[str, str]], str | None]:
    """(prompt messages, trailing assistant answer or None)."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: 'messages' should be a non-empty list of chat turns")
    msgs = []
    for m in value:
        if not isinstance(m, Mapping) or not isinstance(m.get("content"), str) or "role" not in m:
            raise DataError(f"{where}: each message needs 'role' and string 'content', got {m!r:.80}")
        msgs.append({"role": str(m["role"]), "content": m["content"]})
    answer = None
    if msgs[-1]["role"] == "assistant":
        answer = msgs.pop()["content"]
    if not msgs:
        raise DataError(f"{where}: 'messages' has no user turn")
    return msgs, answer


def load_ifeval_like(data, *, name: str = "ifeval-like") -> list[Record]:
    """IFEval-layout rows -> records (``prompt``, ``instruction_id_list``, ``kwargs``, ``key``)."""
    out = []
    for where, row in _rows(data, name):
        prompt = row.get("prompt")
        if prompt is None and "messages" in row:
            prompt, _ = _messages(row["messages"], where)
        if not isinstance(prompt, (str, list)) or not prompt:
            raise DataError(f"{where}: record has no 'prompt'")
        ids = _parse_structured(row.get("instruction_id_list"), where, "instruction_id_list")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise DataError(f"{where}: 'instruction_id_list' should be a list of strings")
        teacher = row.get("response") if isinstance(row.get("response"), str) else None
        rec = Record(prompt=prompt, instruction_id_list=ids, kwargs=_kwargs_list(row.get("kwargs"), len(ids), where),
                     teacher=teacher, key=row.get("key"), source=where)
        out.append(_check(rec))
    return out


def _ground_truth_specs(value: Any, where: str) -> tuple[list[str], list[dict]]:
    gt = _parse_structured(value, where, "ground_truth")
    if isinstance(gt, Mapping):
        gt = [gt]
    if not isinstance(gt, list) or not gt:
        raise DataError(f"{where}: ground_truth should be a list of {{instruction_id, kwargs}} objects")
    ids: list[str] = []
    kwargs: list[dict] = []
    for part in gt:
        part = _parse_structured(part, where, "ground_truth")
        if not isinstance(part, Mapping) or "instruction_id" not in part:
            raise DataError(f"{where}: ground_truth entry without 'instruction_id': {part!r:.80}")
        pid = part["instruction_id"]
        pid = [pid] if isinstance(pid, str) else pid
        if not isinstance(pid, list) or not all(isinstance(i, str) for i in pid):
            raise DataError(f"{where}: instruction_id should be a string or a list of strings")
        ids.extend(pid)
        kwargs.extend(_kwargs_list(part.get("kwargs"), len(pid), where))
    return ids, kwargs


def load_ifbench(data, *, name: str = "ifbench", skip_unknown: bool = False) -> list[Record]:
    """IF-RLVR / IFBench-train rows (``messages``, ``ground_truth``) -> records."""
    from uniapl.verifiers.registry import CHECKERS

    out, skipped = [], 0
    for where, row in _rows(data, name):
        if "messages" in row:
            prompt, answer = _messages(row["messages"], where)
        elif isinstance(row.get("prompt"), str):
            prompt, answer = row["prompt"], None
        else:
            raise DataError(f"{where}: record has neither 'messages' nor 'prompt'")
        if "ground_truth" not in row:
            raise DataError(f"{where}: record has no 'ground_truth'")
        ids, kwargs = _ground_truth_specs(row["ground_truth"], where)
        if skip_unknown and any(i not in CHECKERS for i in ids):
            skipped += 1
            continue
        rec = Record(prompt=prompt, instruction_id_list=ids, kwargs=kwargs, teacher=answer, key=row.get("key"),
                     source=where)
        out.append(_check(rec))
    if skipped:
        log.info("%s: skipped %d records with instruction ids that have no registered checker", name, skipped)
    return out


def load_autoif(data, *, name: str = "autoif", min_accuracy: float | None = None, entry: str = "evaluate") -> list[Record]:
    """AutoIF rows -> records whose instructions are sandboxed ``autoif:code`` functions.

    ``min_accuracy`` keeps only functions whose recorded cross-validation accuracy reaches it.
    """
    out = []
    for where, row in _rows(data, name):
        if isinstance(row.get("prompt"), str) and row["prompt"].strip():
            prompt: Any = row["prompt"]
        elif "messages" in row:
            prompt, _ = _messages(row["messages"], where)
        elif isinstance(row.get("query"), str):
            instruction = row.get("instruction")
            prompt = row["query"] + (f"\n{instruction}" if isinstance(instruction, str) and instruction else "")
        else:
            raise DataError(f"{where}: record has no 'prompt', 'messages' or 'query'")
        funcs = _parse_structured(row.get("eval_func", row.get("eval_funcs")), where, "eval_func")
        if not isinstance(funcs, list) or not funcs:
            raise DataError(f"{where}: 'eval_func' should be a non-empty list of function sources")
        sources = []
        for f in funcs:
            acc = None
            if isinstance(f, (list, tuple)) and f and isinstance(f[0], str):
                f, acc = f[0], (f[1] if len(f) > 1 else None)
            if not isinstance(f, str) or not f.strip():
                raise DataError(f"{where}: a verification function should be a source string, got {f!r:.80}")
            if min_accuracy is not None and isinstance(acc, (int, float)) and acc < min_accuracy:
                continue
            sources.append(f)
        if not sources:
            raise DataError(f"{where}: no verification function left (min_accuracy={min_accuracy})")
        teacher = row.get("response") if isinstance(row.get("response"), str) else None
        rec = Record(prompt=prompt, instruction_id_list=["autoif:code"] * len(sources),
                     kwargs=[{"source": s, "entry": entry} for s in sources], teacher=teacher,
                     key=row.get("key", row.get("id")), source=where)
        out.append(_check(rec))
    return out


def detect_style(row: Mapping[str, Any]) -> str:
    """'autoif', 'ifbench' or 'ifeval' from a row's fields."""
    if "eval_func" in row or "eval_funcs" in row:
        return "autoif"
    if "ground_truth" in row and "instruction_id_list" not in row:
        return "ifbench"
    if "instruction_id_list" in row:
        return "ifeval"
    raise DataError(f"cannot tell the data layout from fields {sorted(row)}")


def load_instruction_data(path: str | Path, *, style: str = "auto", **kwargs) -> list[Record]:
    """Any of the three layouts from a JSONL file; ``style`` "auto" looks at the first record."""
    if style == "auto":
        first = next(iter(_rows(path)), None)
        if first is None:
            return []
        style = detect_style(first[1])
    loaders = {"ifeval": load_ifeval_like, "ifbench": load_ifbench, "autoif": load_autoif}
    if style not in loaders:
        raise ValueError(f"unknown style {style!r}; one of {sorted(loaders)} or 'auto'")
    return loaders[style](path, **kwargs)
