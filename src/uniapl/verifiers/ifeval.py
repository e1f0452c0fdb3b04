"""The 25 IFEval instruction checkers (Zhou et al., 2023), registered by instruction id.

Each function is the strict check of one instruction on one response, with the reference's kwargs as
keyword-only parameters. Behaviour follows google-research ``instruction_following_eval`` (the version
that produced ``shared/data/ifeval/reference_verdicts.jsonl``), including its quirks, with these
deliberate differences, none of which changes a verdict on the IFEval data:

* String kwargs (keywords, forbidden words, section splitter, postscript marker) are matched
  literally; the reference pastes them into regular expressions unescaped.
* ``keywords:letter_frequency`` with a "letter" that is not one ASCII letter counts that character;
  the reference silently picks a random letter instead (keys 1122 and 1129 of IFEval).
* Missing kwargs are an error (`validate_spec`), never a random choice.
* A checker never raises on a response: input it cannot read is "not followed".
"""

from __future__ import annotations

import json
import re
from typing import Literal

from .registry import register_checker
from .text import LanguageDetectionError, count_sentences, count_words, detect_language, word_tokenize

Relation = Literal["less than", "at least"]


def _compare(actual: int, relation: str, threshold: int) -> bool:
    return actual < threshold if relation == "less than" else actual >= threshold


# --------------------------------------------------------------------------- keywords


@register_checker("keywords:existence")
def keywords_existence(response: str, *, keywords: list[str]) -> bool:
    """Every keyword occurs (case-insensitive substring)."""
    return all(re.search(re.escape(k), response, flags=re.IGNORECASE) for k in keywords)


@register_checker("keywords:frequency")
def keywords_frequency(response: str, *, keyword: str, frequency: int, relation: Relation) -> bool:
    """The keyword occurs (case-insensitive, non-overlapping) less than / at least `frequency` times."""
    n = len(re.findall(re.escape(keyword.strip()), response, flags=re.IGNORECASE))
    return _compare(n, relation, frequency)


@register_checker("keywords:forbidden_words")
def keywords_forbidden_words(response: str, *, forbidden_words: list[str]) -> bool:
    """No forbidden word occurs as a whole word (case-insensitive)."""
    return not any(
        re.search(r"\b" + re.escape(w) + r"\b", response, flags=re.IGNORECASE) for w in set(forbidden_words)
    )


@register_checker("keywords:letter_frequency")
def keywords_letter_frequency(response: str, *, letter: str, let_frequency: int, let_relation: Relation) -> bool:
    """The letter (case-insensitive) occurs less than / at least `let_frequency` times."""
    letter = letter.strip().lower() if letter.strip() else letter.lower()
    n = response.lower().count(letter) if letter else 0
    return _compare(n, let_relation, let_frequency)


# --------------------------------------------------------------------------- language / case


@register_checker("language:response_language")
def response_language(response: str, *, language: str) -> bool:
    """langdetect (seeded) says `language`; undetectable text counts as followed (reference quirk)."""
    try:
        return detect_language(response) == language
    except LanguageDetectionError:
        return True


@register_checker("change_case:english_capital")
def english_capital(response: str) -> bool:
    """All cased characters upper case, and the text is English (undetectable: followed)."""
    if not response.isupper():
        return False
    try:
        return detect_language(response) == "en"
    except LanguageDetectionError:
        return True


@register_checker("change_case:english_lowercase")
def english_lowercase(response: str) -> bool:
    """All cased characters lower case, and the text is English (undetectable: followed)."""
    if not response.islower():
        return False
    try:
        return detect_language(response) == "en"
    except LanguageDetectionError:
        return True


@register_checker("change_case:capital_word_frequency")
def capital_word_frequency(response: str, *, capital_frequency: int, capital_relation: Relation) -> bool:
    """Words (NLTK word tokens) in all capitals: less than / at least `capital_frequency`."""
    n = sum(1 for tok in word_tokenize(response) if tok.isupper())
    return _compare(n, capital_relation, capital_frequency)


# --------------------------------------------------------------------------- length


@register_checker("length_constraints:number_words")
def number_words(response: str, *, num_words: int, relation: Relation) -> bool:
    return _compare(count_words(response), relation, num_words)


@register_checker("length_constraints:number_sentences")
def number_sentences(response: str, *, num_sentences: int, relation: Relation) -> bool:
    """Sentences by NLTK's English Punkt."""
    return _compare(count_sentences(response), relation, num_sentences)


_MARKDOWN_DIVIDER = re.compile(r"\s?\*\*\*\s?")


