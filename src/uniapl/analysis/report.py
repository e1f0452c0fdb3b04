"""The experiment's table (table.md, table.csv) and figures from the runs' output directories.

Reads only files the runs wrote (summary.json, metrics.jsonl, eval_responses.jsonl, logp_samples.jsonl,
teacher_logp.jsonl), so a report can be redrawn at any time. One row per method and sweep point; for
every metric the mean and the half-width of the 95% t-interval over seeds. Reference rows (starting
model, teacher model, the data's teacher answers) come last, single values.

runs.csv has one row per run, with `responses`: the path (relative to the experiment directory) of the
run's final evaluation responses, `responses/<run>/seed-<s>.jsonl`, whose lines carry key, prompt,
instruction_id_list, kwargs and response, so `uniapl ifeval score --responses FILE` reproduces the row.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uniapl.analysis.stats import mean_ci95, wasserstein_1d
from uniapl.evaluation.ifeval import METRIC_KEYS

SHORT = {
    "prompt_level_strict_acc": "prompt strict",
    "inst_level_strict_acc": "inst strict",
    "prompt_level_loose_acc": "prompt loose",
    "inst_level_loose_acc": "inst loose",
    "mean_length": "mean length",
    "length_w1": "length W1 to teacher",
    "logp_gap": "log p_s - log p_t",
    "teacher_logp": "teacher answers: log p_s / token",
    "sampled_tokens": "sampled tokens",
}
COLUMNS = (*METRIC_KEYS, "mean_length", "length_w1", "logp_gap", "teacher_logp")
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
    responses: list[dict[str, Any]] = field(default_factory=list)  # eval_responses.jsonl rows
    teacher_logp: list[float] = field(default_factory=list)  # per-token log p of each held-out teacher answer
    run_dir: str = ""


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
    tuned: dict[str, Any] = field(default_factory=dict)

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
    responses = _jsonl(run_dir / "eval_responses.jsonl")
    return RunData(
        seed=seed,
        eval=s["eval"]["after"],
        lengths=[r["length_tokens"] for r in responses],
        gaps=[r["gap"] for r in _jsonl(run_dir / "logp_samples.jsonl")],
        metrics=metrics,
        stages=s.get("stages", []),
        sampled_tokens=float(sum(m.get("rollout/tokens", 0.0) for m in metrics)),
        train_seconds=float(sum(e.get("train_seconds", 0.0) for e in s.get("stages", []))),
        final_checkpoint=s["final_checkpoint"],
        responses=responses,
        teacher_logp=[r["logp_per_token"] for r in _jsonl(run_dir / "teacher_logp.jsonl")],
        run_dir=str(run_dir),
    )


def teacher_reference(base_cfg: dict, tokenizer_dir: Path | None) -> dict[str, Any] | None:
    """The data's teacher answers on the held-out prompts: token lengths (student tokenizer, + EOS) and IF metrics."""
    from uniapl.config import Config
    from uniapl.data.loaders import load_records
    from uniapl.evaluation.ifeval import counts_for, metrics_from_counts
    from uniapl.infra.schema import from_dict

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
        per_seed["teacher_logp"].append(sum(r.teacher_logp) / len(r.teacher_logp) if r.teacher_logp else math.nan)
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
    digits = {"mean_length": 1, "length_w1": 1, "logp_gap": 1, "teacher_logp": 2}
    with (out / "table.csv").open("w", newline="") as f:
        w = csv.writer(f)
        head = ["method", *sweep_keys, "seeds"]
        for k in (*columns, "sampled_tokens", "train_minutes"):
            head += [f"{k}_mean", f"{k}_ci95"]
        w.writerow(head)
        for g in groups:
            row: list[Any] = [g.label, *[{**g.tuned, **g.sweep}.get(k, "") for k in sweep_keys], len(g.runs)]
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
        cells = [g.label, *[str({**g.tuned, **g.sweep}.get(k, "")) for k in sweep_keys], seeds]
        cells += [_fmt(*g.values[k], digits.get(k, 3)) for k in columns]
        cells.append(_fmt(g.values["sampled_tokens"][0], math.nan, 0))
        lines.append("| " + " | ".join(cells) + " |")
    for name, vals in refs:
        cells = [f"*{name}*", *["" for _ in sweep_keys], "–"]
        cells += [_fmt(vals.get(k, math.nan), math.nan, digits.get(k, 3)) for k in columns]
        cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")


