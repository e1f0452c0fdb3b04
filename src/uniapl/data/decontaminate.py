"""Dropping training prompts that overlap an evaluation set (by default IFEval's 541 prompts).

A prompt overlaps when it shares one word n-gram (default n = 13, as in GPT-3's and Tulu's
decontamination) with an evaluation prompt, words being the lower-cased ``\\w+`` runs of the text
(so punctuation, case and spacing do not matter). A prompt shorter than n words overlaps only when
its normalized text equals an evaluation prompt's. The check is on the base prompt, before any
constraint is appended.

`IFEVAL_PROMPTS` is a copy of the prompts (key and text only) of IFEval's ``input_data.jsonl``
(google-research ``instruction_following_eval/data``, Apache License 2.0), shipped so that the check
works offline.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_NGRAM", "IFEVAL_PROMPTS", "NgramIndex", "ifeval_prompts", "load_eval_prompts", "words"]

DEFAULT_NGRAM = 13
IFEVAL_PROMPTS = "ifeval_prompts.json"  # in this package
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ifeval_prompts() -> list[tuple[Any, str]]:
    """(key, prompt) of IFEval's 541 prompts, from the copy shipped in this package."""
    data = json.loads(resources.files("uniapl.data").joinpath(IFEVAL_PROMPTS).read_text(encoding="utf-8"))
    return [(p["key"], p["prompt"]) for p in data["prompts"]]


def load_eval_prompts(path: str | Path, field_name: str = "prompt") -> list[tuple[Any, str]]:
    """(key, prompt) from a JSONL file (IFEval's layout: ``key``, ``prompt``) or a text file (one per line)."""
    from uniapl.data.jsonl import DataError, iter_jsonl

    p = Path(path)
    if not p.is_file():
        raise DataError(f"decontamination file not found: {p}")
    if p.suffix == ".txt":
        lines = p.read_text(encoding="utf-8").splitlines()
        return [(f"{p}:{i}", line) for i, line in enumerate(lines, 1) if line.strip()]
    out = []
    for where, row in iter_jsonl(p):
        text = row.get(field_name)
        if not isinstance(text, str):
            raise DataError(f"{where}: no string {field_name!r} to decontaminate against")
        out.append((row.get("key", where), text))
    return out


@dataclass
class NgramIndex:
    """The word n-grams of a set of evaluation prompts; `match` names the first prompt one overlaps."""

    n: int = DEFAULT_NGRAM
    grams: dict[tuple[str, ...], Any] = field(default_factory=dict)
    whole: dict[tuple[str, ...], Any] = field(default_factory=dict)

    @classmethod
    def build(cls, prompts: Iterable[tuple[Any, str]], n: int = DEFAULT_NGRAM) -> "NgramIndex":
        if n < 1:
            raise ValueError(f"the n-gram size must be >= 1, got {n}")
        idx = cls(n=n)
        for key, text in prompts:
            w = words(text)
            idx.whole.setdefault(tuple(w), key)
            for i in range(len(w) - n + 1):
                idx.grams.setdefault(tuple(w[i : i + n]), key)
        return idx

    def match(self, text: str) -> Any | None:
        """The key of an evaluation prompt `text` overlaps, or None."""
        w = words(text)
        if len(w) < self.n:
            return self.whole.get(tuple(w)) if w else None
        for i in range(len(w) - self.n + 1):
            key = self.grams.get(tuple(w[i : i + self.n]))
            if key is not None:
                return key
        return None
