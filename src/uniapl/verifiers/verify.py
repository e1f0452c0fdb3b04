"""Verdicts: strict and loose checks of a response against its instructions, metrics and rewards.

Strict: each checker on the raw response. Loose (IFEval's upper bound): an instruction passes if any
of 8 variants passes: the response, without ``*``, without its first line, without its last line,
without both, and those three also without ``*``. An empty or whitespace-only response (or variant)
fails every instruction.

Shared work: the variants are built once per response (not once per instruction) and de-duplicated;
an instruction that passes strictly passes loosely without another check; and the costly analyses
(sentence splitting, word tokenization, language detection) are cached by text in `text`, so the
instructions of one prompt and the variants of one response never redo them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .registry import SpecError, checks_loose, get_checker, normalize_kwargs, takes_prompt, validate_spec
from .sandbox import SandboxUnavailable

__all__ = [
    "Verdict",
    "verify",
    "verify_many",
    "loose_variants",
    "ifeval_metrics",
    "category_accuracies",
    "verifiable_reward",
]

log = logging.getLogger(__name__)

METRIC_KEYS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")


@dataclass
class Verdict:
    """One bool per instruction, in the order of the spec."""

    strict: list[bool]
    loose: list[bool]
    instruction_id_list: list[str] = field(default_factory=list, compare=False, repr=False)
    # instruction index -> why its checker gave no answer ("timed out: ..." or "ExceptionType: ..."); such an
    # instruction counts as not followed, and `uniapl ifeval score` reports it instead of hiding it
    errors: dict[int, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def timed_out(self) -> list[int]:
        """Indices of instructions whose checker hit a time limit."""
        return [i for i, e in self.errors.items() if e.startswith("timed out")]

    @property
    def prompt_strict(self) -> bool:
        """Every instruction followed (strict)."""
        return all(self.strict)

    @property
    def prompt_loose(self) -> bool:
        """Every instruction followed (loose)."""
        return all(self.loose)


def loose_variants(response: str) -> list[str]:
    """The distinct loose variants of `response` after the response itself, in the reference's order."""
    lines = response.split("\n")
    no_first = "\n".join(lines[1:]).strip()
    no_last = "\n".join(lines[:-1]).strip()
    no_both = "\n".join(lines[1:-1]).strip()
    candidates = (
        response.replace("*", ""),
        no_first,
        no_last,
        no_both,
        no_first.replace("*", ""),
        no_last.replace("*", ""),
        no_both.replace("*", ""),
    )
    seen = {response}
    out = []
    for c in candidates:
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


_warned: set[str] = set()


def _run(checker, instruction_id: str, text: str, kwargs: Mapping[str, Any], errors: list[str] | None = None) -> bool:
    if not text.strip():
        return False
    try:
        return bool(checker(text, **kwargs))
    except SandboxUnavailable:  # no safe place to run untrusted code: the user must decide, not score 0
        raise
    except Exception as e:  # a checker must never stop training: count it as not followed, and say so
        why = f"timed out: {e}" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
        if errors is not None:
            errors.append(why[:300])
        if instruction_id not in _warned:
            _warned.add(instruction_id)
            log.warning("checker %s on a response of %d characters: %s (counted as not followed)",
                        instruction_id, len(text), why[:300])
        return False


def verify(
    response: str,
    instruction_id_list: Sequence[str],
    kwargs_list: Sequence[Mapping[str, Any] | None] | None = None,
    prompt: str | None = None,
    *,
    where: str = "",
) -> Verdict:
    """Strict and loose verdicts of `response` on each instruction.

    `kwargs_list` holds one dict per instruction (None values are dropped, as in the reference);
    `prompt` is passed to checkers that need it (``combination:repeat_prompt`` without
    ``prompt_to_repeat``). A bad spec raises ValueError naming `where`; any string gets a verdict.
    """
    if not isinstance(response, str):
        raise TypeError(f"{where + ': ' if where else ''}response should be a str, got {type(response).__name__}")
    ids = list(instruction_id_list)
    if kwargs_list is None:
        kwargs_list = [{}] * len(ids)
    validate_spec(ids, list(kwargs_list), where=where)
    if any(takes_prompt(i) for i in ids):
        for iid, kw in zip(ids, kwargs_list):
            if iid == "combination:repeat_prompt" and not normalize_kwargs(kw).get("prompt_to_repeat") and prompt is None:
                raise SpecError(f"{where + ': ' if where else ''}combination:repeat_prompt needs prompt_to_repeat or a prompt")

    strict: list[bool] = []
    loose: list[bool] = []
    errors: dict[int, str] = {}
    variants: list[str] | None = None
    for i, (iid, raw_kwargs) in enumerate(zip(ids, kwargs_list)):
        checker = get_checker(iid)
        kwargs = normalize_kwargs(raw_kwargs)
        if prompt is not None and takes_prompt(iid):
            kwargs["prompt"] = prompt
        failed: list[str] = []
        ok = _run(checker, iid, response, kwargs, failed)
        strict.append(ok)
        if not ok and checks_loose(iid):
            if variants is None:
                variants = loose_variants(response)
            ok = any(_run(checker, iid, v, kwargs, failed) for v in variants)
        loose.append(ok)
        if failed and not ok:
            errors[i] = failed[0]
    return Verdict(strict=strict, loose=loose, instruction_id_list=ids, errors=errors)


