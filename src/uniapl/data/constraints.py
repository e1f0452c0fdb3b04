"""Verifiable constraints for plain prompts: IFEval's instructions, drawn with valid kwargs, never two that conflict.

The recipe of IFEval-like training data (argilla/ifeval-like-data, AutoIF's seed step): each base prompt
gets K instructions drawn from IFEval's 25 ids, each with kwargs drawn from the ranges IFEval's own
generator (``instructions.py``, ``build_description`` without arguments) draws them from, and phrased
with the description text that generator writes. The K ids are a uniformly random K-subset among those
without a pair in IFEval's conflict table (``INSTRUCTION_CONFLICTS``, made symmetric as its
``conflict_make`` does: every id conflicts with itself, and A-B implies B-A).

Deliberate differences from the reference generator (each one keeps a drawn spec satisfiable):

* ``length_constraints:nth_paragraph_first_word``: `nth_paragraph` is drawn from 1..num_paragraphs;
  the reference's ``randint(1, num_paragraphs + 1)`` can name a paragraph that cannot exist.
* Keywords, forbidden words and first words come from `KEYWORDS` below (our own list of common English
  words), not from the reference's word list.
* ``combination:repeat_prompt`` repeats the base prompt (the reference needs the text given to it).

Everything is deterministic for a seed: `constraints_for(seed, index, ...)` depends only on the seed, the
base prompt's position in the input and the allowed ids.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from uniapl.verifiers.ifeval import IFEVAL_INSTRUCTION_IDS

__all__ = ["CONFLICTS", "LANGUAGES", "KEYWORDS", "SAMPLERS", "Draw", "conflicts", "sample_kwargs", "describe",
           "draw_ids", "constraints_for", "compose_prompt", "generatable_ids"]

# ISO 639-1 code -> language name: the 30 languages IFEval's generator draws from (all detectable by langdetect).
LANGUAGES: dict[str, str] = {
    "en": "English", "es": "Spanish", "pt": "Portuguese", "ar": "Arabic", "hi": "Hindi", "fr": "French",
    "ru": "Russian", "de": "German", "ja": "Japanese", "it": "Italian", "bn": "Bengali", "uk": "Ukrainian",
    "th": "Thai", "ur": "Urdu", "ta": "Tamil", "te": "Telugu", "bg": "Bulgarian", "ko": "Korean", "pl": "Polish",
    "he": "Hebrew", "fa": "Persian", "vi": "Vietnamese", "ne": "Nepali", "sw": "Swahili", "kn": "Kannada",
    "mr": "Marathi", "gu": "Gujarati", "pa": "Punjabi", "ml": "Malayalam", "fi": "Finnish",
}

# Common English nouns for keyword-type constraints (lower case, letters only, none a substring of another).
KEYWORDS: tuple[str, ...] = tuple(sorted({
    "anchor", "apple", "autumn", "bakery", "balloon", "banana", "barrel", "basket", "beach", "bicycle", "blanket",
    "bottle", "bridge", "bucket", "butter", "cabin", "camera", "candle", "canyon", "carpet", "castle", "cathedral",
    "cello", "chimney", "circus", "cliff", "clock", "cloud", "compass", "cookie", "copper", "cotton", "crystal",
    "curtain", "desert", "diamond", "dolphin", "dragon", "drum", "eagle", "elbow", "engine", "falcon", "feather",
    "festival", "forest", "fountain", "galaxy", "garden", "ginger", "glacier", "guitar", "hammer", "harbor",
    "helmet", "honey", "island", "jacket", "jungle", "kettle", "kingdom", "ladder", "lantern", "lemon", "library",
    "lighthouse", "lizard", "magnet", "mango", "marble", "meadow", "mirror", "monkey", "mountain", "museum",
    "needle", "notebook", "ocean", "orchard", "oxygen", "paddle", "palace", "parrot", "pebble", "pepper",
    "piano", "pillow", "planet", "pocket", "puzzle", "pyramid", "quilt", "rabbit", "rainbow", "ribbon", "river",
    "rocket", "saddle", "sailor", "satellite", "scarf", "shadow", "silver", "spider", "squirrel", "stadium",
    "statue", "sunset", "telescope", "thunder", "tiger", "tomato", "tractor", "treasure", "tunnel", "umbrella",
    "valley", "velvet", "violin", "volcano", "wagon", "walnut", "whistle", "window", "winter", "wizard", "yogurt",
    "zebra",
}))

_RELATIONS = ("less than", "at least")
_CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
_END_PHRASES = ("Any other questions?", "Is there anything else I can help with?")
_SPLITTERS = ("Section", "SECTION")
_POSTSCRIPTS = ("P.S.", "P.P.S")

Rng = random.Random


class Draw:
    """What a kwargs sampler draws from: the prompt's random generator, its base prompt, and its words.

    The words of one prompt's constraints are distinct, so "include X" never meets "do not include X".
    """

    def __init__(self, rng: Rng, base_prompt: str = "") -> None:
        self.rng = rng
        self.base_prompt = base_prompt
        self._used: set[str] = set()

    def words(self, n: int) -> list[str]:
        out = self.rng.sample([w for w in KEYWORDS if w not in self._used], n)
        self._used.update(out)
        return out


Sampler = Callable[[Rng, Draw], dict[str, Any]]


def _nth_first_word(rng: Rng, d: Draw) -> dict[str, Any]:
    n = rng.randint(1, 5)
    return {"num_paragraphs": n, "nth_paragraph": rng.randint(1, n), "first_word": d.words(1)[0]}


# id -> kwargs sampler(rng, draw): IFEval's ranges (randint bounds inclusive).
SAMPLERS: dict[str, Sampler] = {
    "keywords:existence": lambda rng, d: {"keywords": sorted(d.words(2))},
    "keywords:frequency": lambda rng, d: {"keyword": d.words(1)[0], "frequency": rng.randint(1, 3),
                                          "relation": rng.choice(_RELATIONS)},
    "keywords:forbidden_words": lambda rng, d: {"forbidden_words": sorted(d.words(2))},
    "keywords:letter_frequency": lambda rng, _: {"letter": rng.choice(string.ascii_letters).lower(),
                                                 "let_frequency": rng.randint(1, 10),
                                                 "let_relation": rng.choice(_RELATIONS)},
    "language:response_language": lambda rng, _: {"language": rng.choice(sorted(LANGUAGES))},
    "length_constraints:number_sentences": lambda rng, _: {"num_sentences": rng.randint(1, 20),
                                                           "relation": rng.choice(_RELATIONS)},
    "length_constraints:number_paragraphs": lambda rng, _: {"num_paragraphs": rng.randint(1, 5)},
    "length_constraints:number_words": lambda rng, _: {"num_words": rng.randint(100, 500),
                                                       "relation": rng.choice(_RELATIONS)},
    "length_constraints:nth_paragraph_first_word": _nth_first_word,
    "detectable_content:number_placeholders": lambda rng, _: {"num_placeholders": rng.randint(1, 4)},
    "detectable_content:postscript": lambda rng, _: {"postscript_marker": rng.choice(_POSTSCRIPTS)},
    "detectable_format:number_bullet_lists": lambda rng, _: {"num_bullets": rng.randint(1, 5)},
    "detectable_format:constrained_response": lambda rng, _: {},
    "detectable_format:number_highlighted_sections": lambda rng, _: {"num_highlights": rng.randint(1, 4)},
    "detectable_format:multiple_sections": lambda rng, _: {"section_spliter": rng.choice(_SPLITTERS),
                                                           "num_sections": rng.randint(1, 5)},
    "detectable_format:json_format": lambda rng, _: {},
    "detectable_format:title": lambda rng, _: {},
    "combination:two_responses": lambda rng, _: {},
    "combination:repeat_prompt": lambda rng, d: {"prompt_to_repeat": d.base_prompt},
    "startend:end_checker": lambda rng, _: {"end_phrase": rng.choice(_END_PHRASES)},
    "change_case:capital_word_frequency": lambda rng, _: {"capital_frequency": rng.randint(1, 20),
                                                          "capital_relation": rng.choice(_RELATIONS)},
    "change_case:english_capital": lambda rng, _: {},
    "change_case:english_lowercase": lambda rng, _: {},
    "punctuation:no_comma": lambda rng, _: {},
    "startend:quotation": lambda rng, _: {},
}

# id -> description template (IFEval's wording; filled with str.format(**kwargs)).
_TEMPLATES: dict[str, str] = {
    "keywords:existence": "Include keywords {keywords} in the response.",
    "keywords:frequency": "In your response, the word {keyword} should appear {relation} {frequency} times.",
    "keywords:forbidden_words": "Do not include keywords {forbidden_words} in the response.",
    "keywords:letter_frequency": "In your response, the letter {letter} should appear {let_relation} {let_frequency} times.",
    "language:response_language": "Your ENTIRE response should be in {language_name} language, no other language is allowed.",
    "length_constraints:number_sentences": "Your response should contain {relation} {num_sentences} sentences.",
    "length_constraints:number_paragraphs": "There should be {num_paragraphs} paragraphs. Paragraphs are separated "
                                            "with the markdown divider: ***",
    "length_constraints:number_words": "Answer with {relation} {num_words} words.",
    "length_constraints:nth_paragraph_first_word": "There should be {num_paragraphs} paragraphs. Paragraphs and only "
                                                   "paragraphs are separated with each other by two new lines as if it "
                                                   "was '\\n\\n' in python. Paragraph {nth_paragraph} must start with "
                                                   "word {first_word}.",
    "detectable_content:number_placeholders": "The response must contain at least {num_placeholders} placeholders "
                                              "represented by square brackets, such as [address].",
    "detectable_content:postscript": "At the end of your response, please explicitly add a postscript starting with "
                                     "{postscript_marker}",
    "detectable_format:number_bullet_lists": "Your answer must contain exactly {num_bullets} bullet points. Use the "
                                             "markdown bullet points such as:\n* This is point 1. \n* This is point 2",
    "detectable_format:constrained_response": "Answer with one of the following options: " + str(_CONSTRAINED_OPTIONS),
    "detectable_format:number_highlighted_sections": "Highlight at least {num_highlights} sections in your answer "
                                                     "with markdown, i.e. *highlighted section*.",
    "detectable_format:multiple_sections": "Your response must have {num_sections} sections. Mark the beginning of "
                                           "each section with {section_spliter} X, such as:\n{section_spliter} 1\n"
                                           "[content of section 1]\n{section_spliter} 2\n[content of section 2]",
    "detectable_format:json_format": "Entire output should be wrapped in JSON format. You can use markdown ticks "
                                     "such as ```.",
    "detectable_format:title": "Your answer must contain a title, wrapped in double angular brackets, such as "
                               "<<poem of joy>>.",
    "combination:two_responses": "Give two different responses. Responses and only responses should be separated "
                                 "by 6 asterisk symbols: ******.",
    "combination:repeat_prompt": "First repeat the request word for word without change, then give your answer "
                                 "(1. do not say any words or characters before repeating the request; 2. the "
                                 "request you need to repeat does not include this sentence)",
    "startend:end_checker": "Finish your response with this exact phrase {end_phrase}. No other words should "
                            "follow this phrase.",
    "change_case:capital_word_frequency": "In your response, words with all capital letters should appear "
                                          "{capital_relation} {capital_frequency} times.",
    "change_case:english_capital": "Your entire response should be in English, and in all capital letters.",
    "change_case:english_lowercase": "Your entire response should be in English, and in all lowercase letters. "
                                     "No capital letters are allowed.",
    "punctuation:no_comma": "In your entire response, refrain from the use of any commas.",
    "startend:quotation": "Wrap your entire response with double quotation marks.",
}


def _conflict_table() -> dict[str, frozenset[str]]:
    """IFEval's conflict table, symmetric and reflexive (the reference's ``conflict_make``)."""
    every = set(IFEVAL_INSTRUCTION_IDS)
    raw: dict[str, set[str]] = {i: set() for i in IFEVAL_INSTRUCTION_IDS}
    # Only the non-trivial rows; every other id conflicts with itself alone.
    raw["language:response_language"] = {
        "detectable_format:multiple_sections", "keywords:existence", "keywords:frequency",
        "keywords:forbidden_words", "startend:end_checker", "change_case:english_capital",
        "change_case:english_lowercase",
    }
    raw["length_constraints:number_paragraphs"] = {"length_constraints:nth_paragraph_first_word",
                                                   "length_constraints:number_sentences"}
    raw["length_constraints:nth_paragraph_first_word"] = {"length_constraints:number_paragraphs"}
    raw["detectable_format:constrained_response"] = set(every)
    raw["detectable_format:multiple_sections"] = {"language:response_language",
                                                  "detectable_format:number_highlighted_sections"}
    raw["detectable_format:json_format"] = every - {"keywords:forbidden_words", "keywords:existence"}
    raw["combination:two_responses"] = every - {"keywords:forbidden_words", "keywords:existence",
                                                "language:response_language", "detectable_format:title",
                                                "punctuation:no_comma"}
    raw["combination:repeat_prompt"] = every - {"keywords:existence", "detectable_format:title", "punctuation:no_comma"}
    raw["change_case:capital_word_frequency"] = {"change_case:english_lowercase", "change_case:english_capital"}
    raw["change_case:english_lowercase"] = {"change_case:english_capital"}
    raw["startend:quotation"] = {"detectable_format:title"}
    for key in list(raw):  # conflict_make: reflexive and symmetric
        raw[key].add(key)
        for other in list(raw[key]):
            raw[other].add(key)
    return {k: frozenset(v) for k, v in raw.items()}


CONFLICTS: Mapping[str, frozenset[str]] = _conflict_table()
"""Instruction id -> the ids it may not be combined with (itself included)."""


def conflicts(a: str, b: str) -> bool:
    return b in CONFLICTS.get(a, frozenset((a,)))


def generatable_ids() -> tuple[str, ...]:
    """Ids this module can draw: a registered checker, a kwargs sampler and a description."""
    from uniapl.verifiers import CHECKERS

    return tuple(i for i in IFEVAL_INSTRUCTION_IDS if i in CHECKERS and i in SAMPLERS and i in _TEMPLATES)


def sample_kwargs(instruction_id: str, draw: Draw) -> dict[str, Any]:
    return SAMPLERS[instruction_id](draw.rng, draw)


def describe(instruction_id: str, kwargs: Mapping[str, Any]) -> str:
    """The instruction's sentence(s), as IFEval's generator writes them for these kwargs."""
    fields = dict(kwargs)
    if instruction_id == "language:response_language":
        fields["language_name"] = LANGUAGES.get(fields["language"], fields["language"])
    return _TEMPLATES[instruction_id].format(**fields)


def _conflict_free(ids: Sequence[str]) -> bool:
    return all(not conflicts(a, b) for i, a in enumerate(ids) for b in ids[i + 1:])


def draw_ids(rng: Rng, k: int, allowed: Sequence[str], max_tries: int = 20000) -> list[str]:
    """A uniformly random conflict-free k-subset of `allowed`, in draw order (rejection sampling).

    Raises ValueError when no conflict-free subset of that size was found (k too large for `allowed`).
    """
    if k < 0:
        raise ValueError(f"the number of constraints must be >= 0, got {k}")
    if k > len(allowed):
        raise ValueError(f"{k} constraints asked for, but only {len(allowed)} instruction ids are allowed")
    for _ in range(max_tries):
        ids = rng.sample(list(allowed), k)
        if _conflict_free(ids):
            return ids
    raise ValueError(f"no {k} mutually compatible instructions found among the {len(allowed)} allowed ids "
                     f"(IFEval's conflict table): ask for fewer constraints")


def constraints_for(seed: int, index: int, base_prompt: str, k: int, allowed: Sequence[str]) -> tuple[list[str], list[dict]]:
    """(instruction ids, kwargs) for the base prompt at position `index`; the same for the same seed and index."""
    rng = random.Random(f"uniapl-constraints:{seed}:{index}")  # str seeds hash with SHA-512: stable across runs
    ids = draw_ids(rng, k, allowed)
    draw = Draw(rng, base_prompt)
    return ids, [sample_kwargs(i, draw) for i in ids]


def compose_prompt(base_prompt: str, ids: Iterable[str], kwargs: Iterable[Mapping[str, Any]]) -> str:
    """The base prompt unchanged, a blank line, then one instruction description per line."""
    lines = [describe(i, kw) for i, kw in zip(ids, kwargs)]
    return base_prompt.rstrip() + ("\n\n" + "\n".join(lines) if lines else "")
