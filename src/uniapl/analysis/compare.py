"""Paired comparisons of methods (comparisons.md, comparisons.csv): "A - B", paired by seed.

Paired means: run A at seed s and run B at seed s share everything a seed decides. Every run starts
from the same weights (the shared warm-up, or the configured model), and the trainer draws its data from
(seed, step index within a stage, slice): at step t of a stage, both methods see the same SFT prompts
(when their SFT batch sizes agree) and the same preference prompts, and seed the sampler the same way.
What differs is the method itself: its rollouts come from different weights (and a method that also
samples on the SFT prompts uses the sampler's stream for more rows), and a staged method's second stage
starts again at step 0 of the same stream. So the per-seed difference removes the variance the seeds
share (data order), not the sampling noise of each method.

For each metric: the per-seed differences, their mean, the 95% t-interval over seeds and the minimum
detectable difference at the configured power (`uniapl.analysis.stats.paired_t`); for each metric also
a paired bootstrap over the held-out prompts (`paired_bootstrap`, from eval_responses.jsonl).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from uniapl.analysis.stats import paired_bootstrap, paired_t
from uniapl.evaluation.ifeval import METRIC_KEYS
from uniapl.infra.schema import ConfigError

_PROMPT_LEVEL = {"prompt_level_strict_acc": "prompt_strict", "prompt_level_loose_acc": "prompt_loose"}
_INST_LEVEL = {"inst_level_strict_acc": "inst_strict", "inst_level_loose_acc": "inst_loose"}


def _per_prompt(rows: list[dict], metric: str) -> tuple[dict[Any, float], dict[Any, float]]:
    """{key: passes}, {key: weight} of one run's eval_responses rows for `metric`."""
    passes, weight = {}, {}
    for r in rows:
        if metric in _PROMPT_LEVEL:
            passes[r["key"]], weight[r["key"]] = float(bool(r[_PROMPT_LEVEL[metric]])), 1.0
        else:
            v = r[_INST_LEVEL[metric]]
            passes[r["key"]], weight[r["key"]] = float(sum(bool(x) for x in v)), float(len(v))
    return passes, weight


def _bootstrap(a_runs: dict, b_runs: dict, seeds: list[int], metric: str, resamples: int, seed: int):
    if not seeds or resamples <= 0:
        return float("nan"), float("nan")
    pa, pb, ws = [], [], []
    keys = None
    for s in seeds:
        a_p, a_w = _per_prompt(a_runs[s].responses, metric)
        b_p, _ = _per_prompt(b_runs[s].responses, metric)
        k = sorted(set(a_p) & set(b_p), key=str)
        if keys is None:
            keys = k
        elif k != keys:
            return float("nan"), float("nan")  # not the same prompts: no paired bootstrap
        pa.append([a_p[x] for x in keys])
        pb.append([b_p[x] for x in keys])
        ws.append([a_w[x] for x in keys])
    if not keys:
        return float("nan"), float("nan")
    _, lo, hi = paired_bootstrap(np.array(pa), np.array(pb), np.array(ws), resamples=resamples, seed=seed)
    return lo, hi


def _match(groups_b: list, sweep_a: dict[str, Any]):
    """B's group for a point of A: B's only group, or the one whose sweep values agree with A's."""
    if len(groups_b) == 1:
        return groups_b[0]
    for g in groups_b:
        if all(sweep_a.get(k) == v for k, v in g.sweep.items()):
            return g
    return None


