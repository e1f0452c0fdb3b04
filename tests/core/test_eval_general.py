"""`uniapl eval general`: lm-eval on a tiny local model and local tasks, checked against transformers directly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from uniapl.cli import main  # noqa: E402
from uniapl.config import EmbeddedModelConfig  # noqa: E402
from uniapl.evaluation.general import GeneralEvalError, flatten_results, resolve_model  # noqa: E402
from uniapl.models.loading import build_embedded_model, build_embedded_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MC = [("The capital of France is", ["Paris", "Rome", "blue"]), ("Two plus two is", ["four", "wet"]),
      ("The sky is", ["wet", "blue", "Paris"]), ("Water is", ["four", "wet", "Rome"])]
GEN = ["The sky is", "Water is"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny") / "model"
    texts = ["The capital of France is Paris.", "Two plus two is four.", "The sky is blue.", "Water is wet."] * 20
    tok = build_embedded_tokenizer(texts, 300)
    cfg = EmbeddedModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=1, head_dim=16)
    build_embedded_model(tok, cfg, seed=0).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _loglik(model, tok, context: str, continuation: str) -> float:
    """log p(continuation | context), tokenized as lm-eval does (whole string, context tokens split off)."""
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx):]
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits.float(), -1)[0]
    return float(sum(logp[len(ctx) - 1 + j, t] for j, t in enumerate(cont)))


def _greedy(model, tok, prompt: str, n: int) -> str:
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).split("\n")[0]


@pytest.fixture(scope="module")
def tasks_and_expected(tiny_model, tmp_path_factory):
    """A multiple-choice and a generate_until task whose expected scores we compute independently."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    d = tmp_path_factory.mktemp("tasks")
    mc_rows, logliks = [], []
    for i, (q, choices) in enumerate(MC):
        ll = [_loglik(model, tok, q, " " + c) for c in choices]
        best = max(range(len(ll)), key=ll.__getitem__)
        gold = best if i < 3 else (best + 1) % len(choices)  # the model is right on 3 of 4 by construction
        mc_rows.append({"question": q, "choices": choices, "answer": gold})
        logliks.append(ll)
    gens = [_greedy(model, tok, q, 6) for q in GEN]
    gen_rows = [{"question": GEN[0], "answer": gens[0]}, {"question": GEN[1], "answer": gens[1] + " not this"}]
    (d / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc_rows))
    (d / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen_rows))
    (d / "mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {d / 'mc.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    (d / "gen.yaml").write_text(
        "task: tiny_gen\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {d / 'gen.jsonl'}\n"
        "test_split: test\noutput_type: generate_until\n"
        'doc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 6\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    return d, logliks


def test_metrics_match_an_independent_computation(tiny_model, tasks_and_expected, tmp_path):
    tasks, logliks = tasks_and_expected
    out = tmp_path / "general.json"
    assert main(["eval", "general", str(tiny_model), "--tasks", "tiny_mc,tiny_gen", "--include-path", str(tasks),
                 "--device", "cpu", "--batch-size", "2", "--dtype", "float32", "--log-samples",
                 "--output", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["metrics"]["general/tiny_mc/acc"] == pytest.approx(0.75)
    assert r["metrics"]["general/tiny_gen/exact_match"] == pytest.approx(0.5)
    assert not any("stderr" in k for k in r["metrics"])
    # per choice, the harness's log-likelihoods are ours
    for s in r["samples"]["tiny_mc"]:
        got = [resp[0][0] for resp in s["resps"]]
        assert got == pytest.approx(logliks[s["doc_id"]], abs=1e-3)
    assert main(["eval", "general", str(tiny_model), "--tasks", "tiny_mc", "--include-path", str(tasks),
                 "--output", str(out)]) == 2  # exists: not overwritten without --overwrite


def test_run_dir_checkpoint_and_adapter_resolution(tiny_model, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"final_checkpoint": str(tiny_model)}))
    assert resolve_model(str(run)) == {"pretrained": str(tiny_model)}
    assert resolve_model(str(tiny_model)) == {"pretrained": str(tiny_model)}
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model), "peft_type": "LORA"}))
    assert resolve_model(str(lora)) == {"pretrained": str(tiny_model), "peft": str(lora)}
    (lora / "tokenizer.json").write_text("{}")
    assert resolve_model(str(lora))["tokenizer"] == str(lora)
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == {"pretrained": "Qwen/Qwen2.5-0.5B-Instruct"}
    assert resolve_model("gpt2") == {"pretrained": "gpt2"}
    for bad in (str(tmp_path / "missing"), str(tmp_path), "runs/x/final"):
        with pytest.raises(GeneralEvalError):
            resolve_model(bad)


def test_flatten_results_names():
    res = {"gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.1,
                     "exact_match,flexible-extract": 0.5},
           "mmlu": {"acc,none": 0.4, "acc_stderr,none": 0.01, "sample_len": 10}}
    assert flatten_results(res) == {"general/gsm8k/exact_match/strict-match": 0.25,
                                    "general/gsm8k/exact_match/flexible-extract": 0.5, "general/mmlu/acc": 0.4}


