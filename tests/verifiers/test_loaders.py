"""Training-data loaders: published layouts -> Records; bad records are errors naming them."""

import json

import pytest

from uniapl.data.layouts import DataError, load_autoif, load_ifbench, load_ifeval_like, load_instruction_data
from uniapl.data.records import Record
from uniapl.verifiers import verify


def _write(tmp_path, rows, name="data.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return p


def test_ifeval_input_data_loads(data_dir):
    recs = load_ifeval_like(data_dir / "input_data.jsonl")
    assert len(recs) == 541 and all(isinstance(r, Record) for r in recs)
    assert recs[0].key == 1000 and recs[0].source.endswith("input_data.jsonl:1")
    assert load_instruction_data(data_dir / "input_data.jsonl")[5].instruction_id_list == recs[5].instruction_id_list


def test_ifeval_like_hf_rows_with_none_kwargs_and_json_strings():
    rows = [
        {"key": 1, "prompt": "Write two words.", "instruction_id_list": ["length_constraints:number_words"],
         "kwargs": [{"num_words": 2, "relation": "at least", "keywords": None, "language": None}]},
        {"key": 2, "prompt": "No commas.", "instruction_id_list": '["punctuation:no_comma"]', "kwargs": "[{}]",
         "response": "ok then"},
    ]
    recs = load_ifeval_like(rows, name="hf")
    assert recs[0].kwargs == [{"num_words": 2, "relation": "at least"}]
    assert recs[1].instruction_id_list == ["punctuation:no_comma"] and recs[1].teacher == "ok then"
    assert recs[1].source == "hf[1]"


def test_ifeval_like_errors_name_the_record(tmp_path):
    p = _write(tmp_path, [
        {"key": 1, "prompt": "x", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
        {"key": 2, "prompt": "x", "instruction_id_list": ["punctuation:no_commas"], "kwargs": [{}]},
    ])
    with pytest.raises(DataError, match=r"data.jsonl:2: unknown instruction id 'punctuation:no_commas'"):
        load_ifeval_like(p)
    p = _write(tmp_path, [{"prompt": "x", "instruction_id_list": ["length_constraints:number_words"],
                           "kwargs": [{"num_words": "many", "relation": "at least"}]}], "bad.jsonl")
    with pytest.raises(DataError, match=r"bad.jsonl:1: .*num_words='many' should be int"):
        load_ifeval_like(p)


def test_ifbench_rlvr_layout(tmp_path):
    gt = [{"instruction_id": ["punctuation:no_comma", "keywords:existence"], "kwargs": [None, {"keywords": ["tea"]}]}]
    rows = [{"key": "a1", "messages": [{"role": "user", "content": "Tell me about tea."}],
             "ground_truth": json.dumps(gt), "dataset": "ifeval", "constraint_type": "x", "constraint": "y"},
            {"key": "a2", "messages": [{"role": "user", "content": "Hi"}],
             "ground_truth": str({"instruction_id": "startend:quotation", "kwargs": None})}]
    recs = load_ifbench(_write(tmp_path, rows))
    assert recs[0].instruction_id_list == ["punctuation:no_comma", "keywords:existence"]
    assert recs[0].kwargs == [{}, {"keywords": ["tea"]}]
    assert recs[0].prompt == [{"role": "user", "content": "Tell me about tea."}]
    assert recs[1].instruction_id_list == ["startend:quotation"] and recs[1].kwargs == [{}]
    v = verify("I like tea", recs[0].instruction_id_list, recs[0].kwargs)
    assert v.strict == [True, True]


def test_ifbench_unknown_ids(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "x"}],
             "ground_truth": json.dumps([{"instruction_id": ["count:word_count_range"], "kwargs": [{"min_words": 1}]}])}]
    p = _write(tmp_path, rows)
    with pytest.raises(DataError, match=r"data.jsonl:1: unknown instruction id 'count:word_count_range'"):
        load_ifbench(p)
    assert load_ifbench(p, skip_unknown=True) == []


def test_autoif_layout(tmp_path):
    fn = "def evaluate(response):\n    return len(response.split()) <= 3"
    rows = [{"prompt": "Please answer the query strictly following the instruction.\n[instruction] At most 3 words\n[Query] hi",
             "instruction": "At most 3 words", "cases": [["a b c d", False]],
             "eval_func": [[fn, 1.0], ["def evaluate(response):\n    return True", 0.5]]},
            {"query": "What is tea?", "instruction": "Answer in lowercase", "eval_func": [fn], "response": "a drink"}]
    p = _write(tmp_path, rows)
    recs = load_autoif(p)
    assert recs[0].instruction_id_list == ["autoif:code", "autoif:code"]
    assert recs[0].kwargs[0]["source"] == fn
    assert recs[1].prompt == "What is tea?\nAnswer in lowercase" and recs[1].teacher == "a drink"
    assert len(load_autoif(p, min_accuracy=0.8)[0].kwargs) == 1
    assert load_instruction_data(p)[1].instruction_id_list == ["autoif:code"]
    assert verify("two words", recs[1].instruction_id_list, recs[1].kwargs).strict == [True]
    assert verify("one two three four", recs[1].instruction_id_list, recs[1].kwargs).strict == [False]


def test_autoif_errors(tmp_path):
    with pytest.raises(DataError, match=r"data.jsonl:1: 'eval_func' should be a non-empty list"):
        load_autoif(_write(tmp_path, [{"prompt": "x", "eval_func": []}]))
    with pytest.raises(DataError, match=r"data.jsonl:1: record has no 'prompt'"):
        load_autoif(_write(tmp_path, [{"eval_func": ["def evaluate(r): return True"]}]))