def compare_groups(comparisons: list[tuple[str, str]], groups: list, *, resamples: int = 2000,
                   power: float = 0.8) -> list[dict[str, Any]]:
    """One row per (comparison, sweep point of A, metric)."""
    by_method: dict[str, list] = {}
    for g in groups:
        by_method.setdefault(g.method, []).append(g)
    rows = []
    for ci, (a, b) in enumerate(comparisons):
        for ga in by_method.get(a, []):
            gb = _match(by_method.get(b, []), ga.sweep)
            if gb is None:
                continue
            a_runs = {r.seed: r for r in ga.runs}
            b_runs = {r.seed: r for r in gb.runs}
            seeds = sorted(set(a_runs) & set(b_runs))
            for metric in METRIC_KEYS:
                diffs = [a_runs[s].eval.get(metric, math.nan) - b_runs[s].eval.get(metric, math.nan) for s in seeds]
                t = paired_t(diffs, power=power)
                lo, hi = _bootstrap(a_runs, b_runs, seeds, metric, resamples, seed=ci)
                rows.append({"comparison": f"{ga.name} - {gb.name}", "a": ga.run_id, "b": gb.run_id,
                             "metric": metric, "seeds": len(seeds), "mean_a": _mean([a_runs[s].eval.get(metric) for s in seeds]),
                             "mean_b": _mean([b_runs[s].eval.get(metric) for s in seeds]),
                             "diff": t["mean"], "sd": t["sd"], "ci_low": t["ci_low"], "ci_high": t["ci_high"],
                             "mde": t["mde"], "boot_low": lo, "boot_high": hi,
                             "per_seed": ";".join(f"{s}:{d:+.4f}" for s, d in zip(seeds, diffs))})
    return rows


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(xs)) if xs else float("nan")


def _num(x: Any) -> Any:
    return "" if isinstance(x, float) and not math.isfinite(x) else (round(x, 6) if isinstance(x, float) else x)


def _f(x: float, d: int = 3, sign: bool = True) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:+.{d}f}" if sign else f"{x:.{d}f}"


def write_comparisons(out: Path, rows: list[dict[str, Any]], *, primary: str, power: float, resamples: int) -> list[str]:
    """comparisons.csv (every metric) and comparisons.md (the primary metric; the others in the CSV)."""
    if not rows:
        return []
    cols = ["comparison", "a", "b", "metric", "seeds", "mean_a", "mean_b", "diff", "sd", "ci_low", "ci_high", "mde",
            "boot_low", "boot_high", "per_seed"]
    tmp = out / "comparisons.csv.tmp"
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([_num(r[c]) for c in cols])
    tmp.replace(out / "comparisons.csv")
    lines = [f"**Paired differences** (A - B, {primary}): per-seed differences of runs with the same seed; mean, "
             f"95% t-interval over seeds, the minimum detectable difference (two-sided 5% paired t-test, "
             f"{int(power * 100)}% power, from the observed SD of the differences) and a 95% paired bootstrap "
             f"interval over the held-out prompts ({resamples} resamples; prompt-sampling uncertainty at these "
             f"seeds only). An interval that contains 0 does not resolve the difference.", "",
             "| A - B | seeds | A | B | A - B | 95% CI (seeds) | min. detectable | 95% CI (prompts) | per seed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["metric"] != primary:
            continue
        ci = f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}]" if math.isfinite(r["ci_low"]) else "–"
        boot = f"[{_f(r['boot_low'])}, {_f(r['boot_high'])}]" if math.isfinite(r["boot_low"]) else "–"
        lines.append(f"| {r['comparison']} | {r['seeds']} | {_f(r['mean_a'], sign=False)} | {_f(r['mean_b'], sign=False)} "
                     f"| {_f(r['diff'])} | {ci} | {_f(r['mde'], sign=False)} | {boot} | {r['per_seed'].replace(';', ' ')} |")
    (out / "comparisons.md").write_text("\n".join(lines) + "\n")
    return ["comparisons.md", "comparisons.csv"]


def parse_comparison(text: str) -> tuple[str, str]:
    """'unified - grpo' -> ('unified', 'grpo'): the difference a - b, paired by seed."""
    parts = [p.strip() for p in str(text).split(" - ")]
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"comparison {text!r}: write it as 'METHOD_A - METHOD_B' (method keys, spaces around '-')")
    return parts[0], parts[1]


__all__ = ["compare_groups", "parse_comparison", "write_comparisons"]
