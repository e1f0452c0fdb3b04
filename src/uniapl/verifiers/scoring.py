"""Scoring files of responses against IFEval-style prompts: joins, verdicts, metrics, report.

A response record is a JSON object with ``response`` and either its own ``instruction_id_list`` /
``kwargs`` (and a ``key``, any JSON value), or a ``key`` / ``prompt`` that joins it to a prompts
file (IFEval's ``input_data.jsonl`` layout: ``key``, ``prompt``, ``instruction_id_list``,
``kwargs``). Every problem is an error naming ``file:line``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uniapl.infra.errors import UserError

from .verify import Verdict, category_accuracies, ifeval_metrics, verify

__all__ = [
    "ScoreError",
    "Scored",
    "read_jsonl",
    "load_prompts",
    "join_specs",
    "score_records",
    "format_report",
    "write_verdicts",
    "IFEVAL_HUB_ID",
]

IFEVAL_HUB_ID = "google/IFEval"


class ScoreError(UserError, ValueError):
    """A record that cannot be scored (bad JSON, no response, no spec, bad spec); names the record."""


def read_jsonl(path: str | Path) -> list[tuple[str, dict]]:
    """[(``"file:line"``, object)] of a JSONL file; blank lines skipped."""
    from uniapl.data.jsonl import iter_jsonl

    return list(iter_jsonl(path, error=ScoreError))


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    if isinstance(key, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in key.items()))
    return key


@dataclass
class Prompts:
    """IFEval-style prompt specs, indexed by key and by prompt text."""

    rows: list[tuple[str, dict]]

    def __post_init__(self) -> None:
        self.by_key: dict[Any, tuple[str, dict]] = {}
        self.by_prompt: dict[str, tuple[str, dict]] = {}
        for where, row in self.rows:
            for field in ("prompt", "instruction_id_list"):
                if field not in row:
                    raise ScoreError(f"{where}: prompt record has no {field!r}")
            if "key" in row:
                self.by_key.setdefault(_hashable(row["key"]), (where, row))
            self.by_prompt.setdefault(row["prompt"], (where, row))

    def __len__(self) -> int:
        return len(self.rows)


def load_prompts(path: str | Path | None = None) -> Prompts:
    """Prompts from a JSONL file, or (``path=None``) the 541 IFEval prompts from the hub."""
    if path is not None:
        return Prompts(read_jsonl(path))
    try:
        from datasets import load_dataset

        ds = load_dataset(IFEVAL_HUB_ID, split="train")
    except Exception as e:  # offline, no datasets cache
        raise ScoreError(
            f"could not load the IFEval prompts from the hub ({IFEVAL_HUB_ID}): {type(e).__name__}: {e}. "
            "Pass --prompts FILE (IFEval's input_data.jsonl layout)."
        ) from None
    return Prompts([(f"{IFEVAL_HUB_ID}[{i}]", dict(row)) for i, row in enumerate(ds)])


def join_specs(records: Sequence[tuple[str, dict]], prompts: Prompts | None) -> list[dict]:
    """Each response record with its spec: ``key``, ``prompt``, ``instruction_id_list``, ``kwargs``.

    A record's own ``instruction_id_list`` wins; otherwise it is joined to `prompts` by ``key``, then by
    ``prompt`` text.
    """
    joined = []
    for where, rec in records:
        if not isinstance(rec.get("response"), str):
            raise ScoreError(f"{where}: record has no string 'response'")
        if "instruction_id_list" in rec:
            spec = {
                "key": rec.get("key"),
                "prompt": rec.get("prompt"),
                "instruction_id_list": rec["instruction_id_list"],
                "kwargs": rec.get("kwargs"),
            }
        else:
            row = None
            if prompts is not None:
                if "key" in rec:
                    row = prompts.by_key.get(_hashable(rec["key"]))
                if row is None and isinstance(rec.get("prompt"), str):
                    row = prompts.by_prompt.get(rec["prompt"])
            if row is None:
                how = [f"key {rec['key']!r}" if "key" in rec else "", "prompt text" if "prompt" in rec else ""]
                how = " or ".join(h for h in how if h) or "nothing to join on (no key, no prompt)"
                raise ScoreError(f"{where}: no instruction_id_list, and no prompt record matches ({how})")
            _, prow = row
            spec = {
                "key": rec.get("key", prow.get("key")),
                "prompt": prow["prompt"],
                "instruction_id_list": prow["instruction_id_list"],
                "kwargs": prow.get("kwargs"),
            }
        joined.append({"where": where, "record": rec, **spec})
    return joined


@dataclass
class Scored:
    where: str
    record: dict
    key: Any
    instruction_id_list: list[str]
    verdict: Verdict

    def output_row(self) -> dict:
        row = {
            **self.record,
            "key": self.key,
            "instruction_id_list": self.instruction_id_list,
            "strict": self.verdict.strict,
            "loose": self.verdict.loose,
        }
        if self.verdict.errors:  # checkers that gave no answer (time limit, crash): counted as not followed
            row["checker_errors"] = {self.instruction_id_list[i]: e for i, e in sorted(self.verdict.errors.items())}
        return row


def score_records(joined: Iterable[dict]) -> list[Scored]:
    """Verdicts of joined records (see `join_specs`); a bad spec raises ScoreError naming the record."""
    out = []
    for j in joined:
        try:
            v = verify(j["record"]["response"], j["instruction_id_list"], j["kwargs"], j["prompt"], where=j["where"])
        except (ValueError, TypeError) as e:
            raise ScoreError(str(e)) from None
        out.append(Scored(j["where"], j["record"], j["key"], list(j["instruction_id_list"]), v))
    return out


def write_verdicts(scored: Iterable[Scored], path: str | Path) -> None:
    """One JSON line per record, written atomically (a failure leaves the old file, never part of one);
    strings UTF-8 cannot carry (lone surrogates from \\ud800-style escapes) stay JSON escapes."""
    from uniapl.infra.atomic import atomic_write_jsonl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(path, [s.output_row() for s in scored])


def summary(scored: Sequence[Scored]) -> dict:
    verdicts = [s.verdict for s in scored]
    errors = [(s.where, s.instruction_id_list[i], e) for s in scored for i, e in sorted(s.verdict.errors.items())]
    return {
        "num_records": len(verdicts),
        "num_instructions": sum(len(v.strict) for v in verdicts),
        "num_timed_out": sum(e.startswith("timed out") for _, _, e in errors),
        "num_checker_errors": len(errors),
        "checker_errors": [{"where": w, "instruction_id": i, "error": e} for w, i, e in errors[:20]],
        **ifeval_metrics(verdicts),
        "categories": category_accuracies(verdicts, [s.instruction_id_list for s in scored]),
    }


def format_report(result: dict) -> str:
    """The four metrics, then instruction-level accuracy per category and per instruction id."""
    lines = [f"records: {result['num_records']}  instructions: {result['num_instructions']}"]
    if result.get("num_checker_errors"):
        lines.append(f"WARNING: {result['num_checker_errors']} instruction verdicts have no answer from their checker "
                     f"({result['num_timed_out']} timed out) and count as not followed; first: "
                     + "; ".join(f"{e['where']} {e['instruction_id']}: {e['error'][:120]}" for e in result["checker_errors"][:3]))
    for k in ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc"):
        lines.append(f"{k:<24} {result[k]:.4f}")
    for level in ("category", "instruction"):
        table = result["categories"][level]
        if not table:
            continue
        width = max(len(n) for n in table)
        lines.append("")
        lines.append(f"{level:<{width}}  {'strict':>6}  {'loose':>6}  {'n':>4}")
        for name, t in table.items():
            lines.append(f"{name:<{width}}  {t['strict']:6.4f}  {t['loose']:6.4f}  {t['count']:4d}")
    return "\n".join(lines)
