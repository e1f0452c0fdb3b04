"""The bundled synthetic instruction-following task (the embedded default's data).

Short notes about a place ("Write a short note about the river.") under one or two IFEval
instructions, with real IFEval instruction ids, kwargs and phrasings, over a closed vocabulary of a
few hundred words, so a ~1-3M parameter model learns it on a CPU in minutes. It reproduces the
paper's setting:

* ``ground_truth``: a plain answer transformed to satisfy every instruction; always passes.
* ``teacher``: a stronger model's answer in its own consistent style (a fixed polite opening, longer
  sentences, a summary closing) that follows each instruction independently with probability
  ``teacher_follow_prob``, so it is good but imperfect.
* ``warmup``: a weak student corpus in the ground truth's style, following each instruction
  independently with probability ``student_follow_prob`` and violating it naturally otherwise
  (normal casing, a missing keyword, the forbidden word kept, commas, no end phrase ...). Its answer
  sits in ``Record.ground_truth``; SFT on it gives the starting student of the UniAPL stage.

The eval split holds (topic, instruction combination) pairs that never occur in train or warm-up
(nor in ``validation``, present when ``n_validation > 0``: more held-out pairs, for choosing settings):
every combination itself occurs in train (on other topics) whenever ``n_train`` is at least the
number of combinations (54 for one or two instructions).

Construction guarantees what it claims without running the checkers, by these IFEval semantics:
``number_words`` counts ``\\w+`` runs; ``keywords:existence`` is a case-insensitive substring search;
``forbidden_words`` a case-insensitive whole-word search; ``end_checker`` lowercases and strips
whitespace and double quotes before ``endswith``; ``postscript`` searches ``p\\.\\s?s\\.`` anywhere;
``quotation`` wants the stripped text to start and end with ``"``; ``title`` wants ``<<...>>``;
``english_lowercase``/``english_capital`` want ``islower()``/``isupper()`` and langdetect (seed 0)
to say English, which `_is_english` checks on every answer that must pass a case instruction.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Any

from uniapl.data.records import Record
from uniapl.data.synthetic_vocab import (
    END_PHRASES,
    KEYWORDS,
    PHRASINGS,
    PLAIN,
    SYNONYMS,
    TASKS,
    TEACHER,
    TIMES,
    TOPICS,
    Style,
    Topic,
)

__all__ = [
    "INSTRUCTION_IDS",
    "SyntheticTaskConfig",
    "generate_task",
    "task_corpus",
    "write_jsonl",
    "instruction_combinations",
]

LOWER = "change_case:english_lowercase"
CAPITAL = "change_case:english_capital"
KEYWORDS_ID = "keywords:existence"
FORBIDDEN = "keywords:forbidden_words"
NO_COMMA = "punctuation:no_comma"
END = "startend:end_checker"
POSTSCRIPT = "detectable_content:postscript"
NUM_WORDS = "length_constraints:number_words"
QUOTATION = "startend:quotation"
TITLE = "detectable_format:title"

INSTRUCTION_IDS: tuple[str, ...] = (
    LOWER, CAPITAL, KEYWORDS_ID, FORBIDDEN, NO_COMMA, END, POSTSCRIPT, NUM_WORDS, QUOTATION, TITLE,
)

# Pairs no answer can satisfy together. The others compose under the reference checkers: casing
# applies to the whole answer (titles and "P.S." included; the checkers lowercase before matching),
# end_checker strips the wrapping quotes, postscript matches anywhere, keywords are never forbidden.
CONFLICTS: frozenset[frozenset[str]] = frozenset({frozenset({LOWER, CAPITAL})})

_WORD_RE = re.compile(r"\w+")
_LANGUAGE_ATTEMPTS = 20


@dataclass
class SyntheticTaskConfig:
    seed: int = 0
    n_train: int = 2000  # UniAPL-stage prompts (ground truth + teacher)
    n_eval: int = 128  # held-out prompts, one per held-out (topic, combination) pair
    # validation prompts (for tuning): held-out pairs of their own, in neither train, warm-up nor eval
    n_validation: int = 0
    n_warmup: int = 4000  # weak-student SFT examples for the warm-up stage
    min_instructions: int = 1
    max_instructions: int = 2
    teacher_follow_prob: float = 0.9  # per instruction
    student_follow_prob: float = 0.35  # per instruction, warm-up answers
    # share of warm-up answers written in the teacher's style (still weak at following instructions): a
    # pre-trained student has seen the teacher's kind of language, it just does not follow instructions well
    warmup_teacher_style_prob: float = 0.0
    check_language: bool = True  # redraft case-constrained answers langdetect would not call English


def instruction_combinations(min_instructions: int = 1, max_instructions: int = 2) -> list[tuple[str, ...]]:
    """All conflict-free instruction-id combinations of the given sizes, in a fixed order."""
    if not 1 <= min_instructions <= max_instructions <= len(INSTRUCTION_IDS):
        raise ValueError(
            f"need 1 <= min_instructions <= max_instructions <= {len(INSTRUCTION_IDS)}, "
            f"got {min_instructions}, {max_instructions}"
        )
    out = []
    for k in range(min_instructions, max_instructions + 1):
        for combo in itertools.combinations(INSTRUCTION_IDS, k):
            if not any(c <= set(combo) for c in CONFLICTS):
                out.append(combo)
    return out


# ----------------------------------------------------------------------------------------------
# helpers


def count_words(text: str) -> int:
    """Words as IFEval's ``length_constraints:number_words`` counts them (``\\w+`` runs)."""
    return len(_WORD_RE.findall(text))


