"""A math reward beyond IFEval: does the completion's final answer equal the record's ``answer`` column?

The final answer is, in this order: the last ``\\boxed{...}`` (nested braces allowed), the text after the
last ``####`` (GSM8K), or what follows the last "answer is" / "answer:". Answers compare as numbers when
both read as numbers (``1,000`` = ``1000``, ``0.5`` = ``\\frac{1}{2}`` = ``1/2``, ``42.0`` = ``42``, a
trailing unit or ``%`` ignored), else as text, case- and space-insensitive, without surrounding ``$``,
braces and final punctuation. A record without an ``answer`` gets None (not scored, as TRL reads None).

    reward:
      functions: ["uniapl.rewards.math:final_answer"]
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

__all__ = ["extract_final_answer", "final_answer", "same_answer"]

_NUM = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)(e[-+]?\d+)?$", re.IGNORECASE)
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*:?\s*(.+)", re.IGNORECASE)


def _last_boxed(text: str) -> str | None:
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1] if depth == 0 else None


def extract_final_answer(text: str) -> str | None:
    """The final answer stated in `text`, or None when it states none."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().split("\n")[0].strip()
    found = _ANSWER_IS.findall(text)
    if found:
        return found[-1].strip().split("\n")[0].strip()
    return None


def _strip(s: str) -> str:
    s = s.strip()
    s = re.sub(r"^\$+|\$+$", "", s).strip()
    s = re.sub(r"^\\\(|\\\)$", "", s).strip()
    s = s.rstrip(".。!").strip()
    while s.startswith("{") and s.endswith("}"):
        s = s[1:-1].strip()
    return s


def _number(s: str) -> Fraction | None:
    s = _strip(s)
    s = re.sub(r"\\(?:d|t)?frac\{([^{}]+)\}\{([^{}]+)\}", r"(\1)/(\2)", s)
    s = s.replace("\\!", "").replace("\\,", "").replace("\\%", "%").replace("$", "")
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)  # thousands separators
    s = re.sub(r"\s*(%|[a-zA-Z]+\.?)$", "", s).strip()  # a trailing unit
    m = re.fullmatch(r"\(?([^()/]+)\)?\s*/\s*\(?([^()/]+)\)?", s)
    try:
        if m:
            num, den = m.group(1).strip(), m.group(2).strip()
            if _NUM.match(num) and _NUM.match(den) and Fraction(den) != 0:
                return Fraction(num) / Fraction(den)
            return None
        return Fraction(s) if _NUM.match(s) else None
    except (ValueError, ZeroDivisionError):
        return None


def same_answer(predicted: str, reference: Any) -> bool:
    """`predicted` states the same answer as `reference` (numbers by value, else normalized text)."""
    ref = str(reference)
    a, b = _number(predicted), _number(ref)
    if a is not None and b is not None:
        return a == b
    norm = lambda s: re.sub(r"\s+", "", _strip(s)).lower()  # noqa: E731
    return norm(predicted) == norm(ref) and norm(ref) != ""


def final_answer(prompts: list, completions: list, answer: list | None = None, **kwargs) -> list[float | None]:
    """1.0 when a completion's final answer equals its record's ``answer``, 0.0 when not, None without one."""
    answers = answer if answer is not None else [None] * len(completions)
    out: list[float | None] = []
    for completion, ref in zip(completions, answers):
        if ref is None:
            out.append(None)
            continue
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        pred = extract_final_answer(text)
        out.append(1.0 if pred is not None and same_answer(pred, ref) else 0.0)
    return out
