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

from uniapl import distributed
from uniapl.algorithms import get_algorithm
from uniapl.atomic import atomic_write_jsonl, atomic_write_text, fsync_dir, fsync_file
from uniapl.config import Config, DataSource, dump_config, stage_configs
from uniapl.data.loaders import DataError, load_records, require, validate_specs
from uniapl.config_schema import ConfigError
from uniapl.errors import UserError
from uniapl.faults import fault_point
from uniapl.data.records import Record
from uniapl.evaluation import METRIC_KEYS, evaluate
from uniapl.models import EMBEDDED, build_embedded_model, build_embedded_tokenizer, eos_token_ids, load_model, load_tokenizer
from uniapl.training.trainer import Trainer, find_resume_checkpoint, needs_reference

log = logging.getLogger("uniapl")


def _atomic_write(path: Path, text: str) -> None:
    atomic_write_text(path, text)


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


_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow")


def _load_source(src: DataSource, key: str, synthetic_cfg) -> list[Record]:
    """Records of one data source; a missing file or an unloadable dataset is an error naming `key`."""
    path = src.path
    if not path:
        raise DataError(f"key '{key}.path' is empty")
    if not path.startswith("synthetic:"):
        p = Path(path).expanduser()
        if p.suffix in _FILE_SUFFIXES and not p.exists():
            raise DataError(f"key '{key}.path': data file not found: {path}")
        if not p.exists():
            from uniapl.hub import check_source

            check_source(path, f"{key}.path", kind="dataset")
    try:
        return load_records(src, synthetic_cfg)
    except UserError:
        raise
    except (OSError, ValueError) as e:  # datasets: not found, unreachable, unreadable
        raise DataError(f"key '{key}.path': cannot load {path!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def _records_for(cfg: Config, stage: str = "") -> tuple[list[Record], list[Record], list[Record]]:
    p = get_algorithm(cfg.algorithm)
    d = cfg.data
    cache: dict[tuple, list[Record]] = {}
    where = f" (stage {stage})" if stage else ""

    def load(src, key):
        ck = (src.path, src.split, src.name, src.limit, src.format, tuple(sorted(src.field_map.items())))
        if ck not in cache:
            cache[ck] = _load_source(src, key, d.synthetic)
        return cache[ck]

    def nonempty(recs, key, what):
        if not recs:
            src = getattr(d, key.split(".")[1]) or d.train
            raise DataError(f"key '{key}'{where}: {src.path!r} holds no records, but {what} needs at least one")
        return recs

    sft_key, pref_key = ("data.sft" if d.sft else "data.train"), ("data.pref" if d.pref else "data.train")
    sft = nonempty(load(d.sft or d.train, sft_key), sft_key, f"the SFT slice of '{cfg.algorithm}'") if p.uses_sft_slice else []
    pref = nonempty(load(d.pref or d.train, pref_key), pref_key, f"the preference slice of '{cfg.algorithm}'") if p.uses_pref_slice else []
    ev = load(d.eval, "data.eval") if (d.eval is not None and cfg.eval.enabled) else []
    from uniapl.objective import get_term

    for slice_name, recs in (("sft", sft), ("pref", pref)):  # what each term needs of its slice's records
        for term in p.term_names(slice_name):
            get_term(term)(cfg, p, slice_name).check_records(recs)
    if ev:
        require(ev, ["instruction_id_list"], "evaluation")
        validate_specs(ev)
        if cfg.eval.limit is not None:
            ev = ev[: cfg.eval.limit]
    if d.eval is not None and cfg.eval.enabled and not ev:
        raise DataError(f"key 'data.eval'{where}: no evaluation records ({d.eval.path!r} is empty"
                        f"{' or eval.limit is 0' if cfg.eval.limit == 0 else ''}); set eval.enabled=false to train "
                        f"without evaluation")
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
        atomic_write_jsonl(responses_path, rows)
    return metrics


def _read_metrics_rows(path: Path) -> list[dict]:
    """metrics.jsonl rows; a line cut short by a kill (the last one) is dropped."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _truncate_metrics(path: Path, stage: str, last_step: int) -> None:
    """Drop `stage`'s rows after `last_step` (the checkpoint a resumed stage restarts from), atomically, so
    that the steps a killed attempt logged after its last checkpoint appear once, from the resumed attempt."""
    if not path.is_file():
        return
    rows = _read_metrics_rows(path)
    keep = [r for r in rows if not (r.get("stage") == stage and int(r.get("step", 0)) > last_step)]
    if len(keep) != len(rows) or len(path.read_bytes().splitlines()) != len(rows):
        atomic_write_jsonl(path, keep)


def _write_final(stage_dir: Path, model, tok, stage: str = "") -> Path:
    """The stage's final model: written into final.tmp/, fsync'ed, then swapped in for final/ (an earlier
    final/ is moved aside first, so there is always a complete one or none, never half of one)."""
    final_dir, tmp, old = stage_dir / "final", stage_dir / "final.tmp", stage_dir / "final.old"
    for d in (tmp, old):
        if d.exists():
            shutil.rmtree(d)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    for f in tmp.iterdir():
        if f.is_file():
            fsync_file(f)
    fsync_dir(tmp)
    fault_point("final.written", stage)
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp, final_dir)
    fsync_dir(stage_dir)
    if old.exists():
        shutil.rmtree(old)
    return final_dir


def _policy_for_stage(cfg: Config, init_from: str | None, ckpt: Path | None):
    """(model, tokenizer) a stage trains: the starting weights, or the resumed checkpoint's; with model.lora,
    the starting weights + fresh adapters, or + the checkpoint's adapters."""
    if cfg.model.lora is None:
        return build_policy(cfg, str(ckpt) if ckpt else init_from)
    from uniapl.lora import apply_lora, load_adapters

    model, tok = build_policy(cfg, init_from)
    return (load_adapters(model, ckpt) if ckpt else apply_lora(model, cfg.model.lora)), tok


def _write_merged(trainer: Trainer, final_dir: Path, tok) -> None:
    """final/merged/: the adapters folded into a plain HF model (written aside, then renamed). Main process."""
    from uniapl.lora import save_merged

    tmp, dst = final_dir / "merged.tmp", final_dir / "merged"
    for d in (tmp, dst):
        if d.exists():
            shutil.rmtree(d)
    save_merged(trainer.peft, tmp, tok)
    os.replace(tmp, dst)


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
    sft, pref, ev = records if records is not None else _records_for(cfg, name)
    ckpt = find_resume_checkpoint(stage_dir) if cfg.resume else None
    if cfg.resume and acc.is_main_process:  # rows logged after the checkpoint are logged again below
        _truncate_metrics(metrics_path, name, int(ckpt.name.split("-")[1]) if ckpt else 0)
    model, tok = _policy_for_stage(cfg, init_from, ckpt)
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
            _atomic_write(state_file, json.dumps(state, indent=2))
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
            _atomic_write(state_file, json.dumps(state, indent=2))
        fault_point("train.step", name)

    steps = trainer.train(metrics_path, eval_fn=eval_fn if ev else None, stage=name, on_step=on_step)
    train_seconds = elapsed_before + time.time() - t_train
    state["train_seconds"] = train_seconds
    if acc.is_main_process:
        _atomic_write(state_file, json.dumps(state, indent=2))
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
        _write_final(stage_dir, saved, tok, name)
        if merged and trainer.peft is not None:
            _write_merged(trainer, final_dir, tok)
    acc.wait_for_everyone()
    from uniapl.lora import parameter_counts

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
        _atomic_write(stage_dir / "stage_summary.json", json.dumps(entry, indent=2))
    fault_point("stage.done", name)
    acc.wait_for_everyone()
    return entry


def _run_cached_stage(cfg: Config, name: str, acc: Accelerator, stage_dir: Path, metrics_path: Path, on_stage_end,
                      records, merge_final) -> dict[str, Any]:
    """The first stage through the stage cache (`stages[0].cache`): copied when an identical stage ran before,
    else trained and stored. A resumed stage that already has a checkpoint or a final/, an `on_stage_end`
    hook, or a distributed run bypass the cache (trained as usual, not stored)."""
    from uniapl import stage_cache
    from uniapl.config_schema import to_dict

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
    _atomic_write(stage_dir / "stage_summary.json", json.dumps(entry, indent=2))
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


# what a run writes into output_dir (and, for multi-stage configs, into each stage-* directory)
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "stage_summary.json", "stage_state.json",
             "eval_responses.jsonl", "eval_general.json", "checkpoints", "final", "final.tmp", "final.old")


