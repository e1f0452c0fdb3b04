import json

import pytest

from uniapl.config import DataSource
from uniapl.data.loaders import DataError, load_records, read_jsonl, require, validate_specs


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) if not isinstance(r, str) else r for r in rows) + "\n")
    return path


def test_jsonl_text_and_chat_prompts(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "Say hi in lowercase.", "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}],
         "response": "hi there", "teacher": "hello there"},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], "key": 7},
    ])
    recs = read_jsonl(p)
    assert recs[0].ground_truth == "hi there" and recs[0].teacher == "hello there"
    assert recs[1].prompt == [{"role": "user", "content": "Hi"}] and recs[1].ground_truth == "Hello!"
    assert recs[1].source.endswith("d.jsonl:2")


def test_errors_name_file_and_line(tmp_path):
    p = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}, "{not json"])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        read_jsonl(p)
    p = write_jsonl(tmp_path / "bad2.jsonl", [{"prompt": "ok"}, {"response": "no prompt"}])
    with pytest.raises(DataError, match=r"bad2\.jsonl:2: missing the prompt"):
        read_jsonl(p)
    p = write_jsonl(tmp_path / "bad3.jsonl", [{"prompt": "x", "instruction_id_list": ["a", "b"], "kwargs": [{}]}])
    with pytest.raises(DataError, match=r"bad3\.jsonl:1: 2 instruction ids but 1 kwargs"):
        read_jsonl(p)


def test_require_names_record_and_purpose(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "teacher": "t"}, {"prompt": "b"}])
    recs = read_jsonl(p)
    with pytest.raises(DataError, match=r"d\.jsonl:2: record lacks 'teacher', which the adversarial term needs"):
        require(recs, ["teacher"], "the adversarial term")


def test_unknown_instruction_id_names_record(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "instruction_id_list": ["nope:nothing"], "kwargs": [{}]}])
    with pytest.raises(ValueError, match=r"d\.jsonl:1"):
        validate_specs(read_jsonl(p))


def test_local_dataset_dir(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([{"prompt": "p1", "response": "r1", "instruction_id_list": [], "kwargs": []}])
    ds.save_to_disk(str(tmp_path / "ds"))
    recs = load_records(DataSource(path=str(tmp_path / "ds")))
    assert recs[0].ground_truth == "r1" and recs[0].source.endswith("[train][0]")
    write_jsonl(tmp_path / "files" / "train.jsonl" if (tmp_path / "files").mkdir() is None else None,
                [{"prompt": "p2", "teacher": "t2"}])
    recs = load_records(DataSource(path=str(tmp_path / "files"), split="train"))
    assert recs[0].teacher == "t2"


def test_published_layouts_through_data_source(tmp_path):
    p = tmp_path / "ifbench.jsonl"
    row = {"messages": [{"role": "user", "content": "Answer without commas."}],
           "ground_truth": json.dumps([{"instruction_id": ["punctuation:no_comma"], "kwargs": [None]}])}
    p.write_text(json.dumps(row) + "\n")
    recs = load_records(DataSource(path=str(p), format="ifbench"))
    assert recs[0].instruction_id_list == ["punctuation:no_comma"]
