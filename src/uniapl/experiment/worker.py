"""One run of an experiment, in this process or in its own (`python -m uniapl.experiment.worker MODE RUN_DIR`).

    train    RUN_DIR   train the run described by RUN_DIR/run.yaml (resuming if it was interrupted)
    analyze  RUN_DIR   sample responses of the trained run and score them under it and under the teacher
                       (RUN_DIR/analysis.json names the teacher and the sampling settings) -> logp_samples.jsonl
A run is finished when RUN_DIR/summary.json exists; its analysis when RUN_DIR/logp_samples.jsonl does.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

SUMMARY = "summary.json"
SAMPLES = "logp_samples.jsonl"


def train(run_dir: str | Path) -> dict:
    from uniapl.config import load_config
    from uniapl.pipeline import run_training

    return run_training(load_config(Path(run_dir) / "run.yaml"))


def analyze(run_dir: str | Path) -> Path:
    import torch

    from uniapl.config import ModelConfig, load_config
    from uniapl.data.records import Record
    from uniapl.analysis.logp import sample_responses, text_logprobs
    from uniapl.models import eos_token_ids, load_model, load_tokenizer

    run_dir = Path(run_dir)
    spec = json.loads((run_dir / "analysis.json").read_text())
    cfg = load_config(run_dir / "run.yaml")
    summary = json.loads((run_dir / SUMMARY).read_text())
    rows = [json.loads(l) for l in (run_dir / "eval_responses.jsonl").read_text().splitlines() if l.strip()]
    records = [Record(prompt=r["messages"], key=r["key"]) for r in rows]
    torch.manual_seed(int(spec["seed"]))
    student = load_model(cfg.model, summary["final_checkpoint"]).eval()
    s_tok = load_tokenizer(cfg.model, summary["final_checkpoint"])
    # the teacher may be another model family: its own chat template and defaults, the student's dtype
    t_cfg = ModelConfig(name_or_path=spec["teacher"], dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code)
    teacher = load_model(t_cfg).eval()
    t_tok = load_tokenizer(t_cfg)
    common = dict(max_prompt_tokens=cfg.data.max_prompt_tokens, enable_thinking=cfg.model.enable_thinking)
    samples = sample_responses(student, s_tok, records, eos_ids=eos_token_ids(student, s_tok),
                               num_samples=int(spec["num_samples"]), temperature=float(spec["temperature"]),
                               max_new_tokens=int(spec["max_new_tokens"]), seed=int(spec["seed"]), **common)
    recs = [records[s["record"]] for s in samples]
    texts = [s["response"] for s in samples]
    fins = [s["finished"] for s in samples]
    lp_s = text_logprobs(student, s_tok, recs, texts, fins, **common)
    lp_t = text_logprobs(teacher, t_tok, recs, texts, fins, **common)
    out = run_dir / SAMPLES
    tmp = out.with_suffix(".tmp")
    with tmp.open("w") as f:
        for s, a, b in zip(samples, lp_s, lp_t):
            f.write(json.dumps({**s, "key": records[s["record"]].key, "logp_student": a, "logp_teacher": b,
                                "gap": a - b}) + "\n")
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    import logging

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("train", "analyze"):
        print("usage: python -m uniapl.experiment.worker {train|analyze} RUN_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    (train if argv[0] == "train" else analyze)(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
