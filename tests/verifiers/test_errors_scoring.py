"""`uniapl ifeval score` on hostile input: lone surrogates, raw invalid bytes, checkers that time out."""

import json

import pytest

from uniapl.cli import main
from uniapl.verifiers import register_checker, verify

LOWER = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}


def _lines(path, lines):
    path.write_bytes(b"".join(line if isinstance(line, bytes) else line.encode() + b"\n" for line in lines))
    return path


def _one_error(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_lone_surrogate_is_scored_and_written_back_escaped(tmp_path, capsys):
    rows = [json.dumps({"key": i, "response": f"answer {i}", **LOWER}) for i in range(14)]
    rows[3] = '{"key": 3, "response": "bad \\ud800 half, pair", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}'
    src = _lines(tmp_path / "responses.jsonl", rows)
    out = tmp_path / "verdicts.jsonl"
    assert main(["ifeval", "score", "--responses", str(src), "--output", str(out)]) == 0
    back = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["key"] for r in back] == list(range(14))  # all 14 lines, not 3
    assert back[3]["response"] == "bad \ud800 half, pair" and back[3]["strict"] == [False]
    assert back[0]["strict"] == [True]


def test_failed_write_leaves_no_partial_file(tmp_path, capsys):
    src = _lines(tmp_path / "responses.jsonl", [json.dumps({"key": 0, "response": "x", **LOWER})])
    out = tmp_path / "verdicts.jsonl"
    out.write_text("old\n")
    (tmp_path / "metrics_dir").mkdir()
    # the metrics path is a directory: the command fails, and the verdicts written before it are whole
    with pytest.raises(OSError):
        main(["ifeval", "score", "--responses", str(src), "--output", str(out), "--metrics", str(tmp_path / "metrics_dir")])
    assert [json.loads(line)["key"] for line in out.read_text().splitlines()] == [0]
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_raw_invalid_bytes_name_file_and_line(tmp_path, capsys):
    src = _lines(tmp_path / "responses.jsonl", [json.dumps({"key": 0, "response": "ok", **LOWER}),
                                               json.dumps({"key": 1, "response": "ok", **LOWER}),
                                               b'{"key": 2, "response": "\xff\xfe"}\n'])
    assert main(["ifeval", "score", "--responses", str(src)]) == 2
    _one_error(capsys, f"{src}:3", "not valid UTF-8", "0xff")


def test_unknown_instruction_id_in_responses(tmp_path, capsys):
    src = _lines(tmp_path / "responses.jsonl", [json.dumps({"key": 0, "response": "ok", "instruction_id_list": ["x:y"]})])
    assert main(["ifeval", "score", "--responses", str(src)]) == 2
    _one_error(capsys, f"{src}:1", "unknown instruction id 'x:y'")


@register_checker("test:always_times_out", replace=True)
def _times_out(response: str) -> bool:
    raise TimeoutError("simulated time limit")


def test_timed_out_verdicts_are_reported_not_hidden(tmp_path, capsys):
    rows = [{"key": 0, "response": "fine", "instruction_id_list": ["test:always_times_out", "punctuation:no_comma"]},
            {"key": 1, "response": "fine", **LOWER}]
    src = _lines(tmp_path / "responses.jsonl", [json.dumps(r) for r in rows])
    out, metrics = tmp_path / "verdicts.jsonl", tmp_path / "metrics.json"
    assert main(["ifeval", "score", "--responses", str(src), "--output", str(out), "--metrics", str(metrics)]) == 0
    text = capsys.readouterr().out
    assert "WARNING: 1 instruction verdicts have no answer from their checker (1 timed out)" in text
    back = [json.loads(line) for line in out.read_text().splitlines()]
    assert back[0]["strict"] == [False, True]
    assert back[0]["checker_errors"] == {"test:always_times_out": "timed out: simulated time limit"}
    assert "checker_errors" not in back[1]
    m = json.loads(metrics.read_text())
    assert m["num_timed_out"] == 1 and m["checker_errors"][0]["where"] == f"{src}:1"


def test_sentence_checkers_do_not_depend_on_nltks_regex_time_limit(monkeypatch):
    """NLTK >= 3.10 limits each regex call to 5 s; a multi-megabyte response exceeded it, so number_sentences and
    capital_word_frequency scored "not followed". With a limit of ~0 every limited pattern would time out."""
    redos = pytest.importorskip("nltk.redos")
    from uniapl.verifiers import text as T

    T.sentence_tokenizer(), T._word_tokenizer()  # built before the limit is patched, as in a real run
    T.clear_caches()
    long = "The quick brown fox jumps over the lazy dog. " * 2000
    monkeypatch.setattr(redos, "DEFAULT_TIMEOUT", 1e-9)
    try:
        redos.compile(r"(\w+\s?)+").findall(long)
        pytest.skip("this regex build does not honour tiny time limits")
    except TimeoutError:
        pass
    text = long + "I AM LOUD AND CLEAR."
    v = verify(text, ["length_constraints:number_sentences", "change_case:capital_word_frequency"],
               [{"num_sentences": 2001, "relation": "at least"}, {"capital_frequency": 5, "capital_relation": "at least"}])
    T.clear_caches()
    assert v.errors == {}
    assert v.strict == [True, True]


def test_ifeval_run_with_a_missing_model_is_one_line(tmp_path, capsys, monkeypatch):
    prompts = _lines(tmp_path / "prompts.jsonl", [json.dumps({"key": 1, "prompt": "Hi", **LOWER})])
    assert main(["ifeval", "run", str(tmp_path / "no_such_model"), "--prompts", str(prompts),
                 "--output-dir", str(tmp_path / "out")]) == 2
    _one_error(capsys, "argument MODEL", "does not exist")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["ifeval", "run", "nobody-xyz/not-a-model", "--prompts", str(prompts),
                 "--output-dir", str(tmp_path / "out")]) == 2
    _one_error(capsys, "argument MODEL", "HF_HUB_OFFLINE")
    assert not (tmp_path / "out").exists()
