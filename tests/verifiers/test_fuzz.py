"""Any string gets a verdict, the same one every time; linear-time rewrites equal the reference regexes."""

import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uniapl.verifiers import IFEVAL_INSTRUCTION_IDS, Verdict, verify
from uniapl.verifiers.ifeval import _count_line_items, count_placeholders, titles

# one valid kwargs per instruction id (values as in IFEval's data)
KWARGS = {
    "keywords:existence": {"keywords": ["tea", "cup"]},
    "keywords:frequency": {"keyword": "tea", "frequency": 2, "relation": "at least"},
    "keywords:forbidden_words": {"forbidden_words": ["coffee", "milk"]},
    "keywords:letter_frequency": {"letter": "e", "let_frequency": 3, "let_relation": "less than"},
    "language:response_language": {"language": "en"},
    "length_constraints:number_sentences": {"num_sentences": 3, "relation": "less than"},
    "length_constraints:number_paragraphs": {"num_paragraphs": 2},
    "length_constraints:number_words": {"num_words": 5, "relation": "at least"},
    "length_constraints:nth_paragraph_first_word": {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "tea"},
    "detectable_content:number_placeholders": {"num_placeholders": 1},
    "detectable_content:postscript": {"postscript_marker": "P.S."},
    "detectable_format:number_bullet_lists": {"num_bullets": 2},
    "detectable_format:constrained_response": {},
    "detectable_format:number_highlighted_sections": {"num_highlights": 1},
    "detectable_format:multiple_sections": {"section_spliter": "Section", "num_sections": 2},
    "detectable_format:json_format": {},
    "detectable_format:title": {},
    "combination:two_responses": {},
    "combination:repeat_prompt": {"prompt_to_repeat": "Write about tea."},
    "startend:end_checker": {"end_phrase": "Any other questions?"},
    "change_case:capital_word_frequency": {"capital_frequency": 2, "capital_relation": "at least"},
    "change_case:english_capital": {},
    "change_case:english_lowercase": {},
    "punctuation:no_comma": {},
    "startend:quotation": {},
}
IDS = list(IFEVAL_INSTRUCTION_IDS)
SPEC = [KWARGS[i] for i in IDS]

MARKUP = ["*", "**", "***", "******", "<<", ">>", "[", "]", "\n", "\n\n", " ", "\t", "-", "#", "P.S.", "p. p. s",
          "Section 1", "SECTION", '"', ",", ".", "!", "?", "```json", "```", "{", "}", "tea", "Tea", "TEA", "é", "ß",
          "İ", "\u200b", "\u00a0", "\U0001f600", "\x00", "\ud800", "My answer is yes.", "Any other questions?"]

any_text = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(blacklist_categories=()), max_size=200),  # surrogates, controls, all planes
    st.lists(st.sampled_from(MARKUP), max_size=60).map("".join),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
        max_leaves=12,
    ).map(json.dumps),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_text)
def test_any_string_gets_a_deterministic_verdict(text):
    v = verify(text, IDS, SPEC, prompt="Write about tea.")
    assert isinstance(v, Verdict)
    assert len(v.strict) == len(v.loose) == len(IDS)
    assert all(type(b) is bool for b in v.strict + v.loose)
    assert all(lo or not s for s, lo in zip(v.strict, v.loose))  # strict implies loose
    assert verify(text, IDS, SPEC, prompt="Write about tea.") == v
    if not text.strip():
        assert not any(v.strict) and not any(v.loose)


def test_huge_and_pathological_strings_are_quick():
    import time

    for text in ("[" * 100_000, "<" * 100_000 + "\n", "\n \n" * 35_000 + "x", " " * 100_000 + "p", "*a" * 50_000,
                 "word, " * 20_000, json.dumps({"k": list(range(10_000))})):
        t = time.perf_counter()
        v = verify(text, IDS, SPEC)
        assert len(v.strict) == len(IDS)
        assert time.perf_counter() - t < 60


small = st.lists(st.sampled_from(list("[]<>*-a \n\t") + ["\u00a0", "\u2003"]), max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(small)
def test_linear_scanners_equal_the_reference_regexes(text):
    assert count_placeholders(text) == len(re.findall(r"\[.*?\]", text))
    assert titles(text) == re.findall(r"<<[^\n]+>>", text)
    assert _count_line_items(text, star=True) == len(re.findall(r"^\s*\*[^\*].*$", text, flags=re.MULTILINE))
    assert _count_line_items(text, star=False) == len(re.findall(r"^\s*-.*$", text, flags=re.MULTILINE))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["p", ".", "s", " ", "\n", "P", "S", "x", "\t"]), max_size=30).map("".join))
def test_postscript_search_equals_the_reference(text):
    from uniapl.verifiers.ifeval import postscript

    low = text.lower()
    assert postscript(text, postscript_marker="P.S.") == bool(re.findall(r"\s*p\.\s?s\..*$", low, flags=re.MULTILINE))
    assert postscript(text, postscript_marker="P.P.S") == bool(re.findall(r"\s*p\.\s?p\.\s?s.*$", low, flags=re.MULTILINE))
