"""One run of an experiment, in this process or in its own (`python -m uniapl.experiment.worker MODE RUN_DIR`).

    train     RUN_DIR  train the run described by RUN_DIR/run.yaml (resuming if it was interrupted)
    evaluate  RUN_DIR  evaluate run.yaml's starting model (no training) -> summary.json, eval_responses.jsonl
    analyze   RUN_DIR  what RUN_DIR/analysis.json asks for, each part skipped when its file exists:
                       with a teacher model, responses sampled from the run's model scored under it and under
                       the teacher -> logp_samples.jsonl (Figure 4); with teacher_logp, the held-out teacher
                       answers scored under the run's model -> teacher_logp.jsonl (Figure 4 analogue)
A run is finished when RUN_DIR/summary.json exists; its analysis when the files above do.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

SUMMARY = "summary.json"
SAMPLES = "logp_samples.jsonl"
TEACHER_LOGP = "teacher_logp.jsonl"


def _atomic_lines(path: Path, rows: list[dict]) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def train(run_dir: str | Path) -> dict:
    from uniapl.config import load_config
    from uniapl.training.run import run_training

    return run_training(load_config(Path(run_dir) / "run.yaml"))


def evaluate(run_dir: str | Path) -> dict:
    """The starting model of run.yaml (cfg.model), evaluated as a run's final evaluation is."""
    import torch

    from uniapl.config import load_config
    from uniapl.data.loaders import load_records
    from uniapl.evaluation.ifeval import evaluate as evaluate_model
    from uniapl.models.loading import eos_token_ids
    from uniapl.models.loading import build_policy

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "run.yaml")
    torch.manual_seed(cfg.seed)
    model, tok = build_policy(cfg, None)
    records = load_records(cfg.data.eval, cfg.data.synthetic)
    if cfg.eval.limit is not None:
        records = records[: cfg.eval.limit]
    metrics, rows = evaluate_model(model.eval(), tok, records, eos_ids=eos_token_ids(model, tok), pad_id=tok.pad_token_id,
                                   max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size,
                                   enable_thinking=cfg.model.enable_thinking,
                                   max_prompt_tokens=cfg.data.max_prompt_tokens, return_details=True)
    _atomic_lines(run_dir / "eval_responses.jsonl", rows)
    summary = {"algorithm": "none (starting model)", "output_dir": str(run_dir), "steps": 0,
               "eval": {"before": metrics, "after": metrics}, "stages": [],
               "final_checkpoint": cfg.model.name_or_path}
    tmp = run_dir / (SUMMARY + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, run_dir / SUMMARY)
    return summary


def _load_run_model(cfg, summary: dict):
    from uniapl.models.loading import load_model, load_tokenizer
    from uniapl.models.loading import build_policy

    ckpt = summary["final_checkpoint"]
    if ckpt == cfg.model.name_or_path:  # an `evaluate` run: the configured starting model itself
        model, tok = build_policy(cfg, None)
        return model.eval(), tok
    return load_model(cfg.model, ckpt).eval(), load_tokenizer(cfg.model, ckpt)


def analyze(run_dir: str | Path) -> list[Path]:
    import torch

    from uniapl.analysis.logp import sample_responses, teacher_answer_logprobs, text_logprobs
    from uniapl.config import ModelConfig, load_config
    from uniapl.data.loaders import load_records
    from uniapl.data.records import Record
    from uniapl.models.loading import eos_token_ids, load_model, load_tokenizer

    run_dir = Path(run_dir)
    spec = json.loads((run_dir / "analysis.json").read_text())
    cfg = load_config(run_dir / "run.yaml")
    summary = json.loads((run_dir / SUMMARY).read_text())
    common = dict(max_prompt_tokens=cfg.data.max_prompt_tokens, enable_thinking=cfg.model.enable_thinking)
    student, s_tok = _load_run_model(cfg, summary)
    written = []
    if spec.get("teacher_logp") and not (run_dir / TEACHER_LOGP).is_file():
        records = load_records(cfg.data.eval, cfg.data.synthetic)
        if cfg.eval.limit is not None:
            records = records[: cfg.eval.limit]
        rows = teacher_answer_logprobs(student, s_tok, records, **common)
        written.append(_atomic_lines(run_dir / TEACHER_LOGP, rows))
    if spec.get("teacher") and not (run_dir / SAMPLES).is_file():
        rows = [json.loads(l) for l in (run_dir / "eval_responses.jsonl").read_text().splitlines() if l.strip()]
        records = [Record(prompt=r["messages"], key=r["key"]) for r in rows]
        torch.manual_seed(int(spec["seed"]))
        # the teacher may be another model family: its own chat template and defaults, the student's dtype
        t_cfg = ModelConfig(name_or_path=spec["teacher"], dtype=cfg.model.dtype,
                            trust_remote_code=cfg.model.trust_remote_code)
        teacher = load_model(t_cfg).eval()
        t_tok = load_tokenizer(t_cfg)
        samples = sample_responses(student, s_tok, records, eos_ids=eos_token_ids(student, s_tok),
                                   num_samples=int(spec["num_samples"]), temperature=float(spec["temperature"]),
                                   max_new_tokens=int(spec["max_new_tokens"]), seed=int(spec["seed"]), **common)
        recs = [records[s["record"]] for s in samples]
        texts = [s["response"] for s in samples]
        fins = [s["finished"] for s in samples]
        lp_s = text_logprobs(student, s_tok, recs, texts, fins, **common)
        lp_t = text_logprobs(teacher, t_tok, recs, texts, fins, **common)
        written.append(_atomic_lines(run_dir / SAMPLES, [
            {**s, "key": records[s["record"]].key, "logp_student": a, "logp_teacher": b, "gap": a - b}
            for s, a, b in zip(samples, lp_s, lp_t)]))
    return written


def main(argv: list[str] | None = None) -> int:
    import logging

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("train", "evaluate", "analyze"):
        print("usage: python -m uniapl.experiment.worker {train|evaluate|analyze} RUN_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    {"train": train, "evaluate": evaluate, "analyze": analyze}[argv[0]](argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
