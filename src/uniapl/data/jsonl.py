"""The one JSONL reader of the project (training data, responses to score, discriminator triples) and the
data error every loader raises."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from uniapl.infra.errors import UserError


class DataError(UserError, ValueError):
    """A data record is malformed or lacks what the algorithm needs; the message names file and line."""


def iter_jsonl(path: str | Path, error: type[Exception] = DataError) -> Iterator[tuple[str, dict]]:
    """("file:line", object) for each non-blank line of a JSONL file; `error` names the line on bad input.

    The one JSONL reader of the project (training data, responses to score, discriminator triples).
    """
    p = Path(path)
    if not p.is_file():
        raise error(f"file not found: {p}" if not p.is_dir() else f"{p} is a directory, not a JSONL file")
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{p}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(f"{where}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{where}: not valid JSON: {e.msg}") from None
            except RecursionError:
                raise error(f"{where}: JSON nested too deeply") from None
            if not isinstance(row, dict):
                raise error(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row


__all__ = ["DataError", "iter_jsonl"]
