"""`uniapl data build`: conflict rule, determinism, kwargs validity, decontamination, readable output."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from uniapl.cli import main
from uniapl.data import constraints as C
from uniapl.data.build import BuildStats, build_records, read_base_prompts, select_ids
from uniapl.data.decontaminate import NgramIndex, ifeval_prompts
from uniapl.data.decontaminate import words as dc_words
from uniapl.verifiers import IFEVAL_INSTRUCTION_IDS, validate_spec, verify

IFEVAL_FILE = Path("/work/shared/data/ifeval/input_data.jsonl")
BASE = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how photosynthesis works to a ten year old.",
    "Give me three tips for a job interview at a bakery.",
    "Describe the water cycle.",
    "Compose a letter to your future self about the year you just had.",
    "What are the pros and cons of remote work?",
]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def test_conflict_table_matches_ifeval_rules():
    ids = set(IFEVAL_INSTRUCTION_IDS)
    assert set(C.CONFLICTS) == ids
    for a in ids:
        assert a in C.CONFLICTS[a]  # reflexive
        for b in C.CONFLICTS[a]:
            assert a in C.CONFLICTS[b]  # symmetric (conflict_make)
    # rows of IFEval's table, and what the symmetric closure adds
    assert C.CONFLICTS["detectable_format:constrained_response"] == ids
    assert C.conflicts("keywords:existence", "language:response_language")  # only via the language row
    assert C.conflicts("detectable_format:title", "startend:quotation")
    assert C.conflicts("length_constraints:number_sentences", "length_constraints:number_paragraphs")
    assert not C.conflicts("keywords:existence", "detectable_format:json_format")
    assert not C.conflicts("punctuation:no_comma", "combination:two_responses")
    assert not C.conflicts("punctuation:no_comma", "detectable_format:title")
    assert C.conflicts("punctuation:no_comma", "detectable_format:json_format")


def test_no_record_holds_two_conflicting_ids_over_many_seeds():
    allowed = select_ids()
    assert len(allowed) == 25
    seen = set()
    for seed in range(60):
        for i, text in enumerate(BASE):
            for k in (1, 2, 3, 4):
                ids, kwargs = C.constraints_for(seed, i, text, k, allowed)
                assert len(ids) == k == len(kwargs)
                seen.update(ids)
                for x in range(k):
                    for y in range(x + 1, k):
                        assert not C.conflicts(ids[x], ids[y]), (ids[x], ids[y])
                        assert not C.conflicts(ids[y], ids[x])
    assert seen == set(allowed)  # every id gets drawn


def test_too_many_constraints_is_a_clear_error():
    with pytest.raises(ValueError, match="ask for fewer"):
        C.draw_ids(random.Random(0), 3, ["detectable_format:constrained_response", "punctuation:no_comma",
                                         "detectable_format:title"], max_tries=200)


def test_kwargs_are_valid_and_instantiate_their_checker():
    allowed = select_ids()
    for seed in range(12):
        for i, text in enumerate(BASE):
            ids, kwargs = C.constraints_for(seed, i, text, 3, allowed)
            validate_spec(ids, kwargs, where=f"seed {seed}")
            v = verify("A plain answer.", ids, kwargs, prompt=text)  # every checker runs with these kwargs
            assert len(v.strict) == 3
            words = [w for kw in kwargs for key in ("keywords", "forbidden_words") for w in kw.get(key, [])]
            words += [kw[key] for kw in kwargs for key in ("keyword", "first_word") if key in kw]
            assert len(words) == len(set(words))  # "include X" never meets "do not include X"
            for iid, kw in zip(ids, kwargs):
                if iid == "length_constraints:nth_paragraph_first_word":
                    assert 1 <= kw["nth_paragraph"] <= kw["num_paragraphs"] <= 5
                if iid == "length_constraints:number_words":
                    assert 100 <= kw["num_words"] <= 500
                if iid == "combination:repeat_prompt":
                    assert kw["prompt_to_repeat"] == text


def _record_with(iid: str, k: int = 2) -> tuple[str, list[str], list[dict]]:
    allowed = select_ids()
    for seed in range(500):
        ids, kwargs = C.constraints_for(seed, 0, BASE[0], k, allowed)
        if iid in ids:
            return BASE[0], ids, kwargs
    raise AssertionError(f"{iid} never drawn")


def _verdict(iid, kw, response, prompt=""):
    return verify(response, [iid], [kw], prompt=prompt).strict[0]


def test_hand_made_responses_score_as_expected():
    _, ids, kws = _record_with("keywords:existence")
    kw = kws[ids.index("keywords:existence")]
    a, b = kw["keywords"]
    assert _verdict("keywords:existence", kw, f"The {a} and the {b.upper()} were there.")
    assert not _verdict("keywords:existence", kw, f"Only the {a} was there.")

    _, ids, kws = _record_with("detectable_format:number_bullet_lists")
    kw = kws[ids.index("detectable_format:number_bullet_lists")]
    n = kw["num_bullets"]
    assert _verdict("detectable_format:number_bullet_lists", kw, "\n".join(f"* point {j}" for j in range(n)))
    assert not _verdict("detectable_format:number_bullet_lists", kw, "\n".join(f"* point {j}" for j in range(n + 1)))

    _, ids, kws = _record_with("length_constraints:number_words")
    kw = kws[ids.index("length_constraints:number_words")]
    n, rel = kw["num_words"], kw["relation"]
    assert _verdict("length_constraints:number_words", kw, " ".join(["word"] * (n if rel == "at least" else n - 1)))
    assert not _verdict("length_constraints:number_words", kw, " ".join(["word"] * (n - 1 if rel == "at least" else n)))

    _, ids, kws = _record_with("startend:end_checker")
    kw = kws[ids.index("startend:end_checker")]
    assert _verdict("startend:end_checker", kw, "Here is my answer. " + kw["end_phrase"])
    assert not _verdict("startend:end_checker", kw, kw["end_phrase"] + " Here is my answer.")

    base, ids, kws = _record_with("combination:repeat_prompt")
    kw = kws[ids.index("combination:repeat_prompt")]
    assert _verdict("combination:repeat_prompt", kw, base + "\nOnce upon a time ...")
    assert not _verdict("combination:repeat_prompt", kw, "Once upon a time ...")

    _, ids, kws = _record_with("length_constraints:nth_paragraph_first_word")
    kw = kws[ids.index("length_constraints:nth_paragraph_first_word")]
    paras = ["Some text here."] * kw["num_paragraphs"]
    paras[kw["nth_paragraph"] - 1] = kw["first_word"].capitalize() + " starts this paragraph."
    assert _verdict("length_constraints:nth_paragraph_first_word", kw, "\n\n".join(paras))
    assert not _verdict("length_constraints:nth_paragraph_first_word", kw, "\n\n".join(paras + ["One more."]))

    assert _verdict("punctuation:no_comma", {}, "No commas here.")
    assert not _verdict("punctuation:no_comma", {}, "Yes, one comma.")


def test_descriptions_are_ifeval_phrasing():
    assert C.describe("length_constraints:number_words", {"num_words": 300, "relation": "at least"}) == \
        "Answer with at least 300 words."
    assert C.describe("keywords:existence", {"keywords": ["apple", "river"]}) == \
        "Include keywords ['apple', 'river'] in the response."
    assert C.describe("language:response_language", {"language": "de"}) == \
        "Your ENTIRE response should be in German language, no other language is allowed."
    # every IFEval prompt that states these instructions uses the same sentence somewhere
    rows = [json.loads(l) for l in IFEVAL_FILE.read_text().splitlines()]
    capital = [r for r in rows if "change_case:english_capital" in r["instruction_id_list"]]
    assert any(C.describe("change_case:english_capital", {}) in r["prompt"] for r in capital)


def test_keywords_are_distinct_words_not_substrings_of_each_other():
    for w in C.KEYWORDS:
        assert w.isalpha() and w.islower()
        assert not any(w != o and w in o for o in C.KEYWORDS), w


def test_deterministic_for_a_seed_and_base_text_kept(tmp_path):
    base = tmp_path / "base.txt"
    base.write_text("\n".join(BASE) + "\n")
    outs = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        out = tmp_path / f"{name}.jsonl"
        assert main(["data", "build", str(base), "--output", str(out), "--num-constraints", "3", "--seed", str(seed),
                     "--no-progress"]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]
    rows = _jsonl(tmp_path / "a.jsonl")
    assert [r["key"] for r in rows] == list(range(len(BASE)))
    for r, text in zip(rows, BASE):
        assert r["base_prompt"] == text and r["prompt"].startswith(text + "\n\n")
        assert r["prompt"] == C.compose_prompt(text, r["instruction_id_list"], r["kwargs"])
        assert len(r["instruction_id_list"]) == 3


def test_range_of_constraints_and_include_exclude(tmp_path):
    base = tmp_path / "base.jsonl"
    base.write_text("".join(json.dumps({"id": f"q{i}", "question": t}) + "\n" for i, t in enumerate(BASE * 5)))
    out = tmp_path / "out.jsonl"
    assert main(["data", "build", str(base), "--output", str(out), "--num-constraints", "1-2", "--field", "question",
                 "--key-field", "id", "--exclude", "language:,combination:", "--no-progress"]) == 0
    rows = _jsonl(out)
    assert rows[0]["key"] == "q0"
    assert {len(r["instruction_id_list"]) for r in rows} == {1, 2}
    assert not any(i.startswith(("language:", "combination:")) for r in rows for i in r["instruction_id_list"])
    out2 = tmp_path / "only.jsonl"
    assert main(["data", "build", str(base), "--output", str(out2), "--num-constraints", "1", "--field", "question",
                 "--instructions", "punctuation:no_comma", "--no-progress"]) == 0
    assert {tuple(r["instruction_id_list"]) for r in _jsonl(out2)} == {("punctuation:no_comma",)}


def test_decontamination_count_on_a_constructed_input(tmp_path):
    ifeval = ifeval_prompts()
    assert len(ifeval) == 541
    rows = [json.loads(l) for l in IFEVAL_FILE.read_text().splitlines()]
    assert [p for _, p in ifeval] == [r["prompt"] for r in rows]  # the shipped copy is IFEval's data
    long_one = rows[0]["prompt"]  # 40+ words
    words = dc_words(long_one)
    base = [
        long_one,  # verbatim: dropped
        long_one.upper().replace(",", " ,"),  # case and punctuation differ: dropped
        "Please help me. " + " ".join(words[5:18]) + " and more of my own words here.",  # one shared 13-gram: dropped
        " ".join(words[5:17]) + " plus my own ending that is not in the benchmark at all.",  # 12 words only: kept
        rows[1]["prompt"],  # dropped
        *BASE,  # kept
    ]
    path = tmp_path / "base.json"
    path.write_text(json.dumps(base))
    out = tmp_path / "out.jsonl"
    assert main(["data", "build", str(path), "--output", str(out), "--decontaminate", "--no-progress"]) == 0
    kept = _jsonl(out)
    assert len(kept) == len(BASE) + 1
    assert kept[0]["key"] == 3 and [r["base_prompt"] for r in kept[1:]] == BASE

    stats = BuildStats()
    list(build_records(((f"x:{i}", None, t) for i, t in enumerate(base)), num_constraints=(1, 1), seed=0,
                       allowed=select_ids(), index=NgramIndex.build(ifeval), stats=stats))
    assert (stats.read, stats.contaminated, stats.written) == (len(base), 4, len(BASE) + 1)
    assert stats.contaminated_keys == {rows[0]["key"]: 3, rows[1]["key"]: 1}

    # a short prompt is dropped only when it is an evaluation prompt (normalized); --ngram changes n
    idx = NgramIndex.build([(1, "Write a poem.")], n=13)
    assert idx.match("write a POEM!") == 1 and idx.match("Write a poem about cats.") is None
    assert NgramIndex.build([(1, "one two three four five")], n=3).match("zero two three four") == 1


def test_decontaminate_against_a_file(tmp_path):
    against = tmp_path / "eval.txt"
    against.write_text(BASE[0] + "\n")
    base = tmp_path / "base.txt"
    base.write_text("\n".join(BASE) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["data", "build", str(base), "--output", str(out), "--decontaminate-against", str(against),
                 "--no-progress"]) == 0
    assert [r["base_prompt"] for r in _jsonl(out)] == BASE[1:]


def test_output_read_by_train_loader_and_ifeval_score(tmp_path, capsys):
    from uniapl.config import load_config
    from uniapl.training.validation import stage_records

    base = tmp_path / "base.txt"
    base.write_text("\n".join(BASE) + "\n")
    out = tmp_path / "data.jsonl"
    assert main(["data", "build", str(base), "--output", str(out), "--num-constraints", "1", "--seed", "3",
                 "--instructions", "punctuation:no_comma,detectable_format:title", "--no-progress"]) == 0
    cfg = load_config(None, ["algorithm=grpo", f"data.train.path={out}", f"data.eval.path={out}"])
    _, pref, ev = stage_records(cfg)
    assert len(pref) == len(ev) == len(BASE)
    assert pref[0].prompt == _jsonl(out)[0]["prompt"] and pref[0].instruction_id_list

    # responses joined by key: a known-compliant answer for the odd keys, a violating one for the even keys
    rows = _jsonl(out)
    responses = tmp_path / "responses.jsonl"
    with responses.open("w") as f:
        for r in rows:
            good = "<<A title>> No commas here." if r["key"] % 2 else "Commas, and no title."
            f.write(json.dumps({"key": r["key"], "response": good}) + "\n")
    metrics = tmp_path / "metrics.json"
    assert main(["ifeval", "score", "--responses", str(responses), "--prompts", str(out), "--metrics", str(metrics)]) == 0
    m = json.loads(metrics.read_text())
    assert m["prompt_level_strict_acc"] == pytest.approx(0.5)


def test_user_errors_exit_2_with_one_message(tmp_path, capsys):
    base = tmp_path / "base.txt"
    base.write_text("Hello there, how are you?\n")
    out = tmp_path / "out.jsonl"
    out.write_text("mine\n")
    assert main(["data", "build", str(base), "--output", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err
    assert out.read_text() == "mine\n"  # not touched
    assert main(["data", "build", str(base), "--output", str(out), "--overwrite", "--no-progress"]) == 0
    assert len(_jsonl(out)) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n')
    assert main(["data", "build", str(bad), "--output", str(tmp_path / "o.jsonl"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1" in err and "--field" in err
    assert not (tmp_path / "o.jsonl").exists() and not list(tmp_path.glob(".o.jsonl*"))  # nothing half-written
    assert main(["data", "build", str(base), "--output", str(tmp_path / "o.jsonl"), "--instructions", "nope:x"]) == 2
    assert "unknown instruction id" in capsys.readouterr().err
    assert main(["data", "build", str(base), "--output", str(tmp_path / "o.jsonl"), "--num-constraints", "30"]) == 2
    assert main(["data", "build", str(tmp_path / "missing.txt"), "--output", str(tmp_path / "o.jsonl")]) == 2


def test_hf_dataset_saved_to_disk(tmp_path):
    import datasets

    ds = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"prompt": BASE, "key": list(range(100, 106))})})
    ds.save_to_disk(str(tmp_path / "ds"))
    got = list(read_base_prompts(str(tmp_path / "ds")))
    assert [g[1] for g in got] == list(range(100, 106)) and [g[2] for g in got] == BASE
    msgs = datasets.Dataset.from_dict({"messages": [[{"role": "user", "content": t}] for t in BASE]})
    msgs.save_to_disk(str(tmp_path / "msgs"))
    assert [g[2] for g in read_base_prompts(str(tmp_path / "msgs"), field_name="messages")] == BASE
