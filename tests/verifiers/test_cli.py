"""`uniapl ifeval score` and `uniapl ifeval run` (the latter with a tiny model built from config)."""

import json

import pytest

from uniapl.verifiers.cli import main as ifeval_main


def _cli(argv):
    try:
        from uniapl.cli import main  # the project's command, when it wires `ifeval`
    except ImportError:  # pragma: no cover
        main = ifeval_main
    return main(argv)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_score_gpt4_responses_joined_by_key(data_dir, tmp_path, capsys):
    out = tmp_path / "verdicts.jsonl"
    rc = _cli(["ifeval", "score", "--responses", str(data_dir / "gpt4_responses.jsonl"),
               "--prompts", str(data_dir / "input_data.jsonl"), "--output", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    for k in ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc"):
        assert k in text
    assert "detectable_format" in text and "punctuation:no_comma" in text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 540
    ref = {json.loads(line)["key"]: json.loads(line) for line in (data_dir / "reference_verdicts.jsonl").read_text().splitlines()}
    for r in rows:
        assert set(r) >= {"key", "instruction_id_list", "strict", "loose", "response", "prompt"}
        if ref[r["key"]]["deterministic"]:
            assert (r["strict"], r["loose"]) == (ref[r["key"]]["strict"], ref[r["key"]]["loose"])


def test_score_own_specs_join_by_prompt_and_any_key(tmp_path, capsys):
    prompts = _write(tmp_path / "prompts.jsonl", [
        {"key": "p1", "prompt": "Say hi without commas.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
    ])
    responses = _write(tmp_path / "responses.jsonl", [
        {"key": ["run", 1], "response": "hi, there", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}], "extra": 7},
        {"prompt": "Say hi without commas.", "response": "hi there"},
        {"key": "p1", "response": "hi, again"},
    ])
    out = tmp_path / "v.jsonl"
    assert _cli(["ifeval", "score", "--responses", str(responses), "--prompts", str(prompts), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["strict"] for r in rows] == [[False], [True], [False]]
    assert rows[0]["key"] == ["run", 1] and rows[0]["extra"] == 7
    assert rows[1]["key"] == "p1"
    assert "prompt_level_strict_acc  0.3333" in capsys.readouterr().out


def test_score_errors_name_the_record(tmp_path, capsys):
    responses = _write(tmp_path / "r.jsonl", [
        {"response": "x", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
        {"response": "x", "instruction_id_list": ["no:such_id"], "kwargs": [{}]},
    ])
    assert _cli(["ifeval", "score", "--responses", str(responses)]) == 2
    assert "r.jsonl:2" in capsys.readouterr().err
    responses = _write(tmp_path / "r2.jsonl", [{"key": 99, "response": "x"}])
    prompts = _write(tmp_path / "p.jsonl", [{"key": 1, "prompt": "a", "instruction_id_list": [], "kwargs": []}])
    assert _cli(["ifeval", "score", "--responses", str(responses), "--prompts", str(prompts)]) == 2
    assert "r2.jsonl:1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_model_dir(data_dir, tmp_path_factory):
    """A tiny Qwen3 with a BPE tokenizer and a ChatML template, built from config (no download)."""
    from uniapl.config import EmbeddedModelConfig
    from uniapl.models.loading import build_embedded_model, build_embedded_tokenizer

    texts = [json.loads(line)["prompt"] for line in (data_dir / "input_data.jsonl").read_text().splitlines()[:50]]
    tok = build_embedded_tokenizer(texts, 300)
    cfg = EmbeddedModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=1, head_dim=16, max_position_embeddings=1024)
    model = build_embedded_model(tok, cfg, seed=0)
    model_dir = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir


@pytest.mark.slow
def test_run_generates_and_scores_with_a_tiny_model(data_dir, tiny_model_dir, tmp_path, capsys):
    model_dir = tiny_model_dir
    out = tmp_path / "out"
    argv = ["ifeval", "run", str(model_dir), "--prompts", str(data_dir / "input_data.jsonl"), "--output-dir", str(out),
            "--limit", "5", "--max-new-tokens", "6", "--batch-size", "2", "--no-progress"]
    assert _cli(argv) == 0
    responses = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    verdicts = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(responses) == len(verdicts) == 5
    assert [r["key"] for r in responses] == [1000, 1001, 1005, 1012, 1019]
    assert all(isinstance(r["response"], str) for r in responses)
    assert all(len(v["strict"]) == len(v["instruction_id_list"]) for v in verdicts)
    assert set(metrics) >= {"prompt_level_strict_acc", "inst_level_loose_acc", "categories", "settings"}
    # greedy and resumable: a second run reuses the responses and gives the same verdicts
    assert _cli(argv) == 0
    assert [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()] == verdicts
    assert "prompt_level_strict_acc" in capsys.readouterr().out


def test_score_without_prompts_offline_says_what_to_do(tmp_path, capsys, monkeypatch):
    import uniapl.verifiers.scoring as scoring

    def offline(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr("datasets.load_dataset", offline)
    responses = _write(tmp_path / "r.jsonl", [{"key": 1000, "response": "x"}])
    assert _cli(["ifeval", "score", "--responses", str(responses)]) == 2
    err = capsys.readouterr().err
    assert scoring.IFEVAL_HUB_ID in err and "--prompts" in err


@pytest.mark.slow
def test_run_falls_back_to_hf_generate(data_dir, tiny_model_dir, tmp_path, monkeypatch):
    import uniapl.rollout
    from uniapl.verifiers import generate

    def broken(*a, **k):
        raise RuntimeError("engine API changed")

    monkeypatch.setattr(uniapl.rollout, "build_engine", broken)
    monkeypatch.setattr(generate, "_ENGINE_FAILED", [])
    out = tmp_path / "out"
    argv = ["ifeval", "run", str(tiny_model_dir), "--prompts", str(data_dir / "input_data.jsonl"), "--output-dir",
            str(out), "--limit", "2", "--max-new-tokens", "4", "--no-progress"]
    assert _cli(argv) == 0
    assert len((out / "verdicts.jsonl").read_text().splitlines()) == 2
    assert generate._ENGINE_FAILED == [True]
