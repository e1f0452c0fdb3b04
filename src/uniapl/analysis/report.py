"""The experiment's table (table.md, table.csv) and figures from the runs' output directories.

Reads only files the runs wrote (summary.json, metrics.jsonl, eval_responses.jsonl, logp_samples.jsonl),
so a report can be redrawn at any time. One row per method and sweep point; for every metric the mean
and the half-width of the 95% t-interval over seeds. Reference rows (starting model, teacher model, the
data's teacher answers) come last, single values.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uniapl.analysis.stats import mean_ci95, wasserstein_1d
from uniapl.evaluation import METRIC_KEYS

SHORT = {
    "prompt_level_strict_acc": "prompt strict",
    "inst_level_strict_acc": "inst strict",
    "prompt_level_loose_acc": "prompt loose",
    "inst_level_loose_acc": "inst loose",
    "mean_length": "mean length",
    "length_w1": "length W1 to teacher",
    "logp_gap": "log p_s - log p_t",
    "sampled_tokens": "sampled tokens",
}
COLUMNS = (*METRIC_KEYS, "mean_length", "length_w1", "logp_gap")
GENERAL_PREFIX = "general/"  # eval.general's lm-eval metrics: extra columns when a run has them


def general_columns(groups: list["Group"]) -> list[str]:
    """The eval.general metric names (general/<task>/<metric>) any finished run reports, sorted."""
    return sorted({k for g in groups for r in g.runs for k in r.eval if k.startswith(GENERAL_PREFIX)})


def _short(k: str) -> str:
    return SHORT.get(k, k[len(GENERAL_PREFIX):] if k.startswith(GENERAL_PREFIX) else k)


@dataclass
class RunData:
    seed: int
    eval: dict[str, float]
    lengths: list[int]
    gaps: list[float]
    metrics: list[dict[str, Any]]
    stages: list[dict[str, Any]]
    sampled_tokens: float
    train_seconds: float
    final_checkpoint: str


@dataclass
class Group:
    """One row of the table: a method at one sweep point, over its finished seeds."""

    run_id: str
    method: str
    label: str
    sweep: dict[str, Any]
    runs: list[RunData] = field(default_factory=list)
    expected_seeds: int = 0
    values: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        if not self.sweep:
            return self.label
        return self.label + " (" + ", ".join(f"{k.split('.')[-1]}={v}" for k, v in self.sweep.items()) + ")"


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def load_run(run_dir: Path, seed: int) -> RunData | None:
    if not (run_dir / "summary.json").is_file():
        return None
    s = json.loads((run_dir / "summary.json").read_text())
    metrics = _jsonl(run_dir / "metrics.jsonl")
    return RunData(
        seed=seed,
        eval=s["eval"]["after"],
        lengths=[r["length_tokens"] for r in _jsonl(run_dir / "eval_responses.jsonl")],
        gaps=[r["gap"] for r in _jsonl(run_dir / "logp_samples.jsonl")],
        metrics=metrics,
        stages=s.get("stages", []),
        sampled_tokens=float(sum(m.get("rollout/tokens", 0.0) for m in metrics)),
        train_seconds=float(sum(e.get("train_seconds", 0.0) for e in s.get("stages", []))),
        final_checkpoint=s["final_checkpoint"],
    )


def teacher_reference(base_cfg: dict, tokenizer_dir: Path | None) -> dict[str, Any] | None:
    """The data's teacher answers on the held-out prompts: token lengths (student tokenizer, + EOS) and IF metrics."""
    from uniapl.config import Config
    from uniapl.config_schema import from_dict
    from uniapl.data.loaders import load_records
    from uniapl.evaluation import counts_for, metrics_from_counts

    cfg = from_dict(Config, json.loads(json.dumps(base_cfg)))
    if cfg.data.eval is None or tokenizer_dir is None:
        return None
    records = load_records(cfg.data.eval, cfg.data.synthetic)
    if cfg.eval.limit is not None:
        records = records[: cfg.eval.limit]
    records = [r for r in records if r.teacher is not None]
    if not records:
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    lengths = [len(tok(r.teacher, add_special_tokens=False)["input_ids"]) + 1 for r in records]
    m = metrics_from_counts(counts_for(records, [r.teacher for r in records]))
    return {"lengths": lengths, "eval": m}