def _eval_records(cfg: dict) -> dict[Any, Any]:
    """{key: Record} of a run's held-out prompts (its data.eval, eval.limit)."""
    from uniapl.config import Config
    from uniapl.data.loaders import load_records
    from uniapl.infra.schema import from_dict

    c = dict(cfg)
    c.pop("stages", None)
    conf = from_dict(Config, json.loads(json.dumps(c)))
    records = load_records(conf.data.eval, conf.data.synthetic)
    if conf.eval.limit is not None:
        records = records[: conf.eval.limit]
    return {r.key: r for r in records}


def write_responses(out: Path, run_id: str, run: RunData, records: dict[Any, Any]) -> str:
    """responses/<run_id>/seed-<s>.jsonl: the run's final evaluation responses with their instruction specs
    (key, prompt, instruction_id_list, kwargs, response); the path relative to `out`."""
    rel = Path("responses") / run_id / f"seed-{run.seed}.jsonl"
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for row in run.responses:
        rec = records.get(row["key"])
        if rec is None:
            raise ValueError(f"{run.run_dir}: response for key {row['key']!r}, which is not a held-out prompt")
        lines.append(json.dumps({"key": row["key"], "prompt": rec.prompt_text(),
                                 "instruction_id_list": list(rec.instruction_id_list),
                                 "kwargs": [dict(k) for k in rec.kwargs], "response": row["response"]},
                                ensure_ascii=False) + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(path)
    return rel.as_posix()


def write_runs_csv(out: Path, groups: list[Group], teacher_lengths: list[int] | None, sweep_keys: list[str],
                   extra: tuple[str, ...] = (), responses: dict[tuple[str, int], str] | None = None) -> None:
    """runs.csv: one row per finished run: method, seed, every swept / tuned key (dotted), the four metrics,
    `responses` (path of its re-scorable responses), then the other numbers behind the table's means."""
    responses = responses or {}
    with (out / "runs.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "run", "seed", *sweep_keys, *METRIC_KEYS, "responses", "mean_length", "length_w1",
                    "logp_gap", "teacher_logp", "sampled_tokens", "train_seconds", *extra])
        for g in groups:
            for r in g.runs:
                values = {**g.tuned, **g.sweep}
                row: list[Any] = [g.label, g.run_id, r.seed, *[values.get(k, "") for k in sweep_keys]]
                row += [round(r.eval.get(k, math.nan), 6) for k in METRIC_KEYS]
                row.append(responses.get((g.run_id, r.seed), ""))
                row.append(round(sum(r.lengths) / len(r.lengths), 3) if r.lengths else "")
                row.append(round(wasserstein_1d(r.lengths, teacher_lengths), 3) if (teacher_lengths and r.lengths) else "")
                row.append(round(sum(r.gaps) / len(r.gaps), 3) if r.gaps else "")
                row.append(round(sum(r.teacher_logp) / len(r.teacher_logp), 4) if r.teacher_logp else "")
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


def write_tuning_md(out: Path, tuning: dict[str, Any]) -> list[str]:
    """tuning.md: each tuned method's grid with its validation score; the chosen point in bold."""
    if not tuning or not tuning.get("methods"):
        return []
    split = tuning.get("split")
    split = split.get("path", split) if isinstance(split, dict) else split
    lines = [f"**Tuning** on the validation split ({split}), metric {tuning['metric']}, mean over "
             f"tuning seeds {tuning['seeds']}; the chosen point (highest mean, ties: first) in bold.", "",
             "| method | point | mean | per seed |", "|---|---|---|---|"]
    for name, m in tuning["methods"].items():
        for r in m["grid"]:
            pt = ", ".join(f"{k}={v}" for k, v in r["values"].items())
            mean = "–" if r["mean"] is None else f"{r['mean']:.3f}"
            if m["chosen"] == r["values"]:
                pt, mean = f"**{pt}**", f"**{mean}**"
            seeds = " ".join(f"{k}:{v:.3f}" for k, v in r["scores"].items() if v is not None)
            if r["missing_seeds"]:
                seeds += f" (unfinished: {r['missing_seeds']})"
            lines.append(f"| {name} | {pt} | {mean} | {seeds} |")
    (out / "tuning.md").write_text("\n".join(lines) + "\n")
    return ["tuning.md"]


