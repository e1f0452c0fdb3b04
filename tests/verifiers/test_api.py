"""The public API other modules code against, and the checkers of the synthetic training task."""

import pytest

from uniapl.verifiers import (
    CHECKERS,
    Verdict,
    get_checker,
    ifeval_metrics,
    register_checker,
    validate_spec,
    verifiable_reward,
    verify,
    verify_many,
)


@pytest.mark.parametrize(
    "iid, kwargs, good, bad",
    [
        ("change_case:english_lowercase", {}, "this is a plain english sentence about the weather today.", "This Is Not Lower case."),
        ("change_case:english_capital", {}, "THIS IS A PLAIN ENGLISH SENTENCE ABOUT THE WEATHER.", "THIS is mixed case."),
        ("keywords:existence", {"keywords": ["Apple", "pie"]}, "an apple a day; PIE later", "an apple a day"),
        ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "a category of dogs", "the Cat sat"),
        ("punctuation:no_comma", {}, "no commas here.", "one, two"),
        ("startend:end_checker", {"end_phrase": "Any other questions?"}, 'Done. "any other questions?"\n', "Any other questions? Yes."),
        ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\n\np. s. see you", "Hi. PS see you"),
        ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP.P.S. more", "Hi.\nP.S. more"),
        ("length_constraints:number_words", {"num_words": 3, "relation": "at least"}, "one two three", "one two"),
        ("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, "one two", "one two three"),
        ("startend:quotation", {}, '  "quoted answer"  ', '"half quoted'),
        ("detectable_format:title", {}, "<<A Title>>\ntext", "<< >>\n<<no\nclose>>"),
    ],
)
def test_synthetic_task_checkers(iid, kwargs, good, bad):
    assert verify(good, [iid], [kwargs]).strict == [True]
    assert verify(bad, [iid], [kwargs]).strict == [False]


def test_empty_response_fails_everything():
    v = verify("   \n", ["punctuation:no_comma", "keywords:forbidden_words"], [{}, {"forbidden_words": ["x"]}])
    assert v.strict == [False, False] and v.loose == [False, False]


def test_loose_drops_first_line_and_asterisks():
    v = verify("Sure, here it is:\nhello world", ["punctuation:no_comma"], [{}])
    assert v.strict == [False] and v.loose == [True]
    assert not v.prompt_strict and v.prompt_loose
    assert verify("**\"quoted\"**", ["startend:quotation"], [{}]).loose == [True]


def test_none_kwargs_are_dropped_like_hf_rows():
    hf_kwargs = {"num_words": 2, "relation": "at least", "keywords": None, "language": None, "end_phrase": None}
    assert verify("one two", ["length_constraints:number_words"], [hf_kwargs]).strict == [True]


def test_repeat_prompt_takes_the_prompt():
    prompt = "Say hi."
    assert verify("say hi. Hi!", ["combination:repeat_prompt"], [{}], prompt=prompt).strict == [True]
    assert verify("Hi!", ["combination:repeat_prompt"], [{"prompt_to_repeat": prompt}]).strict == [False]
    with pytest.raises(ValueError, match="needs"):
        verify("Hi!", ["combination:repeat_prompt"], [{}])


def test_unknown_id_and_bad_kwargs_name_the_record():
    with pytest.raises(ValueError, match=r"data.jsonl:12.*unknown instruction id 'nope:x'"):
        validate_spec(["nope:x"], [{}], where="data.jsonl:12")
    with pytest.raises(ValueError, match=r"rec 3.*missing kwarg 'num_words'"):
        validate_spec(["length_constraints:number_words"], [{"relation": "at least"}], where="rec 3")
    with pytest.raises(ValueError, match=r"relation='more than'"):
        validate_spec(["length_constraints:number_words"], [{"relation": "more than", "num_words": 3}])
    with pytest.raises(ValueError, match=r"unexpected kwargs \['colour'\]"):
        validate_spec(["punctuation:no_comma"], [{"colour": "red"}])
    with pytest.raises(ValueError, match=r"num_words='3' should be int"):
        validate_spec(["length_constraints:number_words"], [{"relation": "at least", "num_words": "3"}])
    with pytest.raises(ValueError, match=r"keywords should hold str items"):
        validate_spec(["keywords:existence"], [{"keywords": ["a", 3]}])
    with pytest.raises(ValueError, match="kwargs should be a list of 2"):
        validate_spec(["punctuation:no_comma", "startend:quotation"], [{}])
    with pytest.raises(ValueError, match="where-label"):
        verify("x", ["nope:x"], [{}], where="where-label")


def test_get_checker_lists_known_ids():
    assert get_checker("punctuation:no_comma")("a b")
    with pytest.raises(KeyError, match="known ids: .*punctuation:no_comma"):
        get_checker("punctuation:none")


def test_register_user_checker():
    @register_checker("test:min_lines")
    def min_lines(response: str, *, n: int) -> bool:
        return len(response.splitlines()) >= n

    try:
        assert "test:min_lines" in CHECKERS
        assert verify("a\nb", ["test:min_lines"], [{"n": 2}]).strict == [True]
        with pytest.raises(ValueError, match="missing kwarg 'n'"):
            validate_spec(["test:min_lines"], [{}])
        with pytest.raises(ValueError, match="already registered"):
            register_checker("test:min_lines")(lambda response: True)
        register_checker("test:min_lines", replace=True)(lambda response: True)
        assert verify("", ["test:min_lines"], [{}]).strict == [False]  # empty response still fails
    finally:
        from uniapl.verifiers import registry

        registry._REGISTRY.pop("test:min_lines", None)


def test_raising_user_checker_counts_as_not_followed():
    @register_checker("test:raises")
    def boom(response: str) -> bool:
        raise RuntimeError("boom")

    try:
        assert verify("text", ["test:raises"], [{}]) == Verdict([False], [False])
    finally:
        from uniapl.verifiers import registry

        registry._REGISTRY.pop("test:raises", None)


def test_rewards_and_metrics():
    v = Verdict(strict=[True, False], loose=[True, True])
    assert verifiable_reward(v) == 0.0
    assert verifiable_reward(v, mode="loose") == 1.0
    assert verifiable_reward(v, partial=True) == 0.5
    assert verifiable_reward(Verdict([], [])) == 1.0
    with pytest.raises(ValueError):
        verifiable_reward(v, mode="lenient")
    m = ifeval_metrics([v, Verdict([True], [True])])
    assert m == {
        "prompt_level_strict_acc": 0.5,
        "inst_level_strict_acc": 2 / 3,
        "prompt_level_loose_acc": 1.0,
        "inst_level_loose_acc": 1.0,
    }


def test_verify_many_matches_verify():
    responses = ["a, b", "a b", ""]
    ids = [["punctuation:no_comma"]] * 3
    out = verify_many(responses, ids, [[{}]] * 3)
    assert [v.strict for v in out] == [[False], [True], [False]]
    assert verify_many(responses * 30, ids * 30, workers=2, chunk_size=16) == out * 30


def test_same_input_same_verdict():
    text = "Das ist ein kurzer deutscher Satz über das Wetter."
    first = verify(text, ["language:response_language"], [{"language": "de"}])
    assert all(verify(text, ["language:response_language"], [{"language": "de"}]) == first for _ in range(5))
    assert first.strict == [True]