def _row_values(g: Group, teacher_lengths: list[int] | None, extra: tuple[str, ...] = ()) -> None:
    per_seed: dict[str, list[float]] = {k: [] for k in (*COLUMNS, *extra, "sampled_tokens", "train_minutes")}
    for r in g.runs:
        for k in (*METRIC_KEYS, *extra):
            per_seed[k].append(r.eval.get(k, math.nan))
        per_seed["mean_length"].append(sum(r.lengths) / len(r.lengths) if r.lengths else r.eval.get("mean_length_tokens", math.nan))
        per_seed["length_w1"].append(wasserstein_1d(r.lengths, teacher_lengths) if teacher_lengths and r.lengths else math.nan)
        per_seed["logp_gap"].append(sum(r.gaps) / len(r.gaps) if r.gaps else math.nan)
        per_seed["sampled_tokens"].append(r.sampled_tokens)
        per_seed["train_minutes"].append(r.train_seconds / 60.0)
    g.values = {k: mean_ci95(v) for k, v in per_seed.items()}


def _fmt(mean: float, ci: float, digits: int) -> str:
    if mean is None or not math.isfinite(mean):
        return "–"
    if ci is None or not math.isfinite(ci):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"


def write_tables(out: Path, groups: list[Group], refs: list[tuple[str, dict[str, float]]], *, sweep_keys: list[str],
                 caption: str, extra: tuple[str, ...] = ()) -> None:
    columns = (*COLUMNS, *extra)
    digits = {"mean_length": 1, "length_w1": 1, "logp_gap": 1}
    with (out / "table.csv").open("w", newline="") as f:
        w = csv.writer(f)
        head = ["method", *sweep_keys, "seeds"]
        for k in (*columns, "sampled_tokens", "train_minutes"):
            head += [f"{k}_mean", f"{k}_ci95"]
        w.writerow(head)
        for g in groups:
            row: list[Any] = [g.label, *[g.sweep.get(k, "") for k in sweep_keys], len(g.runs)]
            for k in (*columns, "sampled_tokens", "train_minutes"):
                m, c = g.values.get(k, (math.nan, math.nan))
                row += ["" if not math.isfinite(m) else round(m, 6), "" if not math.isfinite(c) else round(c, 6)]
            w.writerow(row)
        for name, vals in refs:
            row = [name, *["" for _ in sweep_keys], 1]
            for k in (*columns, "sampled_tokens", "train_minutes"):
                v = vals.get(k, math.nan)
                row += ["" if v is None or not math.isfinite(v) else round(v, 6), ""]
            w.writerow(row)
    cols = ["method", *[k.split(".")[-1] for k in sweep_keys], "seeds", *[_short(k) for k in columns], "sampled tokens"]
    lines = [caption, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for g in groups:
        seeds = f"{len(g.runs)}" + (f"/{g.expected_seeds}" if len(g.runs) != g.expected_seeds else "")
        cells = [g.label, *[str(g.sweep.get(k, "")) for k in sweep_keys], seeds]
        cells += [_fmt(*g.values[k], digits.get(k, 3)) for k in columns]
        cells.append(_fmt(g.values["sampled_tokens"][0], math.nan, 0))
        lines.append("| " + " | ".join(cells) + " |")
    for name, vals in refs:
        cells = [f"*{name}*", *["" for _ in sweep_keys], "–"]
        cells += [_fmt(vals.get(k, math.nan), math.nan, digits.get(k, 3)) for k in columns]
        cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")


def write_runs_csv(out: Path, groups: list[Group], teacher_lengths: list[int] | None, sweep_keys: list[str],
                   extra: tuple[str, ...] = ()) -> None:
    """runs.csv: one row per finished run (method, sweep values, seed): the numbers behind the table's means."""
    with (out / "runs.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", *sweep_keys, "seed", *METRIC_KEYS, "mean_length", "length_w1", "logp_gap",
                    "sampled_tokens", "train_seconds", *extra])
        for g in groups:
            for r in g.runs:
                row: list[Any] = [g.label, *[g.sweep.get(k, "") for k in sweep_keys], r.seed]
                row += [round(r.eval.get(k, math.nan), 6) for k in METRIC_KEYS]
                row.append(round(sum(r.lengths) / len(r.lengths), 3) if r.lengths else "")
                row.append(round(wasserstein_1d(r.lengths, teacher_lengths), 3) if (teacher_lengths and r.lengths) else "")
                row.append(round(sum(r.gaps) / len(r.gaps), 3) if r.gaps else "")
                row += [int(r.sampled_tokens), round(r.train_seconds, 1)]
                row += [round(r.eval[k], 6) if k in r.eval else "" for k in extra]
                w.writerow(row)


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    return x