def test_user_errors_exit_2_with_one_message(tiny_model, tasks_and_expected, tmp_path, capsys):
    tasks, _ = tasks_and_expected
    out = str(tmp_path / "o.json")
    assert main(["eval", "general", str(tiny_model), "--tasks", "no_such_task", "--include-path", str(tasks),
                 "--no-builtin-tasks", "--output", out]) == 2
    err = capsys.readouterr().err
    assert "unknown lm-eval task(s): no_such_task" in err and "Traceback" not in err
    assert main(["eval", "general", str(tmp_path / "nope"), "--tasks", "tiny_mc", "--include-path", str(tasks),
                 "--output", out]) == 2
    assert "model not found" in capsys.readouterr().err
    assert main(["eval", "general", "no-such-org/no-such-model", "--tasks", "tiny_mc", "--include-path", str(tasks),
                 "--output", out]) == 2  # a hub id that is not there (offline): one message
    err = capsys.readouterr().err
    assert "uniapl eval general: error: OSError" in err and "Traceback" not in err
    assert main(["eval", "general", str(tiny_model), "--tasks", "tiny_mc", "--include-path", str(tmp_path / "x"),
                 "--output", out]) == 2
    assert "include path not found" in capsys.readouterr().err
    assert not Path(out).exists()


def test_shipped_example_tasks_run_from_the_repo_root(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "ex.json"
    assert main(["eval", "general", str(tiny_model), "--tasks", "uniapl_example_mc,uniapl_example_gen",
                 "--include-path", "configs/lm_eval_tasks", "--device", "cpu", "--batch-size", "4",
                 "--limit", "2", "--output", str(out)]) == 0
    m = json.loads(out.read_text())["metrics"]
    assert {"general/uniapl_example_mc/acc", "general/uniapl_example_mc/acc_norm",
            "general/uniapl_example_gen/exact_match/strip"} <= set(m)
    assert all(0.0 <= v <= 1.0 for v in m.values())


def test_eval_general_config_block_lands_in_summary(tiny_overrides, tasks_and_expected, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from uniapl.config import load_config
    from uniapl.training.run import run_training

    tasks, _ = tasks_and_expected
    cfg = load_config(None, tiny_overrides + ["algorithm=sft", "train.steps=1", "eval.general.tasks=[tiny_mc]",
                                              f"eval.general.include_path={tasks}", "eval.general.builtin_tasks=false",
                                              "eval.general.batch_size=2"])
    summary = run_training(cfg)
    after = summary["eval"]["after"]
    assert "prompt_level_strict_acc" in after  # the IFEval metrics stay
    final = Path(summary["final_checkpoint"])
    model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(final)
    rows = [json.loads(l) for l in (tasks / "mc.jsonl").read_text().splitlines()]
    hits = []
    for r in rows:
        ll = [_loglik(model, tok, r["question"], " " + c) for c in r["choices"]]
        hits.append(float(max(range(len(ll)), key=ll.__getitem__) == r["answer"]))
    assert after["general/tiny_mc/acc"] == pytest.approx(sum(hits) / len(hits))
    saved = json.loads((Path(cfg.output_dir) / "summary.json").read_text())
    assert saved["eval"]["after"]["general/tiny_mc/acc"] == after["general/tiny_mc/acc"]
    assert (Path(cfg.output_dir) / "eval_general.json").is_file()


def test_report_carries_general_columns(tmp_path):
    from uniapl.analysis.report import Group, RunData, general_columns, write_runs_csv, write_tables

    def run(seed, acc):
        ev = {"prompt_level_strict_acc": 0.5, "general/mmlu/acc": acc}
        return RunData(seed=seed, eval=ev, lengths=[3], gaps=[], metrics=[], stages=[], sampled_tokens=0.0,
                       train_seconds=60.0, final_checkpoint="x")

    from uniapl.analysis.report import _row_values

    g = Group("a", "sft", "SFT", {}, runs=[run(0, 0.25), run(1, 0.75)], expected_seeds=2)
    extra = tuple(general_columns([g]))
    assert extra == ("general/mmlu/acc",)
    _row_values(g, None, extra)
    write_tables(tmp_path, [g], [], sweep_keys=[], caption="c", extra=extra)
    write_runs_csv(tmp_path, [g], None, [], extra)
    assert "mmlu/acc" in (tmp_path / "table.md").read_text().splitlines()[2]
    assert "0.500 ±" in (tmp_path / "table.md").read_text()
    import csv

    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert float(rows[0]["general/mmlu/acc_mean"]) == pytest.approx(0.5)
    runs = list(csv.DictReader((tmp_path / "runs.csv").open()))
    assert [float(r["general/mmlu/acc"]) for r in runs] == [0.25, 0.75]


def test_eval_general_include_path_checked_before_training(tiny_overrides, tmp_path, capsys):
    assert main(["train", str(REPO / "configs/quickstart.yaml"), *tiny_overrides, "stages=[]",
                 "eval.general.tasks=[x]", f"eval.general.include_path={tmp_path / 'nope'}"]) == 2
    err = capsys.readouterr().err
    assert "eval.general.include_path" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "summary.json").exists()
