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
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from uniapl.algorithms import get_algorithm
from uniapl.config import Config, dump_config, stage_configs
from uniapl.data.loaders import DataError, load_records, require, validate_specs
from uniapl.data.records import Record
from uniapl.evaluation import METRIC_KEYS, evaluate
from uniapl.models import EMBEDDED, build_embedded_model, build_embedded_tokenizer, eos_token_ids, load_model, load_tokenizer
from uniapl.trainer import Trainer, find_resume_checkpoint

log = logging.getLogger("uniapl")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def build_policy(cfg: Config, init_from: str | None):
    """(model, tokenizer): from a checkpoint directory, the embedded default, or cfg.model.name_or_path."""
    if init_from is not None:
        return load_model(cfg.model, init_from), load_tokenizer(cfg.model, init_from)
    if cfg.model.name_or_path == EMBEDDED:
        from uniapl.data.synthetic import task_corpus

        from uniapl.data.loaders import synthetic_task

        task = synthetic_task(cfg.data.synthetic)
        tok = build_embedded_tokenizer(task_corpus(cfg.data.synthetic, task), cfg.model.embedded.vocab_size)
        return build_embedded_model(tok, cfg.model.embedded, cfg.seed), tok
    return load_model(cfg.model), load_tokenizer(cfg.model)


