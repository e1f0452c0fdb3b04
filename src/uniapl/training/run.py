"""`uniapl train`: one or more stages, each starting from the previous stage's final weights.

Output directory layout:
    config.yaml            the resolved config
    metrics.jsonl          one JSON line per logged step (all stages; each line carries its stage name)
    summary.json           algorithm, wall_seconds, steps, eval.before / eval.after, and per-stage entries
    eval_responses.jsonl   the final evaluation's responses (key, response, length_tokens, strict, loose, ...)
    <stage>/checkpoints/step-NNNNNN/   HF-format model + tokenizer + trainer_state.pt (atomic)
    <stage>/final/                     the stage's final model (HF format)
For a single-stage config the stage directory is the output directory itself.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import set_seed

from uniapl.algorithms import get_algorithm
from uniapl.config import Config, dump_config, stage_configs
from uniapl.data.records import Record
from uniapl.evaluation.general import check_general_config, evaluate_general_after_training
from uniapl.evaluation.ifeval import evaluate
from uniapl.infra.atomic import atomic_write_jsonl, atomic_write_text
from uniapl.infra.faults import fault_point
from uniapl.infra.schema import ConfigError, to_dict
from uniapl.models.loading import build_policy, eos_token_ids
from uniapl.training import distributed, stage_cache
from uniapl.training.checkpoint import write_final, write_merged
from uniapl.training.metrics import truncate_metrics
from uniapl.training.trainer import Trainer, find_resume_checkpoint, needs_reference
from uniapl.training.validation import check_output_dir, stage_records, validate_run

log = logging.getLogger("uniapl")


def _evaluate(cfg: Config, acc: Accelerator, model, tok, records: list[Record], eos: list[int],
              responses_path: Path | None = None) -> dict[str, Any]:
    """IFEval metrics on the held-out records; with `responses_path`, also one JSON line per response there."""
    if not records:
        return {}
    out = evaluate(model, tok, records, eos_ids=eos, pad_id=tok.pad_token_id, max_new_tokens=cfg.eval.max_new_tokens,
                   batch_size=cfg.eval.batch_size, enable_thinking=cfg.model.enable_thinking,
                   max_prompt_tokens=cfg.data.max_prompt_tokens, accelerator=acc, return_details=responses_path is not None)
    if responses_path is None:
        return out
    metrics, rows = out
    if acc.is_main_process:
        atomic_write_jsonl(responses_path, rows)
    return metrics


def policy_for_stage(cfg: Config, init_from: str | None, ckpt: Path | None):
    """(model, tokenizer) a stage trains: the starting weights, or the resumed checkpoint's; with model.lora,
    the starting weights + fresh adapters, or + the checkpoint's adapters."""
    if cfg.model.lora is None:
        return build_policy(cfg, str(ckpt) if ckpt else init_from)
    from uniapl.models.lora import apply_lora, load_adapters

    model, tok = build_policy(cfg, init_from)
    return (load_adapters(model, ckpt) if ckpt else apply_lora(model, cfg.model.lora)), tok