def existing_results(out: Path) -> list[Path]:
    """What an earlier run left in `out`: its files and stage directories."""
    if not out.is_dir():
        return []
    found = [out / n for n in RUN_FILES if (out / n).exists()]
    return found + sorted(d for d in out.glob("stage-*") if d.is_dir())


def check_output_dir(cfg: Config) -> list[Path]:
    """Refuse (UserError naming the directory) an output_dir that is a file, cannot be written, or holds the
    results of a run while neither resume=true nor overwrite=true (the Hugging Face convention). Returns the
    earlier results that overwrite=true will delete. Writes nothing."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"key 'output_dir': {out} is a file, not a directory")
    anc = out
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigError(f"key 'output_dir': {out} cannot be created: {anc} is a file")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ConfigError(f"key 'output_dir': {out} is not writable ({anc}: permission denied)")
    found = existing_results(out)
    if found and not cfg.resume and not cfg.overwrite:
        names = ", ".join(p.name for p in found[:6]) + (", ..." if len(found) > 6 else "")
        raise ConfigError(f"key 'output_dir': {out} already holds the results of a run ({names}); pass resume=true "
                          f"to continue it, overwrite=true to replace it, or choose another output_dir")
    return found if cfg.overwrite else []


def _check_discriminator_server(cfg: Config) -> None:
    """A discriminator must be usable before any work starts: a local model's folder (`polar`, `embedding`,
    `learned` with model=hf) exists, and a served one (`polar_server`) answers."""
    d = cfg.discriminator
    if not get_algorithm(cfg.algorithm).uses_discriminator:
        return
    needs_model = d.name == "polar" or (d.name == "learned" and d.learned.model == "hf")
    if needs_model and not d.model_path:
        raise ConfigError(f"key 'discriminator.model_path': discriminator {d.name!r}"
                          f"{' with learned.model=hf' if d.name == 'learned' else ''} needs a local model folder")
    if d.model_path and (needs_model or d.name == "embedding"):
        from uniapl.hub import check_source

        check_source(d.model_path, "discriminator.model_path")
        if d.tokenizer_path:
            check_source(d.tokenizer_path, "discriminator.tokenizer_path")
    if d.name != "polar_server":
        return
    from uniapl.discriminators.polar_server import PolarHTTPClient

    PolarHTTPClient.from_config(cfg.discriminator.server).check()


def validate_run(cfg: Config) -> list[tuple[str, Config, tuple]]:
    """Everything a run needs, checked before anything is written: the output directory, each stage's data
    (files, records, instruction specs), the model and a served discriminator. [(stage name, config, records)]."""
    from uniapl.hub import check_source

    stages = stage_configs(cfg)
    check_output_dir(cfg)
    out = []
    checked: set = set()
    for i, (name, scfg) in enumerate(stages):
        if scfg.model.name_or_path != EMBEDDED and (i == 0 or scfg.model.name_or_path != stages[i - 1][1].model.name_or_path):
            check_source(scfg.model.name_or_path, "model.name_or_path", revision=scfg.model.revision)
        recs = _records_for(scfg, name if len(stages) > 1 else "")
        server = (scfg.discriminator.name, scfg.discriminator.server.url)
        if server not in checked:
            _check_discriminator_server(scfg)
            if get_algorithm(scfg.algorithm).uses_discriminator:
                checked.add(server)
        out.append((name, scfg, recs))
    return out


def _prepare_output_dir(cfg: Config, acc: Accelerator) -> None:
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
            _atomic_write(out / "config.yaml", dump_config(cfg))
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
    _check_general(stage_configs(cfg)[-1][1])
    out = Path(cfg.output_dir)
    stages = validate_run(cfg)
    acc = Accelerator(mixed_precision=cfg.train.mixed_precision, log_with=cfg.logging.report_to or None,
                      project_dir=str(out), cpu=not _has_accelerator())
    distributed.enable_cpu_fsdp(acc)
    _prepare_output_dir(cfg, acc)
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
            entry = _run_cached_stage(scfg, name, acc, stage_dir, stage_metrics, on_stage_end, recs, merge)
        else:
            entry = run_stage(scfg, name, acc, stage_dir, init_from, stage_metrics, on_stage_end, known_before=known,
                              records=recs, merge_final=merge)
        entries.append(entry)
        init_from = entry["final_checkpoint"]
    last = entries[-1]
    _general_eval(stages[-1][1], last, acc, Path(last["final_checkpoint"]).parent)
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