def _records_for(cfg: Config) -> tuple[list[Record], list[Record], list[Record]]:
    p = get_algorithm(cfg.algorithm)
    d = cfg.data
    cache: dict[tuple, list[Record]] = {}

    def load(src):
        key = (src.path, src.split, src.name, src.limit, tuple(sorted(src.field_map.items())))
        if key not in cache:
            cache[key] = load_records(src, d.synthetic)
        return cache[key]

    sft = load(d.sft or d.train) if p.uses_sft_slice else []
    pref = load(d.pref or d.train) if p.uses_pref_slice else []
    ev = load(d.eval) if (d.eval is not None and cfg.eval.enabled) else []
    if p.uses_sft_slice:
        if "sft" in p.sft_terms:
            require(sft, [cfg.loss.sft_target], f"algorithm '{cfg.algorithm}' (SFT target loss.sft_target={cfg.loss.sft_target})")
        if "adv" in p.sft_terms:
            require(sft, [cfg.discriminator.reference], f"the adversarial term (discriminator.reference={cfg.discriminator.reference})")
            if cfg.discriminator.reference == "ground_truth":
                require(sft, ["teacher"], "the adversarial term in ground_truth mode")
    if p.online:
        if cfg.reward.verifier == "ifeval":  # reward.verifier=none: only reward.functions score the rollouts
            require(pref, ["instruction_id_list"], f"algorithm '{cfg.algorithm}' (verifiable rewards)")
        validate_specs(pref)
    elif p.offline_preference:
        if cfg.data.pairs.source == "data":
            fields = ["chosen", "rejected"] if p.pref_main == "dpo" else []
            require(pref, fields, f"algorithm '{cfg.algorithm}' (data.pairs.source=data)")
        else:  # pairs are built from verifiers where the data has none (uniapl.preference)
            validate_specs(pref)
    if p.uses_pref_slice:
        if "adv" in p.pref_terms:
            require(pref, [cfg.discriminator.reference], f"the adversarial term (discriminator.reference={cfg.discriminator.reference})")
            if cfg.discriminator.reference == "ground_truth":
                require(pref, ["teacher"], "the adversarial term in ground_truth mode")
    if ev:
        require(ev, ["instruction_id_list"], "evaluation")
        validate_specs(ev)
        if cfg.eval.limit is not None:
            ev = ev[: cfg.eval.limit]
    return sft, pref, ev


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
        _atomic_write(responses_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return metrics


def run_stage(cfg: Config, name: str, acc: Accelerator, stage_dir: Path, init_from: str | None,
              metrics_path: Path, on_stage_end=None, known_before: dict | None = None) -> dict[str, Any]:
    """Train one stage; returns its summary entry. Resumes from the stage's latest checkpoint if cfg.resume."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    state_file = stage_dir / "stage_state.json"
    final_dir = stage_dir / "final"
    if cfg.resume and (stage_dir / "stage_summary.json").is_file() and final_dir.is_dir():
        return json.loads((stage_dir / "stage_summary.json").read_text())  # finished earlier
    set_seed(cfg.seed)
    sft, pref, ev = _records_for(cfg)
    ckpt = find_resume_checkpoint(stage_dir) if cfg.resume else None
    model, tok = build_policy(cfg, str(ckpt) if ckpt else init_from)
    model.to(acc.device)
    eos = eos_token_ids(model, tok)
    previous = json.loads(state_file.read_text()) if (ckpt and state_file.is_file()) else {}
    t_start = time.time()
    before = previous.get("eval_before", known_before)
    if before is None:
        before = _evaluate(cfg, acc, model, tok, ev, eos) if cfg.eval.before else {}
        if acc.is_main_process:
            _atomic_write(state_file, json.dumps({"eval_before": before}, indent=2))
    ref_model = None
    p = get_algorithm(cfg.algorithm)
    if ckpt is not None and ((p.online and cfg.loss.grpo.beta > 0) or p.offline_preference):
        ref_model, _ = build_policy(cfg, init_from)  # the reference is the stage's start, not the resumed weights
    trainer = Trainer(cfg, acc, model, tok, sft_records=sft, pref_records=pref, stage_dir=stage_dir, eos_ids=eos,
                      ref_model=ref_model)
    if ckpt is not None:
        trainer.restore(ckpt)
        log.info("resumed stage %s from %s (step %d)", name, ckpt, trainer.step_idx)
    elapsed_before = float(previous.get("train_seconds", 0.0))
    t_train = time.time()

    def eval_fn(m):
        return _evaluate(cfg, acc, m, tok, ev, eos)

    steps = trainer.train(metrics_path, eval_fn=eval_fn if ev else None, stage=name)
    train_seconds = elapsed_before + time.time() - t_train
    trainer.save(steps)
    acc.wait_for_everyone()
    model = trainer.model
    if on_stage_end is not None:
        on_stage_end(name, model, acc)
    after = _evaluate(cfg, acc, model, tok, ev, eos,
                      responses_path=stage_dir / "eval_responses.jsonl" if cfg.eval.save_responses else None)
    if acc.is_main_process:
        tmp = stage_dir / "final.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(tmp, final_dir)
    entry = {
        "name": name,
        "algorithm": cfg.algorithm,
        "steps": steps,
        "train_seconds": round(train_seconds, 2),
        "wall_seconds": round(time.time() - t_start, 2),
        "eval": {"before": before, "after": after},
        "final_checkpoint": str(final_dir),
    }
    if acc.is_main_process:
        _atomic_write(stage_dir / "stage_summary.json", json.dumps(entry, indent=2))
    acc.wait_for_everyone()
    return entry


def _same_eval(a: Config, b: Config) -> bool:
    from uniapl.config_schema import to_dict

    def scored(c: Config) -> dict:  # what decides the evaluation's result (not when it runs)
        return {k: v for k, v in to_dict(c.eval).items() if k in ("enabled", "max_new_tokens", "limit")}

    keys = lambda c: (scored(c), to_dict(c.data.eval), to_dict(c.data.synthetic), c.data.max_prompt_tokens,
                      c.model.enable_thinking, c.model.chat_template)
    return keys(a) == keys(b)


def _has_accelerator() -> bool:
    """Without a GPU, Accelerator(cpu=True) is what makes `accelerate launch --multi_gpu` processes use gloo."""
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def run_training(cfg: Config, on_stage_end=None) -> dict[str, Any]:
    """Run every stage of `cfg`; writes config.yaml, metrics.jsonl and summary.json in cfg.output_dir.

    on_stage_end(stage_name, model, accelerator), if given, is called on every process with the trained
    model of each stage before its final evaluation.
    """
    t0 = time.time()
    _check_general(stage_configs(cfg)[-1][1])
    out = Path(cfg.output_dir)
    acc = Accelerator(mixed_precision=cfg.train.mixed_precision, log_with=cfg.logging.report_to or None,
                      project_dir=str(out), cpu=not _has_accelerator())
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.resume and (out / "summary.json").exists():
            (out / "summary.json").unlink()
        if not cfg.resume and (out / "metrics.jsonl").exists():
            (out / "metrics.jsonl").unlink()
        _atomic_write(out / "config.yaml", dump_config(cfg))
    acc.wait_for_everyone()
    if cfg.logging.report_to:
        acc.init_trackers(cfg.logging.project, config=json.loads(json.dumps(_flat(cfg), default=str)))
    stages = stage_configs(cfg)
    entries = []
    init_from: str | None = None
    for i, (name, scfg) in enumerate(stages):
        stage_dir = out if len(stages) == 1 else out / f"stage-{i}-{name}"
        if not cfg.resume and stage_dir != out and stage_dir.exists() and acc.is_main_process:
            shutil.rmtree(stage_dir)
        acc.wait_for_everyone()
        if not cfg.resume and len(stages) == 1 and acc.is_main_process:
            for p in (out / "checkpoints", out / "final", out / "stage_summary.json", out / "stage_state.json",
                      out / "eval_responses.jsonl"):
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        acc.wait_for_everyone()
        stage_metrics = out / "metrics.jsonl"
        # the previous stage's final evaluation IS this stage's starting evaluation when both evaluate alike
        known = entries[-1]["eval"]["after"] if entries and _same_eval(stages[i - 1][1], scfg) else None
        entry = run_stage(scfg, name, acc, stage_dir, init_from, stage_metrics, on_stage_end, known_before=known)
        entries.append(entry)
        init_from = entry["final_checkpoint"]
    last = entries[-1]
    _general_eval(stages[-1][1], last, acc, Path(last["final_checkpoint"]).parent)
    last_responses = Path(last["final_checkpoint"]).parent / "eval_responses.jsonl"
    if acc.is_main_process and len(stages) > 1 and last_responses.is_file():
        shutil.copyfile(last_responses, out / "eval_responses.jsonl")
    summary = {
        "algorithm": cfg.algorithm if not cfg.stages else "->".join(e["algorithm"] for e in entries),
        "output_dir": str(out),
        "wall_seconds": round(time.time() - t0, 2),
        "steps": sum(e["steps"] for e in entries),
        "eval": {"before": entries[-1]["eval"]["before"], "after": last["eval"]["after"]},
        "stages": entries,
        "final_checkpoint": last["final_checkpoint"],
        "world_size": acc.num_processes,
    }
    if acc.is_main_process:
        _atomic_write(out / "summary.json", json.dumps(summary, indent=2))
    if cfg.logging.report_to:
        acc.end_training()
    return summary


def _check_general(cfg: Config) -> None:
    """eval.general mistakes that need no model: found before training, not after it."""
    g = cfg.eval.general
    if not g.tasks:
        return
    from uniapl.config_schema import ConfigError

    if g.include_path is not None and not Path(g.include_path).is_dir():
        raise ConfigError(f"key 'eval.general.include_path': folder not found: {g.include_path}")
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError("key 'eval.general.tasks': lm-eval is not installed (pip install 'uniapl[eval]')") from None


def _general_eval(cfg: Config, entry: dict[str, Any], acc: Accelerator, stage_dir: Path) -> None:
    """eval.general: lm-eval tasks on the stage's final model, merged into entry["eval"]["after"] (main process).

    Results also go to <stage>/eval_general.json; a resumed run that has them does not evaluate again.
    """
    g = cfg.eval.general
    if not g.tasks or any(k.startswith("general/") for k in entry["eval"]["after"]):
        return
    if acc.is_main_process:
        from uniapl.eval_general import GeneralEvalError, evaluate_general

        try:
            result = evaluate_general(entry["final_checkpoint"], g.tasks, include_path=g.include_path, limit=g.limit,
                                      batch_size=g.batch_size, device=str(acc.device), num_fewshot=g.num_fewshot,
                                      apply_chat_template=g.apply_chat_template, seed=cfg.seed,
                                      builtin_tasks=g.builtin_tasks, confirm_run_unsafe_code=g.confirm_run_unsafe_code)
        except GeneralEvalError as e:
            from uniapl.config_schema import ConfigError

            raise ConfigError(f"key 'eval.general': {e}") from None
        _atomic_write(stage_dir / "eval_general.json", json.dumps(result, indent=2))
        entry["eval"]["after"] = {**entry["eval"]["after"], **result["metrics"]}
        _atomic_write(stage_dir / "stage_summary.json", json.dumps(entry, indent=2))
    acc.wait_for_everyone()
    if acc.num_processes > 1:  # every process returns the same summary
        from accelerate.utils import broadcast_object_list

        box = [entry["eval"]["after"]]
        broadcast_object_list(box, from_process=0)
        entry["eval"]["after"] = box[0]


def _flat(cfg: Config) -> dict[str, Any]:
    from uniapl.config_schema import to_dict

    out: dict[str, Any] = {}

    def walk(d: Any, prefix: str) -> None:
        if isinstance(d, dict):
            for k, v in d.items():
                walk(v, f"{prefix}.{k}" if prefix else k)
        else:
            out[prefix] = d if isinstance(d, (int, float, str, bool)) or d is None else str(d)

    walk(to_dict(cfg), "")
    return out


__all__ = ["run_training", "run_stage", "build_policy", "DataError", "METRIC_KEYS", "torch"]