def run_stage(cfg: Config, name: str, acc: Accelerator, stage_dir: Path, init_from: str | None,
              metrics_path: Path, on_stage_end=None, known_before: dict | None = None,
              records: tuple[list[Record], list[Record], list[Record]] | None = None,
              merge_final: bool | None = None) -> dict[str, Any]:
    """Train one stage; returns its summary entry. Resumes from the stage's latest checkpoint if cfg.resume.

    `records`: the stage's (sft, pref, eval) records when already loaded and validated (`validate_run`).
    `merge_final`: with LoRA, also write final/merged/ (default: model.lora.merge_final); a stage that another
    follows always does, and its final_checkpoint is then final/merged (the next stage's start).
    """
    stage_dir.mkdir(parents=True, exist_ok=True)
    state_file = stage_dir / "stage_state.json"
    final_dir = stage_dir / "final"
    if cfg.resume and (stage_dir / "stage_summary.json").is_file() and final_dir.is_dir():
        return json.loads((stage_dir / "stage_summary.json").read_text())  # finished earlier
    set_seed(cfg.seed)
    sft, pref, ev = records if records is not None else stage_records(cfg, name)
    ckpt = find_resume_checkpoint(stage_dir) if cfg.resume else None
    if cfg.resume and acc.is_main_process:  # rows logged after the checkpoint are logged again below
        truncate_metrics(metrics_path, name, int(ckpt.name.split("-")[1]) if ckpt else 0)
    model, tok = policy_for_stage(cfg, init_from, ckpt)
    model.to(acc.device)
    eos = eos_token_ids(model, tok)
    previous = json.loads(state_file.read_text()) if (cfg.resume and state_file.is_file()) else {}
    t_start = time.time()
    before = previous.get("eval_before", known_before)
    state = {"eval_before": before, "train_seconds": float(previous.get("train_seconds", 0.0))}
    if before is None:
        fault_point("eval.before", name)
        before = _evaluate(cfg, acc, model, tok, ev, eos) if cfg.eval.before else {}
        state["eval_before"] = before
        if acc.is_main_process:
            atomic_write_text(state_file, json.dumps(state, indent=2))
    ref_model = None
    if ckpt is not None and cfg.model.lora is None and needs_reference(cfg, get_algorithm(cfg.algorithm)):
        ref_model, _ = build_policy(cfg, init_from)  # the reference is the stage's start, not the resumed weights
    trainer = Trainer(cfg, acc, model, tok, sft_records=sft, pref_records=pref, stage_dir=stage_dir, eos_ids=eos,
                      ref_model=ref_model)
    if ckpt is not None:
        trainer.restore(ckpt)
        log.info("resumed stage %s from %s (step %d)", name, ckpt, trainer.step_idx)
    # train_seconds counts every attempt: the time of each step is added to stage_state.json as it ends,
    # so the work a killed attempt did after its last checkpoint (and redoes now) is counted too
    elapsed_before = state["train_seconds"]
    t_train = time.time()

    def eval_fn(m):
        return _evaluate(cfg, acc, m, tok, ev, eos)

    def on_step(step: int) -> None:
        if acc.is_main_process:
            state["train_seconds"] = elapsed_before + time.time() - t_train
            atomic_write_text(state_file, json.dumps(state, indent=2))
        fault_point("train.step", name)

    steps = trainer.train(metrics_path, eval_fn=eval_fn if ev else None, stage=name, on_step=on_step)
    train_seconds = elapsed_before + time.time() - t_train
    state["train_seconds"] = train_seconds
    if acc.is_main_process:
        atomic_write_text(state_file, json.dumps(state, indent=2))
    trainer.save(steps)
    acc.wait_for_everyone()
    model, saved = trainer.model, trainer.saved_model
    full = trainer.full_state_dict(every_process=True)
    if full is not None:  # sharded: evaluate and save an unsharded copy of the trained weights (every process)
        model, _ = build_policy(cfg, str(ckpt) if ckpt else init_from)
        model.load_state_dict(full)
        model.to(acc.device).eval()
        saved = model
    if on_stage_end is not None:
        on_stage_end(name, model, acc)
    fault_point("eval.after", name)
    after = _evaluate(cfg, acc, model, tok, ev, eos,
                      responses_path=stage_dir / "eval_responses.jsonl" if cfg.eval.save_responses else None)
    merged = cfg.model.lora is not None and (cfg.model.lora.merge_final if merge_final is None else merge_final)
    if acc.is_main_process:
        write_final(stage_dir, saved, tok, name)
        if merged and trainer.peft is not None:
            write_merged(trainer.peft, final_dir, tok)
    acc.wait_for_everyone()
    from uniapl.models.lora import parameter_counts

    trainable, total = parameter_counts(trainer.saved_model if full is None else model)
    if full is not None:
        trainable = total  # FSDP trains full weights (LoRA under sharding is not supported)
    entry = {
        "name": name,
        "algorithm": cfg.algorithm,
        "steps": steps,
        "train_seconds": round(train_seconds, 2),
        "wall_seconds": round(time.time() - t_start, 2),
        "eval": {"before": before, "after": after},
        "final_checkpoint": str(final_dir / "merged" if merged else final_dir),
        "trainable_parameters": trainable,
        "total_parameters": total,
    }
    if acc.is_main_process:
        atomic_write_text(stage_dir / "stage_summary.json", json.dumps(entry, indent=2))
    fault_point("stage.done", name)
    acc.wait_for_everyone()
    return entry


def run_cached_stage(cfg: Config, name: str, acc: Accelerator, stage_dir: Path, metrics_path: Path, on_stage_end,
                     records, merge_final) -> dict[str, Any]:
    """The first stage through the stage cache (`stages[0].cache`): copied when an identical stage ran before,
    else trained and stored. A resumed stage that already has a checkpoint or a final/, an `on_stage_end`
    hook, or a distributed run bypass the cache (trained as usual, not stored)."""
    partial = cfg.resume and (find_resume_checkpoint(stage_dir) is not None or (stage_dir / "final").is_dir())
    if acc.num_processes > 1 or partial or on_stage_end is not None:
        return run_stage(cfg, name, acc, stage_dir, None, metrics_path, on_stage_end, records=records,
                         merge_final=merge_final)
    key, material = stage_cache.stage_key(to_dict(cfg))
    hit = stage_cache.lookup(key)
    if hit is not None:
        return stage_cache.restore(hit, key, stage_dir, name, metrics_path)
    entry = run_stage(cfg, name, acc, stage_dir, None, metrics_path, None, records=records, merge_final=merge_final)
    stage_cache.store(key, material, stage_dir, name, entry, metrics_path)
    entry["cache"] = {"hit": False, "key": key}
    atomic_write_text(stage_dir / "stage_summary.json", json.dumps(entry, indent=2))
    return entry