def _join_words(words: list[str], conj: str, quote: bool = True) -> str:
    ws = [f'"{w}"' if quote else w for w in words]
    return ws[0] if len(ws) == 1 else ", ".join(ws[:-1]) + f" {conj} " + ws[-1]


def _match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _replace_words(text: str, mapping: dict[str, str]) -> str:
    for old, new in mapping.items():
        text = re.sub(rf"\b{re.escape(old)}\b", lambda m, new=new: _match_case(new, m.group(0)), text, flags=re.I)
    return text


@functools.lru_cache(maxsize=1)
def _language_detector_factory():
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    factory = DetectorFactory()  # our own instance: no global langdetect state is touched
    factory.seed = 0
    factory.load_profile(PROFILES_DIRECTORY)
    return factory


def _is_english(text: str) -> bool:
    """langdetect (seed 0, as the IFEval checkers run it) says English, or finds no features."""
    from langdetect.lang_detect_exception import LangDetectException

    detector = _language_detector_factory().create()
    try:
        detector.append(text)
        return detector.detect() == "en"
    except LangDetectException:  # the reference counts the instruction as followed then
        return True


# ----------------------------------------------------------------------------------------------
# answers


@dataclass
class _Draft:
    title: str | None
    head: list[str]  # opening and first sentence: never dropped
    middle: list[str]
    closing: str | None
    spare: list[str]  # sentences to pad with
    keywords: str | None
    postscript: str | None
    end: str | None
    replace: dict[str, str]

    def text(self) -> str:
        body = " ".join(s for s in (*self.head, *self.middle, self.closing, self.keywords) if s)
        paras = [p for p in (self.title, body, self.postscript) if p]
        text = _replace_words("\n\n".join(paras), self.replace)
        return f"{text} {self.end}" if self.end else text


def _fill(topic: Topic, time: str, kws: list[str]) -> dict[str, str]:
    return {
        "name": topic.name, "Name": topic.name.capitalize(), "adj1": topic.adjs[0], "adj2": topic.adjs[1],
        "th1": topic.things[0], "th2": topic.things[1], "th3": topic.things[2],
        "act1": topic.acts[0], "act2": topic.acts[1], "time": time,
        "kws": _join_words(kws, "and", quote=False) if kws else "",
    }


