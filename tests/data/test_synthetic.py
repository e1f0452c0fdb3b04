"""The bundled synthetic task: ground truth always passes, the teacher is good but imperfect, the
warm-up student is weak, eval is held out, generation is deterministic, specs are valid."""

from __future__ import annotations

import json
import re
from dataclasses import asdict

import pytest

import uniapl.data.synthetic as synthetic
from uniapl.data.records import Record
from uniapl.data.synthetic import (
    INSTRUCTION_IDS,
    SyntheticTaskConfig,
    count_words,
    generate_task,
    instruction_combinations,
    task_corpus,
    write_jsonl,
)
from uniapl.data.synthetic_vocab import (
    END_PHRASES,
    KEYWORDS,
    PLAIN,
    SYNONYMS,
    TEACHER,
    TOPICS,
)
from uniapl.verifiers import IFEVAL_INSTRUCTION_IDS, validate_spec, verify

SMALL = SyntheticTaskConfig(seed=0, n_train=300, n_eval=64, n_warmup=300)


@pytest.fixture(scope="module")
def task() -> dict[str, list[Record]]:
    return generate_task(SMALL)


def _verdicts(records, field):
    return [verify(getattr(r, field), r.instruction_id_list, r.kwargs) for r in records]


def _expected_prompt_rate(records, p):
    return sum(p ** len(r.instruction_id_list) for r in records) / len(records)


def _words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[A-Za-z]+", text)}


def test_splits_and_fields(task):
    assert set(task) == {"train", "eval", "warmup"}
    assert [len(task[s]) for s in ("train", "eval", "warmup")] == [SMALL.n_train, SMALL.n_eval, SMALL.n_warmup]
    for split, records in task.items():
        for r in records:
            assert isinstance(r.prompt, str) and r.prompt
            assert SMALL.min_instructions <= len(r.instruction_id_list) <= SMALL.max_instructions
            assert len(r.kwargs) == len(r.instruction_id_list)
            assert r.ground_truth
            assert (r.teacher is None) == (split == "warmup")
    assert len({r.key for rs in task.values() for r in rs}) == sum(map(len, task.values()))


def test_instruction_subset_and_specs_are_valid(task):
    assert set(INSTRUCTION_IDS) <= set(IFEVAL_INSTRUCTION_IDS)
    used = set()
    for records in task.values():
        for r in records:
            validate_spec(r.instruction_id_list, r.kwargs, where=r.source)
            used.update(r.instruction_id_list)
            assert "change_case:english_lowercase" not in r.instruction_id_list or (
                "change_case:english_capital" not in r.instruction_id_list
            )
            spec = dict(zip(r.instruction_id_list, r.kwargs))
            if "keywords:existence" in spec and "keywords:forbidden_words" in spec:
                assert not set(spec["keywords:existence"]["keywords"]) & set(
                    spec["keywords:forbidden_words"]["forbidden_words"]
                )
            if "length_constraints:number_words" in spec:
                assert spec["length_constraints:number_words"]["relation"] in ("less than", "at least")
    assert used == set(INSTRUCTION_IDS)


def test_ground_truth_always_passes(task):
    for split in ("train", "eval"):
        for r, v in zip(task[split], _verdicts(task[split], "ground_truth")):
            assert all(v.strict), (r.instruction_id_list, r.kwargs, r.ground_truth)


def test_teacher_is_good_but_imperfect_and_beats_warmup(task):
    records = task["train"] + task["eval"]
    teacher = [v.prompt_strict for v in _verdicts(records, "teacher")]
    rate = sum(teacher) / len(teacher)
    expected = _expected_prompt_rate(records, SMALL.teacher_follow_prob)
    assert abs(rate - expected) < 0.07, (rate, expected)
    assert rate < 1.0  # imperfect

    warm = task["warmup"]
    weak = [v.prompt_strict for v in _verdicts(warm, "ground_truth")]
    weak_rate = sum(weak) / len(weak)
    assert abs(weak_rate - _expected_prompt_rate(warm, SMALL.student_follow_prob)) < 0.07, weak_rate
    assert rate - weak_rate > 0.4, (rate, weak_rate)


def test_instruction_level_rates_follow_the_config(task):
    for records, field, p in ((task["train"], "teacher", SMALL.teacher_follow_prob),
                              (task["warmup"], "ground_truth", SMALL.student_follow_prob)):
        flags = [ok for v in _verdicts(records, field) for ok in v.strict]
        assert abs(sum(flags) / len(flags) - p) < 0.06, (field, sum(flags) / len(flags))


