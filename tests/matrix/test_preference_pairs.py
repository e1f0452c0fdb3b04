"""Building DPO pairs / KTO labels from verifiers and reference-policy samples (uniapl.data.pairs)."""

import pytest

from uniapl.data.loaders import DataError
from uniapl.data.pairs import PairBuilder
from uniapl.data.records import Record


def rec(**kw):
    base = dict(prompt="p", instruction_id_list=["punctuation:no_comma"], kwargs=[{}], source="test[0]")
    base.update(kw)
    return Record(**base)


def builder(samples, source="auto", prefer="teacher", calls=None):
    def sample_fn(records, n, seed):
        if calls is not None:
            calls.append(len(records))
        return [list(samples)[:n] for _ in records]

    return PairBuilder(source=source, sample_fn=sample_fn, passes_fn=lambda r, t: "," not in t, prefer=prefer,
                       num_samples=3)


def test_chosen_is_a_passing_reference_rejected_a_failing_sample():
    r = rec(ground_truth="plain answer", teacher="teacher answer")
    assert builder(["ok one", "bad, one"]).pairs([r], 0) == [("teacher answer", "bad, one")]
    assert builder(["bad, one"], prefer="ground_truth").pairs([r], 0) == [("plain answer", "bad, one")]
    # the teacher fails: the ground truth is chosen
    r2 = rec(ground_truth="plain answer", teacher="teacher, answer")
    assert builder(["bad, one"]).pairs([r2], 0) == [("plain answer", "bad, one")]


def test_fallbacks_and_no_pair():
    # every sample passes: the failing teacher answer is the rejected one
    r = rec(ground_truth="gt", teacher="teach, er")
    assert builder(["fine", "also fine"]).pairs([r], 0) == [("gt", "teach, er")]
    # nothing fails: no pair, the record is left out
    r2 = rec(ground_truth="gt", teacher="teacher")
    b = builder(["fine"])
    assert b.pairs([r2], 0) == [None] and b.stats["no_pair"] == 1
    # no reference answer passes: a passing sample is chosen
    r3 = rec(ground_truth=None, teacher="bad, teacher")
    assert builder(["good", "bad, s"]).pairs([r3], 0) == [("good", "bad, s")]


def test_data_pairs_win_and_pairs_are_cached():
    calls = []
    own = rec(chosen="c", rejected="r")
    built = rec(ground_truth="gt", teacher="t")
    b = builder(["x, y"], calls=calls)
    assert b.pairs([own, built], 0) == [("c", "r"), ("t", "x, y")]
    assert b.pairs([built, own], 1) == [("t", "x, y"), ("c", "r")]
    assert calls == [1]  # sampled once, for the one record that needed it
    # source=build ignores the data's pair
    assert builder(["x, y"], source="build").pairs([rec(chosen="c", rejected="r", teacher="t")], 0) == [("t", "x, y")]


def test_source_data_requires_the_fields():
    with pytest.raises(DataError, match="chosen"):
        builder([], source="data").pairs([rec()], 0)
    with pytest.raises(DataError, match="completion"):
        builder([], source="data").labelled([rec()], 0)
    with pytest.raises(DataError, match="instruction_id_list"):
        builder([]).pairs([rec(instruction_id_list=[], kwargs=[])], 0)


def test_kto_labels_from_data_or_pairs():
    own = rec(completion="answer", label=False)
    built = rec(ground_truth="gt", teacher="t")
    assert builder(["bad, s"]).labelled([own, built], 0) == [[("answer", False)], [("t", True), ("bad, s", False)]]