def _draft(style: Style, topic: Topic, spec: dict[str, dict[str, Any]], follow: dict[str, bool], rng: Random,
           minimal: bool = False) -> _Draft:
    kws = list(spec[KEYWORDS_ID]["keywords"]) if KEYWORDS_ID in spec else []
    if kws and not follow[KEYWORDS_ID]:  # forgot the keywords: all of them, or the last of two
        kws = kws[:1] if len(kws) == 2 and rng.random() < 0.5 else []
    f = _fill(topic, rng.choice(TIMES), kws)
    pool = [s.format(**f) for s in style.body]
    rng.shuffle(pool)
    fillers = [s.format(**f) for s in style.fillers]
    rng.shuffle(fillers)
    n = 0 if minimal else rng.randint(*style.n_body)
    replace: dict[str, str] = {}
    if FORBIDDEN in spec and follow[FORBIDDEN]:
        for w in spec[FORBIDDEN]["forbidden_words"]:
            replace[w] = topic.alt if w == topic.name else SYNONYMS[w]
    return _Draft(
        title=style.title.format(**f) if TITLE in spec and follow[TITLE] else None,
        head=[s for s in (style.opening.format(**f), style.first.format(**f)) if s],
        middle=pool[:n],
        closing=style.closing.format(**f) if style.closing and not minimal else None,
        spare=pool[n:] + fillers,
        keywords=style.keywords.format(**f) if kws else None,
        postscript=style.postscript.format(**f) if POSTSCRIPT in spec and follow[POSTSCRIPT] else None,
        end=spec[END]["end_phrase"] if END in spec and follow[END] else None,
        replace=replace,
    )


def _fit_length(d: _Draft, num_words: int, below: bool) -> None:
    """Drop or add body sentences until the word count is below / at least `num_words`."""
    if below:
        while count_words(d.text()) >= num_words:
            if d.closing:
                d.closing = None
            elif d.middle:
                d.spare.insert(0, d.middle.pop())
            else:
                raise RuntimeError(f"cannot fit under {num_words} words: {d.text()!r}")
    else:
        while count_words(d.text()) < num_words:
            if not d.spare:
                raise RuntimeError(f"cannot reach {num_words} words: {d.text()!r}")
            d.middle.append(d.spare.pop(0))


def _finish(text: str, spec: dict[str, dict[str, Any]], follow: dict[str, bool]) -> str:
    if NO_COMMA in spec and follow[NO_COMMA]:
        text = text.replace(",", "")
    if LOWER in spec and follow[LOWER]:
        text = text.lower()
    if CAPITAL in spec and follow[CAPITAL]:
        text = text.upper()
    if QUOTATION in spec and follow[QUOTATION]:
        text = f'"{text}"'
    return text


def _respond(style: Style, topic: Topic, spec: dict[str, dict[str, Any]], follow: dict[str, bool], rng: Random,
             check_language: bool) -> str:
    cased = any(i in spec and follow[i] for i in (LOWER, CAPITAL))
    limit = spec[NUM_WORDS] if NUM_WORDS in spec else None
    below = limit is not None and (limit["relation"] == "less than") == follow[NUM_WORDS]
    for attempt in range(_LANGUAGE_ATTEMPTS):
        d = _draft(style, topic, spec, follow, rng)
        if attempt and not below:  # a longer text is easier to recognise
            for _ in range(min(attempt, len(d.spare))):
                d.middle.append(d.spare.pop(0))
        if limit is not None:
            _fit_length(d, limit["num_words"], below=below)
        text = _finish(d.text(), spec, follow)
        # A short all-lowercase / all-capital text can look non-English to langdetect (never seen with
        # this vocabulary, but cheap to rule out): draft another answer until it does not.
        if not (check_language and cased) or _is_english(text):
            return text
    raise RuntimeError(f"no English-looking answer found in {_LANGUAGE_ATTEMPTS} drafts: {text!r}")