def test_follow_probabilities_are_respected_at_the_extremes():
    """Every violation is a real one, and every followed instruction passes, in both styles."""
    for p, check in ((0.0, lambda v: not any(v.strict)), (1.0, lambda v: all(v.strict))):
        cfg = SyntheticTaskConfig(seed=3, n_train=60, n_eval=8, n_warmup=60, teacher_follow_prob=p,
                                  student_follow_prob=p)
        t = generate_task(cfg)
        for records, field in ((t["train"], "teacher"), (t["warmup"], "ground_truth")):
            for r, v in zip(records, _verdicts(records, field)):
                assert check(v), (p, field, r.instruction_id_list, r.kwargs, getattr(r, field))


def test_teacher_style_is_distinct_from_ground_truth(task):
    for r in task["train"]:
        assert "certainly" in r.teacher.lower()
        assert "certainly" not in r.ground_truth.lower()
    n_teacher = sum(count_words(r.teacher) for r in task["train"]) / len(task["train"])
    n_gt = sum(count_words(r.ground_truth) for r in task["train"]) / len(task["train"])
    assert n_teacher > n_gt + 5


def test_responses_are_short(task):
    lengths = [count_words(r.ground_truth) for rs in task.values() for r in rs]
    assert min(lengths) >= 8 and max(lengths) <= 70
    assert 15 <= sum(lengths) / len(lengths) <= 40


def test_eval_is_held_out(task):
    train_prompts = {r.prompt for r in task["train"]} | {r.prompt for r in task["warmup"]}
    assert not train_prompts & {r.prompt for r in task["eval"]}

    def pair(r):
        topic = re.search(r"the (\w+)", r.prompt).group(1)
        return topic, tuple(sorted(r.instruction_id_list))

    seen = {pair(r) for r in task["train"] + task["warmup"]}
    held = [pair(r) for r in task["eval"]]
    assert len(set(held)) == len(held)
    assert not seen & set(held)
    # ... while every eval combination was trained on, on other topics.
    train_combos = {c for _, c in (pair(r) for r in task["train"])}
    assert {c for _, c in held} <= train_combos


def test_every_combination_is_in_train():
    combos = instruction_combinations(1, 2)
    t = generate_task(SyntheticTaskConfig(seed=1, n_train=len(combos), n_eval=4, n_warmup=0))
    assert {tuple(sorted(r.instruction_id_list)) for r in t["train"]} == {tuple(sorted(c)) for c in combos}


def test_deterministic_for_a_seed_and_different_across_seeds():
    cfg = SyntheticTaskConfig(seed=5, n_train=40, n_eval=8, n_warmup=40)
    a, b = generate_task(cfg), generate_task(SyntheticTaskConfig(**asdict(cfg)))
    assert {k: [asdict(r) for r in v] for k, v in a.items()} == {k: [asdict(r) for r in v] for k, v in b.items()}
    c = generate_task(SyntheticTaskConfig(**{**asdict(cfg), "seed": 6}))
    for split in a:
        assert [r.prompt for r in a[split]] != [r.prompt for r in c[split]]
    # Splits are independent streams: a bigger train split leaves eval and warm-up unchanged.
    d = generate_task(SyntheticTaskConfig(**{**asdict(cfg), "n_train": 41}))
    assert [asdict(r) for r in d["eval"]] == [asdict(r) for r in a["eval"]]
    assert [asdict(r) for r in d["warmup"]] == [asdict(r) for r in a["warmup"]]


def test_three_instructions_per_prompt():
    cfg = SyntheticTaskConfig(seed=2, n_train=80, n_eval=16, n_warmup=0, min_instructions=3, max_instructions=3)
    t = generate_task(cfg)
    for r, v in zip(t["train"] + t["eval"], _verdicts(t["train"] + t["eval"], "ground_truth")):
        assert len(r.instruction_id_list) == 3
        assert all(v.strict), (r.instruction_id_list, r.kwargs, r.ground_truth)