def write_report(exp, runs, out: Path, *, warmup_dir: Path | None, teacher_dir: Path | None,
                 tuning: dict[str, Any] | None = None) -> dict[str, Any]:
    """table.md/csv, runs.csv + responses/, comparisons.md/csv, tuning.md and the figures in `out`."""
    from uniapl.analysis import plots
    from uniapl.analysis.compare import compare_groups, parse_comparison, write_comparisons

    groups: dict[str, Group] = {}
    for r in runs:
        g = groups.setdefault(r.run_id, Group(r.run_id, r.method, r.label, r.sweep, tuned=dict(r.tuned)))
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
    start_name = "start (warm-up)" if getattr(exp, "warmup", None) is not None else "start (model)"
    for name, rd in ((start_name, start), ("teacher model", teacher_model)):
        if rd is not None:
            vals = {k: rd.eval.get(k, math.nan) for k in (*METRIC_KEYS, *extra)}
            vals["mean_length"] = sum(rd.lengths) / len(rd.lengths) if rd.lengths else math.nan
            vals["length_w1"] = wasserstein_1d(rd.lengths, t_lengths) if (t_lengths and rd.lengths) else math.nan
            vals["teacher_logp"] = sum(rd.teacher_logp) / len(rd.teacher_logp) if rd.teacher_logp else math.nan
            refs.append((name, vals))
    if teacher_ref:
        vals = {k: teacher_ref["eval"][k] for k in METRIC_KEYS}
        vals["mean_length"] = sum(t_lengths) / len(t_lengths)
        vals["length_w1"] = 0.0
        refs.append(("teacher answers (data)", vals))
    sweep_keys = sorted({k for g in finished for k in g.sweep})
    tuned_keys = sorted({k for g in finished for k in g.tuned} - set(sweep_keys))
    seeds = sorted({r.seed for r in runs})
    tuned_note = (f" Tuned per method on the validation split (tuning.md): {', '.join(tuned_keys)}." if tuned_keys else "")
    caption = (f"**{exp.name}**: {len(finished)} methods x {len(seeds)} seeds (seeds {', '.join(map(str, seeds))}), "
               f"{exp.steps} optimizer steps each; held-out IFEval-style metrics of greedy responses, "
               f"mean ± 95% t-interval over seeds. Lengths in tokens (incl. EOS); length W1 = Wasserstein-1 "
               f"distance to the teacher answers' length distribution; log p_s - log p_t = mean log-likelihood gap "
               f"of sampled responses (student minus teacher model, nats); teacher answers: log p_s / token = mean "
               f"per-token log-likelihood of the held-out teacher answers under the student.{tuned_note}")
    if extra:
        caption += " general/... columns: lm-eval tasks of eval.general on the final model."
    write_tables(out, finished, refs, sweep_keys=sweep_keys + tuned_keys, caption=caption, extra=extra)
    records = _eval_records(base_cfg) if finished else {}
    resp_paths = {(g.run_id, r.seed): write_responses(out, g.run_id, r, records) for g in finished for r in g.runs
                  if r.responses}
    if start is not None and start.responses:
        resp_paths[("start", 0)] = write_responses(out, "start", start, records)
    start_group = [Group("start", "start", start_name, {}, runs=[start])] if start is not None else []
    write_runs_csv(out, finished + start_group, t_lengths, sweep_keys + tuned_keys, extra, resp_paths)
    files = ["table.md", "table.csv", "runs.csv"] + (["responses"] if resp_paths else [])
    comparisons = [parse_comparison(c) for c in getattr(exp, "compare", [])]
    if comparisons:
        a = exp.analysis
        primary = exp.tune.metric if getattr(exp, "tune", None) else "prompt_level_strict_acc"
        rows = compare_groups(comparisons, finished, resamples=a.bootstrap, power=a.power)
        files += write_comparisons(out, rows, primary=primary, power=a.power, resamples=a.bootstrap)
    files += write_tuning_md(out, tuning or {})
    files += plots.plot_lengths(out / "lengths.png", finished, t_lengths, teacher_model.lengths if teacher_model else None)
    if teacher_dir is not None or getattr(exp.teacher, "model", None):  # Figure 4 needs a teacher model
        files += plots.plot_logp_gap(out / "logp_gap.png", finished)
    if any(r.teacher_logp for g in finished for r in g.runs):
        files += plots.plot_teacher_logp(out / "teacher_logp.png", finished, start.teacher_logp if start else None)
    files += plots.plot_sweep(out / "sweep.png", finished)
    start_acc = start.eval.get("prompt_level_strict_acc") if start else None
    files += plots.plot_curves(out / "curves.png", finished, start_acc=start_acc, smoothing=exp.analysis.smoothing)
    return {"output_dir": str(out), "files": files,
            "rows": _json_safe({g.name: {k: list(v) for k, v in g.values.items()} for g in finished})}