# ----------------------------------------------------------------------------------------------
# prompts and records


def _spec_kwargs(combo: tuple[str, ...], topic: Topic, rng: Random) -> dict[str, dict[str, Any]]:
    spec: dict[str, dict[str, Any]] = {}
    for iid in combo:
        if iid == KEYWORDS_ID:
            spec[iid] = {"keywords": rng.sample(KEYWORDS, rng.choice((1, 2)))}
        elif iid == FORBIDDEN:
            spec[iid] = {"forbidden_words": rng.sample([topic.name, *topic.adjs], rng.choice((1, 2)))}
        elif iid == END:
            spec[iid] = {"end_phrase": rng.choice(END_PHRASES)}
        elif iid == POSTSCRIPT:
            spec[iid] = {"postscript_marker": "P.S."}
        elif iid == NUM_WORDS:
            spec[iid] = {"relation": rng.choice(("less than", "at least")), "num_words": 0}  # set below
        else:
            spec[iid] = {}
    if NUM_WORDS in spec:
        # The limit sits above the shortest answer any style can give with every other instruction
        # followed, so both following and violating it are possible in every style.
        everything = {i: True for i in spec}
        shortest = max(count_words(_draft(s, topic, spec, everything, Random(0), minimal=True).text())
                       for s in (PLAIN, TEACHER))
        spec[NUM_WORDS]["num_words"] = 10 * math.ceil((shortest + 1) / 10) + rng.choice((0, 10))
    return spec


def _prompt(topic: Topic, order: list[str], spec: dict[str, dict[str, Any]], rng: Random) -> str:
    parts = [rng.choice(TASKS).format(name=topic.name)]
    for iid in order:
        phrasing = rng.choice(PHRASINGS[iid])
        kw = spec[iid]
        if iid == KEYWORDS_ID:
            phrasing = phrasing.format(keywords=_join_words(kw["keywords"], "and"))
            if len(kw["keywords"]) == 1:
                phrasing = phrasing.replace("the words", "the word")
        elif iid == FORBIDDEN:
            words = kw["forbidden_words"]
            phrasing = phrasing.format(forbidden_words=_join_words(words, "or") if "{forbidden_words} in" in phrasing
                                       else ", ".join(words))
        elif iid == END:
            phrasing = phrasing.format(end_phrase=kw["end_phrase"])
        elif iid == NUM_WORDS:
            phrasing = phrasing.format(**kw)
        parts.append(phrasing)
    return " ".join(parts)


def _record(split: str, index: int, topic: Topic, combo: tuple[str, ...], rng: Random,
            cfg: SyntheticTaskConfig) -> Record:
    order = list(combo)
    rng.shuffle(order)
    spec = _spec_kwargs(combo, topic, rng)
    prompt = _prompt(topic, order, spec, rng)
    kwargs = [dict(spec[i]) for i in order]
    everything = {i: True for i in combo}

    def sample_follow(p: float) -> dict[str, bool]:
        return {i: rng.random() < p for i in order}

    if split == "warmup":
        style = PLAIN
        if cfg.warmup_teacher_style_prob > 0 and rng.random() < cfg.warmup_teacher_style_prob:
            style = TEACHER
        ground_truth = _respond(style, topic, spec, sample_follow(cfg.student_follow_prob), rng, cfg.check_language)
        teacher = None
    else:
        ground_truth = _respond(PLAIN, topic, spec, everything, rng, cfg.check_language)
        teacher = _respond(TEACHER, topic, spec, sample_follow(cfg.teacher_follow_prob), rng, cfg.check_language)
    return Record(
        prompt=prompt, instruction_id_list=order, kwargs=kwargs, ground_truth=ground_truth, teacher=teacher,
        key=f"synthetic-{split}-{index}", source=f"synthetic:{split}[{index}]",
    )