def _prefetch_sandboxed(items: list[tuple]) -> None:
    """Start the batch's sandboxed (AutoIF code) calls in parallel before the per-record loop."""
    from .autoif import AUTOIF_ID, prefetch

    calls = []
    for response, ids, kws, _, _ in items:
        if not isinstance(response, str) or not response.strip() or AUTOIF_ID not in ids:
            continue
        for iid, kw in zip(ids, kws or [None] * len(ids)):
            kw = normalize_kwargs(kw)
            if iid == AUTOIF_ID and isinstance(kw.get("source"), str):
                calls.append((kw["source"], kw.get("entry", "evaluate"), response))
    if calls:
        prefetch(calls)


def _verify_chunk(args: list[tuple]) -> list[Verdict]:
    return [verify(r, ids, kws, p, where=w) for (r, ids, kws, p, w) in args]


def verify_many(
    responses: Sequence[str],
    instruction_id_lists: Sequence[Sequence[str]],
    kwargs_lists: Sequence[Sequence[Mapping[str, Any] | None] | None] | None = None,
    prompts: Sequence[str | None] | None = None,
    *,
    wheres: Sequence[str] | None = None,
    workers: int = 0,
    chunk_size: int = 64,
) -> list[Verdict]:
    """`verify` over a batch (aligned sequences). ``workers > 1`` spreads chunks over processes."""
    n = len(responses)
    if len(instruction_id_lists) != n:
        raise ValueError(f"{n} responses but {len(instruction_id_lists)} instruction lists")
    kwargs_lists = kwargs_lists if kwargs_lists is not None else [None] * n
    prompts = prompts if prompts is not None else [None] * n
    wheres = wheres if wheres is not None else [f"item {i}" for i in range(n)]
    if not (len(kwargs_lists) == len(prompts) == len(wheres) == n):
        raise ValueError("verify_many: responses, kwargs_lists, prompts and wheres must have the same length")
    items = list(zip(responses, instruction_id_lists, kwargs_lists, prompts, wheres))
    if workers <= 1 or n <= chunk_size:
        _prefetch_sandboxed(items)
        try:
            return _verify_chunk(items)
        finally:
            from .autoif import clear_prefetched

            clear_prefetched()
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    chunks = [items[i : i + chunk_size] for i in range(0, n, chunk_size)]
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return [v for part in pool.map(_verify_chunk, chunks) for v in part]


def ifeval_metrics(verdicts: Iterable[Verdict]) -> dict[str, float]:
    """The four IFEval metrics (lm-eval names): prompt- and instruction-level, strict and loose."""
    verdicts = list(verdicts)
    n_prompts = len(verdicts)
    n_inst = sum(len(v.strict) for v in verdicts)

    def ratio(a: int, b: int) -> float:
        return a / b if b else 0.0

    return {
        "prompt_level_strict_acc": ratio(sum(v.prompt_strict for v in verdicts), n_prompts),
        "inst_level_strict_acc": ratio(sum(sum(v.strict) for v in verdicts), n_inst),
        "prompt_level_loose_acc": ratio(sum(v.prompt_loose for v in verdicts), n_prompts),
        "inst_level_loose_acc": ratio(sum(sum(v.loose) for v in verdicts), n_inst),
    }


def category_accuracies(
    verdicts: Iterable[Verdict], instruction_id_lists: Iterable[Sequence[str]] | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """Instruction-level accuracy per category (``keywords``) and per instruction id, strict and loose.

    Returns ``{"category": {name: {"strict": acc, "loose": acc, "count": n}}, "instruction": {...}}``.
    The ids come from each verdict (set by `verify`) unless `instruction_id_lists` is given.
    """
    verdicts = list(verdicts)
    id_lists = list(instruction_id_lists) if instruction_id_lists is not None else [v.instruction_id_list for v in verdicts]
    tallies = {"category": defaultdict(lambda: [0, 0, 0]), "instruction": defaultdict(lambda: [0, 0, 0])}
    for v, ids in zip(verdicts, id_lists):
        if len(ids) != len(v.strict):
            raise ValueError("category_accuracies: a verdict has no instruction ids of its own length")
        for iid, s, lo in zip(ids, v.strict, v.loose):
            for level, name in (("category", iid.split(":")[0]), ("instruction", iid)):
                t = tallies[level][name]
                t[0] += 1
                t[1] += s
                t[2] += lo
    return {
        level: {name: {"strict": t[1] / t[0], "loose": t[2] / t[0], "count": t[0]} for name, t in sorted(d.items())}
        for level, d in tallies.items()
    }


def verifiable_reward(verdict: Verdict, *, mode: str = "strict", partial: bool = False) -> float:
    """1.0 if every instruction passes (``mode`` "strict" or "loose"), else 0.0.

    ``partial=True`` gives the fraction of instructions that pass. A spec with no instruction scores 1.0.
    """
    if mode not in ("strict", "loose"):
        raise ValueError(f"mode should be 'strict' or 'loose', got {mode!r}")
    passed = verdict.strict if mode == "strict" else verdict.loose
    if not passed:
        return 1.0
    if partial:
        return sum(passed) / len(passed)
    return 1.0 if all(passed) else 0.0
