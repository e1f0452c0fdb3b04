"""`uniapl experiment CONFIG [key=value ...]`: the paper's comparison as one command.

Output directory:
    experiment.yaml            the resolved experiment config
    split.json, prep/data/     with `split`: the train / validation / eval keys and files
    prep/warmup/               the shared warm-up run (every run and the teacher start from its final weights)
    prep/start/                without a warm-up: the starting model's evaluation (no training)
    prep/teacher/              the teacher model, when built (Figure 4's teacher)
    tune/<method>/<point>/seed-<s>/   with `tune`: one run per grid point, evaluated on the validation split
    tuning.json                each tuned method's grid, scores and chosen values
    runs/<run>/seed-<s>/       one `uniapl train` output dir per (method, sweep point, seed): run.yaml,
                               summary.json, metrics.jsonl, eval_responses.jsonl, logp_samples.jsonl,
                               teacher_logp.jsonl
    responses/<run>/seed-<s>.jsonl   each run's final evaluation responses, re-scorable with `uniapl ifeval score`
    table.md, table.csv        one row per method (and sweep point): mean and 95% CI over seeds
    runs.csv                   one row per run: method, seed, swept/tuned keys, the four metrics, responses
    comparisons.md, comparisons.csv   paired-by-seed differences (`compare`), 95% intervals, detectable effect
    lengths.png, logp_gap.png, teacher_logp.png, curves.png
An interrupted experiment resumes: finished runs (summary.json) are skipped, an interrupted one resumes
from its last checkpoint, and a run whose config changed since it finished is an error (not silently reused).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from uniapl.experiment.config import ExperimentConfig, RunSpec, expand_runs, stage_run_config
from uniapl.experiment.worker import SAMPLES, SUMMARY, TEACHER_LOGP
from uniapl.infra.atomic import atomic_copy_tree
from uniapl.infra.schema import ConfigError, to_dict

log = logging.getLogger("uniapl.experiment")


@dataclass
class _Task:
    name: str
    mode: str  # "train" | "analyze"
    run_dir: Path


def _write_run(run_dir: Path, config: dict[str, Any]) -> bool:
    """Write run.yaml; True when the run is already finished with exactly this config."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "run.yaml"
    if path.is_file():
        old = yaml.safe_load(path.read_text())
        if old == config:
            return (run_dir / SUMMARY).is_file()
        if (run_dir / SUMMARY).is_file():
            raise ConfigError(f"{run_dir} finished with a different config than the experiment now asks for; "
                              f"delete that run directory or choose another output_dir")
        # an unfinished run of an older config: kept aside (never deleted unasked), this one starts afresh
        n = 1
        while run_dir.with_name(f"{run_dir.name}.stale-{n}").exists():
            n += 1
        stale = run_dir.with_name(f"{run_dir.name}.stale-{n}")
        os.replace(run_dir, stale)
        log.warning("%s: unfinished run of an older config moved to %s; this run starts afresh", run_dir, stale.name)
        run_dir.mkdir(parents=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return False


def _init_worker(threads: int, parent: int) -> None:
    _die_with_parent(parent)
    import torch

    torch.set_num_threads(threads)


def _die_with_parent(parent: int) -> None:
    """Linux: ask the kernel to send this worker SIGTERM when the experiment process dies, however it dies
    (SIGKILL and crashes included): a worker left behind would go on training into a run directory that the
    next `uniapl experiment` resumes. Elsewhere the runner's own teardown (`_stop_workers`) is all there is."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the experiment died before the request took effect
        os._exit(1)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _stop_workers(pool, futures) -> None:
    """Cancel what has not started and end the workers now (a run may take hours: do not wait for it); the
    next invocation resumes a stopped run from its last checkpoint, as after any interruption."""
    for f in futures:
        f.cancel()
    if hasattr(pool, "terminate_workers"):  # Python >= 3.14
        pool.terminate_workers()
        return
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()


def _run_task(mode: str, run_dir: str) -> tuple[bool, str, float]:
    """Run one task in this (worker) process, its log in RUN_DIR/<mode>.log; (ok, error, seconds)."""
    import traceback

    from uniapl.experiment import worker

    handler = logging.FileHandler(Path(run_dir) / f"{mode}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    t0 = time.time()
    try:
        getattr(worker, mode)(run_dir)
        return True, "", time.time() - t0
    except Exception as e:  # noqa: BLE001 - reported, and the other runs go on
        logging.getLogger("uniapl.experiment").error("%s %s failed:\n%s", mode, run_dir, traceback.format_exc())
        return False, f"{type(e).__name__}: {e}", time.time() - t0
    finally:
        root.removeHandler(handler)
        handler.close()


def _execute(tasks: list[_Task], jobs: int, threads: int) -> list[str]:
    """Run tasks, `jobs` at a time; returns the names of the failed ones (their logs hold the traceback).

    jobs == 1 runs them in this process; otherwise `jobs` long-lived worker processes (spawned with
    OMP_NUM_THREADS=threads) each run one task after another, so torch is imported once per worker.
    """
    failed: list[str] = []
    if not tasks:
        return failed
    done = 0
    lock = threading.Lock()

    def report(t: _Task, ok: bool, err: str, seconds: float) -> None:
        nonlocal done
        with lock:
            done += 1
            if not ok:
                failed.append(f"{t.mode} {t.name}")
            log.info("[%d/%d] %s %s: %s in %.0f s%s", done, len(tasks), t.mode, t.name, "done" if ok else "FAILED",
                     seconds, f" ({err}; see {t.run_dir / (t.mode + '.log')})" if not ok else "")

    if jobs <= 1:
        for t in tasks:
            report(t, *_run_task(t.mode, str(t.run_dir)))
        return failed
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM")}
    os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    # SIGTERM (kill, a scheduler's time limit) as Ctrl-C: both stop the workers below, then the CLI exits 130
    main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt) if main_thread else None
    pool, futures = None, {}
    try:
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(threads, os.getpid()))
        futures = {pool.submit(_run_task, t.mode, str(t.run_dir)): t for t in tasks}
        for fut in as_completed(futures):
            t = futures[fut]
            try:
                ok, err, seconds = fut.result()
            except Exception as e:  # noqa: BLE001 - a worker process died
                ok, err, seconds = False, f"worker process failed: {e}", 0.0
            report(t, ok, err, seconds)
    except BaseException:
        if pool is not None:
            _stop_workers(pool, futures)
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if main_thread:
            signal.signal(signal.SIGTERM, old_term)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return failed


def _analysis_spec(exp: ExperimentConfig, cfg: dict[str, Any], teacher: str | None, seed: int) -> dict[str, Any]:
    a = exp.analysis
    max_new = a.max_new_tokens or cfg.get("eval", {}).get("max_new_tokens", 64)
    return {"teacher": teacher, "num_samples": a.num_samples, "temperature": a.temperature, "max_new_tokens": max_new,
            "seed": 10_007 + seed, "teacher_logp": a.teacher_logp}


def _needs_analysis(d: Path, spec: dict[str, Any]) -> bool:
    if not (d / SUMMARY).is_file():
        return False
    return bool((spec["teacher"] and not (d / SAMPLES).is_file()) or (spec["teacher_logp"] and not (d / TEACHER_LOGP).is_file()))


def _prepare_split(exp: ExperimentConfig, base: dict[str, Any], out: Path) -> dict[str, Any]:
    """With `split`: write the split and point the runs' data at its files (train, eval; tune.eval at validation)."""
    from uniapl.experiment.split import write_split
    from uniapl.infra.schema import deep_merge

    if exp.split is None:
        return base
    files = write_split(exp.split, out)
    base = deep_merge(base, {"data": {"train": {"path": str(files["train"])}, "eval": {"path": str(files["eval"])}}})
    if exp.tune is not None:
        if not exp.split.validation:
            raise ConfigError("tune: the split has no validation prompts to tune on (set split.validation)")
        exp.tune.eval = {"path": str(files["validation"])}
    return base


def choose_tuned(exp: ExperimentConfig, tune_runs: list[RunSpec]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """({method: chosen values}, the tuning record): per method the grid point of highest mean metric over
    the tuning seeds (ties: the first in grid order). A method with an unfinished point is not chosen."""
    from uniapl.analysis.stats import mean_ci95

    metric = exp.tune.metric if exp.tune else "prompt_level_strict_acc"
    by_method: dict[str, dict[str, dict[str, Any]]] = {}
    for r in tune_runs:
        pts = by_method.setdefault(r.method, {})
        entry = pts.setdefault(r.run_id, {"values": r.sweep, "scores": {}, "missing": []})
        f = Path(r.config["output_dir"]) / SUMMARY
        if f.is_file():
            entry["scores"][str(r.seed)] = json.loads(f.read_text())["eval"]["after"].get(metric)
        else:
            entry["missing"].append(r.seed)
    chosen: dict[str, dict[str, Any]] = {}
    record: dict[str, Any] = {"metric": metric, "split": exp.tune.eval if exp.tune else None,
                              "seeds": exp.tune.seeds if exp.tune else [], "methods": {}}
    for name, pts in by_method.items():
        rows = []
        for run_id, e in pts.items():
            mean, ci = mean_ci95([v for v in e["scores"].values() if v is not None])
            rows.append({"point": run_id.split("/", 1)[1], "values": e["values"], "scores": e["scores"],
                         "mean": None if math.isnan(mean) else mean, "ci95": None if math.isnan(ci) else ci,
                         "missing_seeds": e["missing"]})
        complete = all(not r["missing_seeds"] for r in rows)
        best = None
        if complete:
            for r in rows:
                if r["mean"] is not None and (best is None or r["mean"] > best["mean"]):
                    best = r
        record["methods"][name] = {"grid": rows, "chosen": best["values"] if best else None,
                                   "chosen_mean": best["mean"] if best else None}
        if best is not None:
            chosen[name] = dict(best["values"])
    return chosen, record


def run_experiment(exp: ExperimentConfig, base: dict[str, Any]) -> dict[str, Any]:
    """Tune, train (or skip) every run of the matrix, analyse them, write the tables and the figures."""
    from uniapl.analysis.report import write_report
    from uniapl.experiment.config import expand_tuning_runs, tune_grid

    t0 = time.time()
    out = Path(exp.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = _prepare_split(exp, base, out)
    (out / "experiment.yaml").write_text(yaml.safe_dump(to_dict(exp), sort_keys=False, allow_unicode=True))
    failed: list[str] = []

    # 1. the shared warm-up: one run, every core; without one, the starting model's evaluation
    init_from = None
    warm_dir = None
    start_dir = None
    if exp.warmup is not None:
        warm_dir = out / "prep" / "warmup"
        cfg = stage_run_config(base, exp.warmup, output_dir=str(warm_dir), init_from=None)
        cfg = _eval_settings(cfg, before=False, every=0)
        if not _write_run(warm_dir, cfg):
            failed += _execute([_Task("warmup", "train", warm_dir)], 1, exp.threads_per_job)
            if failed:
                raise RuntimeError(f"the warm-up failed; see {warm_dir}")
        init_from = str(warm_dir / "final")
        start_dir = warm_dir
    else:
        start_dir = out / "prep" / "start"
        cfg = dict(base, output_dir=str(start_dir), resume=True, stages=[], algorithm=base.get("algorithm", "sft"))
        cfg = _eval_settings(cfg, before=False, every=0)
        if not _write_run(start_dir, cfg):
            failed += _execute([_Task("start", "evaluate", start_dir)], 1, exp.threads_per_job)

    # 2. the teacher model (if built) and the tuning runs
    tasks: list[_Task] = []
    teacher = exp.teacher.model
    teacher_dir = None
    if teacher is None and exp.teacher.build is not None:
        teacher_dir = out / "prep" / "teacher"
        cfg = stage_run_config(base, exp.teacher.build, output_dir=str(teacher_dir), init_from=init_from)
        if not _write_run(teacher_dir, _eval_settings(cfg, before=False, every=0)):
            tasks.append(_Task("teacher", "train", teacher_dir))
        teacher = str(teacher_dir / "final")
    tune_runs = expand_tuning_runs(exp, base, tune_dir=out / "tune", init_from=init_from)
    for r in tune_runs:
        r.config = _eval_settings(r.config, before=False, every=0, save=False)
        if not _write_run(Path(r.config["output_dir"]), r.config):
            tasks.append(_Task(f"tune {r.run_id} seed {r.seed}", "train", Path(r.config["output_dir"])))
    if tune_runs:
        log.info("experiment %s: %d tuning runs, %d to train", exp.name, len(tune_runs),
                 sum(t.name.startswith("tune ") for t in tasks))
    failed += _execute(tasks, exp.jobs, exp.threads_per_job)
    chosen, tuning = choose_tuned(exp, tune_runs)
    if tune_runs:
        _atomic_text(out / "tuning.json", json.dumps(tuning, indent=2, allow_nan=False) + "\n")
    for n, m in exp.methods.items():
        if m.tune_from is not None and m.tune_from in chosen:
            chosen[n] = dict(chosen[m.tune_from])
    untuned = [n for n in (exp.select or list(exp.methods))
               if (tune_grid(exp, n) or (exp.tune is not None and exp.methods[n].tune_from)) and n not in chosen]
    for n in untuned:
        failed.append(f"tune {n} (a tuning run did not finish: its main runs are left out)")

    # 3. every run of the matrix, at the tuned values
    names = [n for n in (exp.select or list(exp.methods)) if n not in untuned]
    runs = expand_runs(exp, base, runs_dir=out / "runs", init_from=init_from, tuned=chosen) if names else []
    runs = [r for r in runs if r.method in names]
    tasks = []
    for r in runs:
        r.config = _eval_settings(r.config, before=False)
        if not _write_run(Path(r.config["output_dir"]), r.config):
            tasks.append(_Task(f"{r.run_id} seed {r.seed}", "train", Path(r.config["output_dir"])))
    skipped = len(runs) - len(tasks)
    log.info("experiment %s: %d runs (%d finished earlier, skipped), %d to train", exp.name, len(runs), skipped,
             len(tasks))
    failed += _execute(tasks, exp.jobs, exp.threads_per_job)

    # 4. Figure 4's samples (each run under itself and the teacher) and the teacher answers under each model
    tasks = []
    teacher_ready = teacher is not None and (teacher_dir is None or (teacher_dir / SUMMARY).is_file())
    targets = [(f"{r.run_id} seed {r.seed}", Path(r.config["output_dir"]), r.config, r.seed) for r in runs]
    if start_dir is not None and exp.analysis.teacher_logp:
        cfg_start = yaml.safe_load((start_dir / "run.yaml").read_text())
        targets.append(("start", start_dir, cfg_start, 0))
    for name, d, cfg, seed in targets:
        spec = _analysis_spec(exp, cfg, teacher if (teacher_ready and name != "start") else None, seed)
        if _needs_analysis(d, spec):
            _atomic_text(d / "analysis.json", json.dumps(spec))
            tasks.append(_Task(name, "analyze", d))
    failed += _execute(tasks, exp.jobs, exp.threads_per_job)

    # 5. the tables and the figures, from whatever finished
    report = write_report(exp, runs, out, warmup_dir=start_dir, teacher_dir=teacher_dir, tuning=tuning)
    # wall_seconds: this invocation; wall_seconds_total: every invocation on this output_dir (a resumed or
    # report-only re-run adds its own time instead of replacing the recorded one)
    wall = round(time.time() - t0, 1)
    total = wall
    try:
        old = json.loads((out / "experiment_summary.json").read_text())
        total = round(float(old.get("wall_seconds_total", old.get("wall_seconds", 0.0))) + wall, 1)
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    report.update(wall_seconds=wall, wall_seconds_total=total, failed=failed, runs=len(runs), skipped=skipped,
                  tuning_runs=len(tune_runs))
    _atomic_text(out / "experiment_summary.json", json.dumps(report, indent=2, allow_nan=False))
    if exp.results_dir:
        report["results_dir"] = publish(out, Path(exp.results_dir), report["files"])
    return report


def publish(out: Path, dest: Path, files: list[str]) -> str:
    """Copy the report's files (tables, figures, responses/, tuning.json, split.json, experiment.yaml) to
    `dest`; a README there (written by people) is never touched."""
    dest.mkdir(parents=True, exist_ok=True)
    extra = [f for f in ("experiment.yaml", "tuning.json", "split.json", "experiment_summary.json") if (out / f).is_file()]
    for name in [*files, *extra]:
        src = out / name
        if name == "README.md" or not src.exists():
            continue
        if src.is_dir():
            atomic_copy_tree(src, dest / name)
        else:
            tmp = dest / (name + ".tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest / name)
    return str(dest)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _eval_settings(cfg: dict[str, Any], *, before: bool, every: int | None = None, save: bool = True) -> dict[str, Any]:
    """Runs save their responses; the starting model is evaluated once (the warm-up's final eval), not per run;
    the warm-up, the teacher build and tuning runs skip the evaluations during training (every=0)."""
    cfg = dict(cfg)
    ev = dict(cfg.get("eval") or {})
    ev.update(before=before, save_responses=save)
    if every is not None:
        ev["every"] = every
    cfg["eval"] = ev
    return cfg


def main(config: str, overrides: list[str]) -> int:
    from uniapl.experiment.config import load_experiment

    exp, base = load_experiment(config, overrides)
    report = run_experiment(exp, base)
    print((Path(exp.output_dir) / "table.md").read_text())
    print(json.dumps({k: report[k] for k in ("output_dir", "wall_seconds", "runs", "skipped", "failed", "files")},
                     indent=2))
    return 1 if report["failed"] else 0


__all__ = ["run_experiment", "main", "RunSpec"]