def generate_task(cfg: SyntheticTaskConfig) -> dict[str, list[Record]]:
    """The task's splits: ``train``, ``eval`` (held-out topic x combination pairs), ``warmup`` and, when
    ``n_validation > 0``, ``validation`` (held-out pairs disjoint from eval's).

    Deterministic for ``cfg`` (one `random.Random` stream per split, seeded from ``cfg.seed``).
    """
    for name in ("n_train", "n_eval", "n_warmup", "n_validation"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    for name in ("teacher_follow_prob", "student_follow_prob", "warmup_teacher_style_prob"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(cfg, name)}")
    combos = instruction_combinations(cfg.min_instructions, cfg.max_instructions)
    by_size: dict[int, list[tuple[str, ...]]] = {}
    for c in combos:
        by_size.setdefault(len(c), []).append(c)
    sizes = sorted(by_size)
    max_eval = len(combos) * (len(TOPICS) // 2)
    if cfg.n_eval + cfg.n_validation > max_eval:
        raise ValueError(f"n_eval + n_validation = {cfg.n_eval + cfg.n_validation} is too large: at most {max_eval} "
                         f"held-out (topic, combination) pairs")

    def draw(rng: Random) -> tuple[Topic, tuple[str, ...]]:
        return rng.choice(TOPICS), rng.choice(by_size[rng.choice(sizes)])

    rng = Random(f"uniapl-synthetic:{cfg.seed}:eval-pairs")
    held_out: list[tuple[Topic, tuple[str, ...]]] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    per_combo: dict[tuple[str, ...], int] = {}
    # eval's pairs first, then validation's from the same stream: with n_validation = 0 the task is what it was
    while len(held_out) < cfg.n_eval + cfg.n_validation:
        topic, combo = draw(rng)
        # at most half the topics of a combination are held out: the rest stay for training
        if (topic.name, combo) not in seen and per_combo.get(combo, 0) < len(TOPICS) // 2:
            seen.add((topic.name, combo))
            per_combo[combo] = per_combo.get(combo, 0) + 1
            held_out.append((topic, combo))

    out: dict[str, list[Record]] = {}
    splits = [("train", cfg.n_train), ("eval", cfg.n_eval), ("warmup", cfg.n_warmup)]
    if cfg.n_validation:
        splits.append(("validation", cfg.n_validation))
    for split, n in splits:
        rng = Random(f"uniapl-synthetic:{cfg.seed}:{split}")
        records = []
        cover = list(combos) if split == "train" else []  # every combination occurs in train
        rng.shuffle(cover)
        for i in range(n):
            if split == "eval":
                topic, combo = held_out[i]
            elif split == "validation":
                topic, combo = held_out[cfg.n_eval + i]
            else:
                topic, combo = draw(rng)
                if i < len(cover):
                    combo = cover[i]
                while (topic.name, combo) in seen:
                    topic = rng.choice(TOPICS)
            records.append(_record(split, i, topic, combo, rng, cfg))
        out[split] = records
    return out


def task_corpus(cfg: SyntheticTaskConfig, task: dict[str, list[Record]] | None = None) -> Iterator[str]:
    """Every text of the task (prompts and answers of all splits), e.g. to train a tokenizer on.

    Pass an already generated `task` to skip generating it again.
    """
    task = generate_task(cfg) if task is None else task
    for split in ("train", "eval", "warmup", "validation"):
        for r in task.get(split, []):
            yield r.prompt_text()
            for text in (r.ground_truth, r.teacher):
                if text:
                    yield text


def write_jsonl(records: Iterable[Record], path: str | os.PathLike) -> Path:
    """Write records as IFEval-style JSONL: key, prompt, instruction_id_list, kwargs, ground_truth, teacher."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for r in records:
            row = {
                "key": r.key, "prompt": r.prompt, "instruction_id_list": list(r.instruction_id_list),
                "kwargs": [dict(k) for k in r.kwargs], "ground_truth": r.ground_truth, "teacher": r.teacher,
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