def _same_eval(a: Config, b: Config) -> bool:
    def scored(c: Config) -> dict:  # what decides the evaluation's result (not when it runs)
        return {k: v for k, v in to_dict(c.eval).items() if k in ("enabled", "max_new_tokens", "limit")}

    keys = lambda c: (scored(c), to_dict(c.data.eval), to_dict(c.data.synthetic), c.data.max_prompt_tokens,
                      c.model.enable_thinking, c.model.chat_template)
    return keys(a) == keys(b)


def prepare_output_dir(cfg: Config, acc: Accelerator) -> None:
    out = Path(cfg.output_dir)
    if acc.is_main_process:
        for p in check_output_dir(cfg):  # overwrite=true: the earlier run's results, now that all is valid
            log.info("overwrite=true: deleting %s", p)
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
        try:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "config.yaml", dump_config(cfg))
        except OSError as e:
            raise ConfigError(f"key 'output_dir': cannot write to {out}: {e.strerror or e}") from e
    acc.wait_for_everyone()


def run_training(cfg: Config, on_stage_end=None) -> dict[str, Any]:
    """Run every stage of `cfg`; writes config.yaml, metrics.jsonl and summary.json in cfg.output_dir.

    Everything is validated first (`validate_run`); an output_dir holding an earlier run is refused unless
    resume=true (continue it) or overwrite=true (replace it, deleting its results only after validation).
    on_stage_end(stage_name, model, accelerator), if given, is called on every process with the trained
    model of each stage before its final evaluation.
    """
    t0 = time.time()
    from uniapl.verifiers.sandbox import configure as configure_sandbox

    configure_sandbox(cfg.verifiers.sandbox)  # before anything can run model-written verification code
    check_general_config(stage_configs(cfg)[-1][1])
    out = Path(cfg.output_dir)
    stages = validate_run(cfg)
    acc = Accelerator(mixed_precision=cfg.train.mixed_precision, log_with=cfg.logging.report_to or None,
                      project_dir=str(out), cpu=not distributed.has_accelerator())
    distributed.enable_cpu_fsdp(acc)
    prepare_output_dir(cfg, acc)
    if cfg.logging.report_to:
        acc.init_trackers(cfg.logging.project, config=json.loads(json.dumps(_flat(cfg), default=str)))
    entries = []
    init_from: str | None = None
    for i, (name, scfg, recs) in enumerate(stages):
        stage_dir = out if len(stages) == 1 else out / f"stage-{i}-{name}"
        stage_metrics = out / "metrics.jsonl"
        # the previous stage's final evaluation IS this stage's starting evaluation when both evaluate alike
        known = entries[-1]["eval"]["after"] if entries and _same_eval(stages[i - 1][1], scfg) else None
        merge = True if i < len(stages) - 1 else None
        if i == 0 and cfg.stages and cfg.stages[0].cache:
            entry = run_cached_stage(scfg, name, acc, stage_dir, stage_metrics, on_stage_end, recs, merge)
        else:
            entry = run_stage(scfg, name, acc, stage_dir, init_from, stage_metrics, on_stage_end, known_before=known,
                              records=recs, merge_final=merge)
        entries.append(entry)
        init_from = entry["final_checkpoint"]
    last = entries[-1]
    evaluate_general_after_training(stages[-1][1], last, acc, Path(last["final_checkpoint"]).parent)
    last_responses = Path(last["final_checkpoint"]).parent / "eval_responses.jsonl"
    if acc.is_main_process and len(stages) > 1 and last_responses.is_file():
        atomic_write_text(out / "eval_responses.jsonl", last_responses.read_text(encoding="utf-8"))
    summary = {
        "algorithm": cfg.algorithm if not cfg.stages else "->".join(e["algorithm"] for e in entries),
        "output_dir": str(out),
        "wall_seconds": round(time.time() - t0, 2),
        "steps": sum(e["steps"] for e in entries),
        "eval": {"before": entries[-1]["eval"]["before"], "after": last["eval"]["after"]},
        "stages": entries,
        "final_checkpoint": last["final_checkpoint"],
        "world_size": acc.num_processes,
        "distributed": distributed.summary(acc),
        "trainable_parameters": last.get("trainable_parameters"),
        "total_parameters": last.get("total_parameters"),
    }
    if acc.is_main_process:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    if cfg.logging.report_to:
        acc.end_training()
    return summary


def _flat(cfg: Config) -> dict[str, Any]:
    from uniapl.infra.schema import to_dict

    out: dict[str, Any] = {}

    def walk(d: Any, prefix: str) -> None:
        if isinstance(d, dict):
            for k, v in d.items():
                walk(v, f"{prefix}.{k}" if prefix else k)
        else:
            out[prefix] = d if isinstance(d, (int, float, str, bool)) or d is None else str(d)

    walk(to_dict(cfg), "")
    return out


__all__ = ["policy_for_stage", "run_stage", "run_training"]
