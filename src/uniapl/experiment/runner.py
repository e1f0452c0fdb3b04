"""`uniapl experiment CONFIG [key=value ...]`: the paper's comparison as one command.

Output directory:
    experiment.yaml            the resolved experiment config
    prep/warmup/               the shared warm-up run (every run and the teacher start from its final weights)
    prep/teacher/              the teacher model, when built (Figure 4's teacher)
    runs/<run>/seed-<s>/       one `uniapl train` output dir per (method, sweep point, seed): run.yaml,
                               summary.json, metrics.jsonl, eval_responses.jsonl, logp_samples.jsonl
    table.md, table.csv        one row per method (and sweep point): mean and 95% CI over seeds
    lengths.png, logp_gap.png, curves.png
An interrupted experiment resumes: finished runs (summary.json) are skipped, an interrupted one resumes
from its last checkpoint, and a run whose config changed since it finished is an error (not silently reused).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import time
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from uniapl.config_schema import ConfigError, to_dict
from uniapl.experiment.config import ExperimentConfig, RunSpec, expand_runs, stage_run_config
from uniapl.experiment.worker import SAMPLES, SUMMARY

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
        shutil.rmtree(run_dir)  # an unfinished run of an older config: start it afresh
        run_dir.mkdir(parents=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return False


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


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
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(threads,)) as pool:
            futures = {pool.submit(_run_task, t.mode, str(t.run_dir)): t for t in tasks}
            for fut in as_completed(futures):
                t = futures[fut]
                try:
                    ok, err, seconds = fut.result()
                except Exception as e:  # noqa: BLE001 - a worker process died
                    ok, err, seconds = False, f"worker process failed: {e}", 0.0
                report(t, ok, err, seconds)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return failed


def run_experiment(exp: ExperimentConfig, base: dict[str, Any]) -> dict[str, Any]:
    """Train (or skip) every run of the matrix, analyse them, write the table and the figures."""
    from uniapl.analysis.report import write_report

    t0 = time.time()
    out = Path(exp.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.yaml").write_text(yaml.safe_dump(to_dict(exp), sort_keys=False, allow_unicode=True))
    failed: list[str] = []

    # 1. the shared warm-up: one run, every core
    init_from = None
    warm_dir = None
    if exp.warmup is not None:
        warm_dir = out / "prep" / "warmup"
        cfg = stage_run_config(base, exp.warmup, output_dir=str(warm_dir), init_from=None)
        cfg = _eval_settings(cfg, before=False, every=0)
        if not _write_run(warm_dir, cfg):
            failed += _execute([_Task("warmup", "train", warm_dir)], 1, exp.threads_per_job)
            if failed:
                raise RuntimeError(f"the warm-up failed; see {warm_dir}")
        init_from = str(warm_dir / "final")

    # 2. the teacher model (if built) and every run of the matrix
    tasks: list[_Task] = []
    teacher = exp.teacher.model
    teacher_dir = None
    if teacher is None and exp.teacher.build is not None:
        teacher_dir = out / "prep" / "teacher"
        cfg = stage_run_config(base, exp.teacher.build, output_dir=str(teacher_dir), init_from=init_from)
        if not _write_run(teacher_dir, _eval_settings(cfg, before=False, every=0)):
            tasks.append(_Task("teacher", "train", teacher_dir))
        teacher = str(teacher_dir / "final")
    runs = expand_runs(exp, base, runs_dir=out / "runs", init_from=init_from)
    for r in runs:
        r.config = _eval_settings(r.config, before=False)
        if not _write_run(Path(r.config["output_dir"]), r.config):
            tasks.append(_Task(f"{r.run_id} seed {r.seed}", "train", Path(r.config["output_dir"])))
    skipped = len(runs) - sum(t.name != "teacher" for t in tasks)
    log.info("experiment %s: %d runs (%d finished earlier, skipped), %d to train", exp.name, len(runs), skipped,
             len(runs) - skipped)
    failed += _execute(tasks, exp.jobs, exp.threads_per_job)

    # 3. Figure 4's samples: each finished run under itself and the teacher
    tasks = []
    if teacher is not None and (teacher_dir is None or (teacher_dir / SUMMARY).is_file()):
        for r in runs:
            d = Path(r.config["output_dir"])
            if (d / SUMMARY).is_file() and not (d / SAMPLES).is_file():
                a = exp.analysis
                max_new = a.max_new_tokens or r.config.get("eval", {}).get("max_new_tokens", 64)
                (d / "analysis.json").write_text(json.dumps({"teacher": teacher, "num_samples": a.num_samples,
                                                             "temperature": a.temperature, "max_new_tokens": max_new,
                                                             "seed": 10_007 + r.seed}))
                tasks.append(_Task(f"{r.run_id} seed {r.seed}", "analyze", d))
    failed += _execute(tasks, exp.jobs, exp.threads_per_job)

    # 4. the table and the figures, from whatever finished
    report = write_report(exp, runs, out, warmup_dir=warm_dir, teacher_dir=teacher_dir)
    report.update(wall_seconds=round(time.time() - t0, 1), failed=failed, runs=len(runs), skipped=skipped)
    (out / "experiment_summary.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    return report


def _eval_settings(cfg: dict[str, Any], *, before: bool, every: int | None = None) -> dict[str, Any]:
    """Runs save their responses; the starting model is evaluated once (the warm-up's final eval), not per run;
    the warm-up and the teacher build skip the evaluations during training (every=0)."""
    cfg = dict(cfg)
    ev = dict(cfg.get("eval") or {})
    ev.update(before=before, save_responses=True)
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