def write_report(exp, runs, out: Path, *, warmup_dir: Path | None, teacher_dir: Path | None) -> dict[str, Any]:
    """table.md, table.csv, runs.csv, lengths.png, logp_gap.png and curves.png in `out`, from the finished runs."""
    from uniapl.analysis import plots

    groups: dict[str, Group] = {}
    for r in runs:
        g = groups.setdefault(r.run_id, Group(r.run_id, r.method, r.label, r.sweep))
        g.expected_seeds += 1
        data = load_run(Path(r.config["output_dir"]), r.seed)
        if data is not None:
            g.runs.append(data)
    finished = [g for g in groups.values() if g.runs]
    # the tokenizer of the students (all runs share it) measures every length, the teacher answers' too
    tok_dir = Path(finished[0].runs[0].final_checkpoint) if finished else None
    base_cfg = dict(runs[0].config) if runs else {}
    base_cfg.pop("stages", None)
    teacher_ref = teacher_reference(base_cfg, tok_dir) if runs else None
    t_lengths = teacher_ref["lengths"] if teacher_ref else None
    teacher_model = load_run(teacher_dir, 0) if teacher_dir is not None else None
    start = load_run(warmup_dir, 0) if warmup_dir is not None else None
    if t_lengths is None and teacher_model is not None and teacher_model.lengths:
        t_lengths = teacher_model.lengths  # no teacher answers in the data: the teacher model's are the reference
    extra = tuple(general_columns(finished))
    for g in finished:
        _row_values(g, t_lengths, extra)
    refs: list[tuple[str, dict[str, float]]] = []
    for name, rd in (("start (warm-up)", start), ("teacher model", teacher_model)):
        if rd is not None:
            vals = {k: rd.eval.get(k, math.nan) for k in (*METRIC_KEYS, *extra)}
            vals["mean_length"] = sum(rd.lengths) / len(rd.lengths) if rd.lengths else math.nan
            vals["length_w1"] = wasserstein_1d(rd.lengths, t_lengths) if (t_lengths and rd.lengths) else math.nan
            refs.append((name, vals))
    if teacher_ref:
        vals = {k: teacher_ref["eval"][k] for k in METRIC_KEYS}
        vals["mean_length"] = sum(t_lengths) / len(t_lengths)
        vals["length_w1"] = 0.0
        refs.append(("teacher answers (data)", vals))
    sweep_keys = sorted({k for g in finished for k in g.sweep})
    seeds = sorted({r.seed for r in runs})
    caption = (f"**{exp.name}**: {len(finished)} methods x {len(seeds)} seeds (seeds {', '.join(map(str, seeds))}), "
               f"{exp.steps} optimizer steps each; held-out IFEval-style metrics of greedy responses, "
               f"mean ± 95% t-interval over seeds. Lengths in tokens (incl. EOS); length W1 = Wasserstein-1 "
               f"distance to the teacher answers' length distribution; log p_s - log p_t = mean log-likelihood gap "
               f"of sampled responses (student minus teacher model, nats).")
    if extra:
        caption += " general/... columns: lm-eval tasks of eval.general on the final model."
    write_tables(out, finished, refs, sweep_keys=sweep_keys, caption=caption, extra=extra)
    write_runs_csv(out, finished, t_lengths, sweep_keys, extra)
    files = ["table.md", "table.csv", "runs.csv"]
    files += plots.plot_lengths(out / "lengths.png", finished, t_lengths, teacher_model.lengths if teacher_model else None)
    files += plots.plot_logp_gap(out / "logp_gap.png", finished)
    start_acc = start.eval.get("prompt_level_strict_acc") if start else None
    files += plots.plot_curves(out / "curves.png", finished, start_acc=start_acc, smoothing=exp.analysis.smoothing)
    return {"output_dir": str(out), "files": files,
            "rows": _json_safe({g.name: {k: list(v) for k, v in g.values.items()} for g in finished})}