def test_language_fallback_keeps_answers_valid(monkeypatch):
    """When langdetect dislikes a case-constrained answer, another draft is made (and still passes)."""
    calls = []

    def every_other(text):  # rejects every first draft
        calls.append(text)
        return len(calls) % 2 == 0

    monkeypatch.setattr(synthetic, "_is_english", every_other)
    cfg = SyntheticTaskConfig(seed=4, n_train=200, n_eval=0, n_warmup=0)
    records = generate_task(cfg)["train"]
    cased = [r for r in records if {"change_case:english_lowercase", "change_case:english_capital"}
             & set(r.instruction_id_list)]
    assert cased and len(calls) >= 2 * len(cased)
    assert calls[1::2] and all(text in {r.ground_truth for r in records} | {r.teacher for r in records}
                               for text in calls[1::2])
    for r, v in zip(records, _verdicts(records, "ground_truth")):
        assert all(v.strict), (r.instruction_id_list, r.kwargs, r.ground_truth)

    monkeypatch.setattr(synthetic, "_is_english", lambda text: False)
    with pytest.raises(RuntimeError, match="English"):
        generate_task(cfg)


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError):
        generate_task(SyntheticTaskConfig(min_instructions=3, max_instructions=2))
    with pytest.raises(ValueError):
        generate_task(SyntheticTaskConfig(n_eval=10**6))
    with pytest.raises(ValueError):
        generate_task(SyntheticTaskConfig(teacher_follow_prob=1.5))
    with pytest.raises(ValueError):
        generate_task(SyntheticTaskConfig(n_train=-1))


def test_vocabulary_invariants(task):
    texts = [x for rs in task.values() for r in rs for x in (r.ground_truth, r.teacher) if x]
    vocab = set().union(*(_words(x) for x in texts))
    assert 150 <= len(vocab) <= 600, len(vocab)
    # A keyword is only ever found where it was asked for (existence is a substring search).
    for kw in KEYWORDS:
        assert not [w for w in vocab if kw in w and w != kw], kw
    names_and_adjs = {t.name for t in TOPICS} | {a for t in TOPICS for a in t.adjs}
    assert not names_and_adjs & set(SYNONYMS.values())
    assert not names_and_adjs & {t.alt for t in TOPICS}
    assert not set(KEYWORDS) & (names_and_adjs | set(SYNONYMS.values()) | {t.alt for t in TOPICS})
    assert {a for t in TOPICS for a in t.adjs} <= set(SYNONYMS)
    for style in (PLAIN, TEACHER):
        for s in (style.title, style.postscript, style.keywords):
            assert "," not in s
        assert "," in style.opening + style.first  # so a kept comma is always there to find
    assert all("," not in e for e in END_PHRASES)


def test_task_corpus_and_write_jsonl(task, tmp_path):
    corpus = list(task_corpus(SMALL, task=task))
    n = sum(len(rs) for rs in task.values())
    assert len(corpus) == n + n + len(task["train"]) + len(task["eval"])
    assert task["eval"][0].teacher in corpus
    small = SyntheticTaskConfig(seed=9, n_train=5, n_eval=2, n_warmup=5)
    assert list(task_corpus(small)) == list(task_corpus(small, task=generate_task(small)))

    path = write_jsonl(task["eval"], tmp_path / "sub" / "eval.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == len(task["eval"])
    assert set(rows[0]) == {"key", "prompt", "instruction_id_list", "kwargs", "ground_truth", "teacher"}
    for row, r in zip(rows, task["eval"]):
        assert row["prompt"] == r.prompt and row["kwargs"] == r.kwargs and row["teacher"] == r.teacher


def test_largest_eval_split_still_leaves_every_combination_trainable():
    combos = instruction_combinations(1, 2)
    n_eval = len(combos) * (len(TOPICS) // 2)
    cfg = SyntheticTaskConfig(seed=7, n_train=len(combos), n_eval=n_eval, n_warmup=10, check_language=False)
    t = generate_task(cfg)
    assert len(t["eval"]) == n_eval
    assert not {r.prompt for r in t["train"]} & {r.prompt for r in t["eval"]}


def test_global_random_state_is_untouched():
    import random

    random.seed(123)
    before = random.getstate()
    generate_task(SyntheticTaskConfig(seed=8, n_train=30, n_eval=4, n_warmup=30))
    assert random.getstate() == before


def test_warmup_teacher_style_share():
    from dataclasses import replace

    from uniapl.data.synthetic import SyntheticTaskConfig, generate_task

    base = SyntheticTaskConfig(n_train=0, n_eval=0, n_warmup=400, check_language=False)
    plain = generate_task(base)["warmup"]
    mixed = generate_task(replace(base, warmup_teacher_style_prob=0.5))["warmup"]
    opener = "certainly, here is a short note"
    share = sum(opener in r.ground_truth.lower().replace('"', "") for r in mixed) / len(mixed)
    assert sum(opener in r.ground_truth.lower() for r in plain) == 0
    assert 0.35 < share < 0.65