@register_checker("length_constraints:number_paragraphs")
def number_paragraphs(response: str, *, num_paragraphs: int) -> bool:
    """Exactly `num_paragraphs` paragraphs separated by ``***``; an empty inner paragraph fails."""
    parts = _MARKDOWN_DIVIDER.split(response)
    n = len(parts)
    for i, part in enumerate(parts):
        if not part.strip():
            if i in (0, len(parts) - 1):
                n -= 1
            else:
                return False
    return n == num_paragraphs


_PUNCT = frozenset(".,?!'\"")


@register_checker("length_constraints:nth_paragraph_first_word")
def nth_paragraph_first_word(response: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    """Exactly `num_paragraphs` paragraphs (split on blank lines) and paragraph n starts with `first_word`."""
    parts = response.split("\n\n")
    n = sum(1 for p in parts if p.strip())
    if not (1 <= nth_paragraph <= n):
        return False
    paragraph = parts[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    found = []
    for ch in word:
        if ch in _PUNCT:
            break
        found.append(ch.lower())
    return n == num_paragraphs and "".join(found) == first_word.lower()


# --------------------------------------------------------------------------- content


def count_placeholders(text: str) -> int:
    r"""Matches of the reference's ``re.findall(r"\[.*?\]", text)``, counted in linear time.

    (The regex is quadratic on a long line of ``[`` without ``]``.) A ``[`` opens a placeholder that
    closes at the next ``]`` on the same line; without one, no ``[`` before the line's end can close.
    """
    count, pos, n = 0, 0, len(text)
    while pos < n:
        i = text.find("[", pos)
        if i < 0:
            break
        j = text.find("]", i + 1)
        nl = text.find("\n", i + 1)
        if j >= 0 and (nl < 0 or j < nl):
            count += 1
            pos = j + 1
        elif nl >= 0:
            pos = nl + 1
        else:
            break
    return count


@register_checker("detectable_content:number_placeholders")
def number_placeholders(response: str, *, num_placeholders: int) -> bool:
    """At least `num_placeholders` square-bracket placeholders like ``[address]`` (on one line)."""
    return count_placeholders(response) >= num_placeholders


# The reference wraps these in r"\s*...*$" (MULTILINE): both ends match anywhere, so searching the core
# gives the same answer without the quadratic cost of the leading \s* on long whitespace runs.
_PPS = re.compile(r"p\.\s?p\.\s?s")
_PS = re.compile(r"p\.\s?s\.")


@register_checker("detectable_content:postscript")
def postscript(response: str, *, postscript_marker: str) -> bool:
    """A postscript starting with the marker (``P.S.`` / ``P.P.S`` allow spaces, case-insensitive)."""
    marker = postscript_marker.strip()
    text = response.lower()
    if marker == "P.P.S":
        pattern = _PPS
    elif marker == "P.S.":
        pattern = _PS
    else:
        pattern = re.compile(re.escape(marker.lower()))
    return pattern.search(text) is not None


# --------------------------------------------------------------------------- format

def _count_line_items(text: str, star: bool) -> int:
    r"""Matches of ``re.findall(r"^\s*\*[^\*].*$", text, re.M)`` (star) or ``r"^\s*-.*$"``, in linear time.

    A match starts at a line start, skips whitespace (newlines included), then needs ``*`` and one
    character other than ``*`` (possibly a newline), or ``-``; it ends at the end of the line it
    reached. Every line start inside one whitespace run reaches the same first non-space character,
    so after a failure the scan resumes at the line after that character.
    """
    count, start, n = 0, 0, len(text)
    while start < n:
        j = start
        while j < n and text[j].isspace():
            j += 1
        if j == n:
            break
        if star:
            ok = text[j] == "*" and j + 1 < n and text[j + 1] != "*"
            rest = j + 2
        else:
            ok = text[j] == "-"
            rest = j + 1
        if ok:
            count += 1
            end = text.find("\n", min(rest, n))
        else:
            end = text.find("\n", j)
        if end < 0:
            break
        start = end + 1
    return count


@register_checker("detectable_format:number_bullet_lists")
def number_bullet_lists(response: str, *, num_bullets: int) -> bool:
    """Exactly `num_bullets` markdown bullet lines (``* item`` or ``- item``)."""
    return _count_line_items(response, star=True) + _count_line_items(response, star=False) == num_bullets


_CONSTRAINED = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


@register_checker("detectable_format:constrained_response")
def constrained_response(response: str) -> bool:
    """Contains one of "My answer is yes." / "... no." / "... maybe."."""
    text = response.strip()
    return any(option in text for option in _CONSTRAINED)


_HIGHLIGHT = re.compile(r"\*[^\n\*]*\*")
_DOUBLE_HIGHLIGHT = re.compile(r"\*\*[^\n\*]*\*\*")


@register_checker("detectable_format:number_highlighted_sections")
def number_highlighted_sections(response: str, *, num_highlights: int) -> bool:
    """At least `num_highlights` non-empty highlighted spans on one line.

    As in the current reference, ``*single*`` spans and ``**double**`` spans are counted separately
    (so ``**bold**`` counts once as a double span; its inner ``**`` pair is an empty single span).
    """
    n = sum(1 for h in _HIGHLIGHT.findall(response) if h.strip("*").strip())
    n += sum(1 for h in _DOUBLE_HIGHLIGHT.findall(response) if h[2:-2].strip())
    return n >= num_highlights


@register_checker("detectable_format:multiple_sections")
def multiple_sections(response: str, *, section_spliter: str, num_sections: int) -> bool:
    """At least `num_sections` sections marked ``<spliter> <number>`` (e.g. ``SECTION 1``)."""
    pattern = r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?"
    return len(re.split(pattern, response)) - 1 >= num_sections


@register_checker("detectable_format:json_format")
def json_format(response: str) -> bool:
    """The whole response parses as JSON, optionally inside a markdown code fence."""
    text = response.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        text = text.removeprefix(prefix)
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def titles(text: str) -> list[str]:
    r"""``re.findall(r"<<[^\n]+>>", text)`` in linear time (the regex is quadratic on lines of ``<``).

    Per line, the greedy match runs from the first ``<<`` to the last ``>>`` that leaves at least one
    character between them; nothing on that line can match after it.
    """
    out = []
    for line in text.split("\n"):
        i = line.find("<<")
        if i < 0:
            continue
        j = line.rfind(">>")
        if j >= i + 3:
            out.append(line[i : j + 2])
    return out


@register_checker("detectable_format:title")
def title(response: str) -> bool:
    """A non-empty title in double angular brackets, ``<<title>>``."""
    return any(t.lstrip("<").rstrip(">").strip() for t in titles(response))


# --------------------------------------------------------------------------- combination


@register_checker("combination:two_responses")
def two_responses(response: str) -> bool:
    """Exactly two different non-empty responses separated by ``******``."""
    parts = response.split("******")
    valid = []
    for i, part in enumerate(parts):
        if not part.strip():
            if i not in (0, len(parts) - 1):
                return False
        else:
            valid.append(part)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


@register_checker("combination:repeat_prompt")
def repeat_prompt(response: str, *, prompt_to_repeat: str | None = None, prompt: str | None = None) -> bool:
    """The response starts (case-insensitive, stripped) with `prompt_to_repeat` (default: the prompt)."""
    target = prompt_to_repeat if prompt_to_repeat is not None else prompt
    if target is None:
        raise ValueError("combination:repeat_prompt needs prompt_to_repeat or the prompt")
    return response.strip().lower().startswith(target.strip().lower())


# --------------------------------------------------------------------------- start / end / punctuation


@register_checker("startend:end_checker")
def end_checker(response: str, *, end_phrase: str) -> bool:
    """Ends (case-insensitive, ignoring surrounding whitespace and double quotes) with `end_phrase`."""
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


@register_checker("startend:quotation")
def quotation(response: str) -> bool:
    """Wrapped in double quotation marks."""
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


@register_checker("punctuation:no_comma")
def no_comma(response: str) -> bool:
    return "," not in response


IFEVAL_INSTRUCTION_IDS = (
    "keywords:existence",
    "keywords:frequency",
    "keywords:forbidden_words",
    "keywords:letter_frequency",
    "language:response_language",
    "length_constraints:number_sentences",
    "length_constraints:number_paragraphs",
    "length_constraints:number_words",
    "length_constraints:nth_paragraph_first_word",
    "detectable_content:number_placeholders",
    "detectable_content:postscript",
    "detectable_format:number_bullet_lists",
    "detectable_format:constrained_response",
    "detectable_format:number_highlighted_sections",
    "detectable_format:multiple_sections",
    "detectable_format:json_format",
    "detectable_format:title",
    "combination:two_responses",
    "combination:repeat_prompt",
    "startend:end_checker",
    "change_case:capital_word_frequency",
    "change_case:english_capital",
    "change_case:english_lowercase",
    "punctuation:no_comma",
    "startend:quotation",
)
"""The 25 instruction ids of IFEval."""
