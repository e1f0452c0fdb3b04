"""The experiment's figures (matplotlib, Agg backend): each function writes one PNG and returns [its name].

    lengths.png    Figure 3: response-length distribution of each method on the held-out prompts (pooled
                   over seeds), against the teacher's answers on the same prompts (and the teacher model's).
    logp_gap.png   Figure 4: kernel density of log p_student(y) - log p_teacher(y) over sampled responses,
                   one curve per method.
    teacher_logp.png   Figure 4 analogue without a teacher model: kernel density of the per-token
                   log-likelihood of the held-out teacher answers under each student (pooled over seeds),
                   and under the starting model.
    sweep.png      Figures 5/6: the primary metric against each swept key with 3 or more numeric values (log
                   axis when the values are positive and span 10x or more), one line per swept method with
                   95 % t-intervals over seeds; methods without that key as horizontal lines (their mean).
    curves.png     reward (training rollouts), held-out IF accuracy, KL to the reference and the
                   discriminator coefficient over optimizer steps (stages of a pipeline laid end to end),
                   per method, averaged over seeds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from uniapl.analysis.stats import gaussian_kde, wasserstein_1d


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(n: int) -> list:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_lengths(path: Path, groups: list, teacher: list[int] | None, teacher_model: list[int] | None) -> list[str]:
    plt = _plt()
    n = len(groups)
    if n == 0:
        return []
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows), squeeze=False, sharex=True)
    every = [x for g in groups for r in g.runs for x in r.lengths] + list(teacher or []) + list(teacher_model or [])
    hi = max(every) if every else 1
    bins = np.linspace(0, hi + 1, min(40, hi + 2))
    colors = _colors(n)
    for i, g in enumerate(groups):
        ax = axes[i // cols][i % cols]
        lengths = [x for r in g.runs for x in r.lengths]
        if lengths:
            ax.hist(lengths, bins=bins, density=True, color=colors[i], alpha=0.6, label=g.name)
        if teacher:
            ax.hist(teacher, bins=bins, density=True, histtype="step", color="black", linewidth=1.4,
                    label="teacher answers")
        if teacher_model:
            ax.hist(teacher_model, bins=bins, density=True, histtype="step", color="gray", linestyle="--",
                    linewidth=1.2, label="teacher model")
        w1 = wasserstein_1d(lengths, teacher) if (teacher and lengths) else float("nan")
        mean = float(np.mean(lengths)) if lengths else float("nan")
        ax.set_title(f"{g.name}\nmean {mean:.1f}, W1 to teacher {w1:.1f}", fontsize=9)
        ax.tick_params(labelsize=8)
        if i == 0:
            ax.legend(fontsize=7)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("response length (tokens)", fontsize=8)
    fig.suptitle("Response lengths on the held-out prompts (greedy), pooled over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


def plot_logp_gap(path: Path, groups: list) -> list[str]:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    data = [(g, np.asarray([x for r in g.runs for x in r.gaps], dtype=np.float64)) for g in groups]
    data = [(g, x[np.isfinite(x)]) for g, x in data]
    data = [(g, x) for g, x in data if x.size]
    if data:
        allx = np.concatenate([x for _, x in data])
        lo, hi = np.percentile(allx, 0.5), np.percentile(allx, 99.5)
        pad = 0.1 * (hi - lo + 1e-9)
        grid = np.linspace(lo - pad, hi + pad, 400)
        for (g, x), c in zip(data, _colors(len(data))):
            ax.plot(grid, gaussian_kde(x, grid), color=c, label=f"{g.name}: mean {x.mean():.1f}, sd {x.std():.1f}")
        ax.axvline(0.0, color="black", linewidth=0.8, linestyle=":")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no samples (no teacher model configured, or no run finished)", ha="center",
                transform=ax.transAxes)
    ax.set_xlabel("log p_student(y) - log p_teacher(y)   (nats, y ~ student, held-out prompts)")
    ax.set_ylabel("density")
    ax.set_title("Log-likelihood gap between each student and the teacher model (Figure 4)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


def plot_teacher_logp(path: Path, groups: list, start: list[float] | None) -> list[str]:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    data = [(g.name, np.asarray([x for r in g.runs for x in r.teacher_logp], dtype=np.float64)) for g in groups]
    if start:
        data.append(("start", np.asarray(start, dtype=np.float64)))
    data = [(n, x[np.isfinite(x)]) for n, x in data]
    data = [(n, x) for n, x in data if x.size]
    if data:
        allx = np.concatenate([x for _, x in data])
        lo, hi = np.percentile(allx, 0.5), np.percentile(allx, 99.5)
        pad = 0.1 * (hi - lo + 1e-9)
        grid = np.linspace(lo - pad, hi + pad, 400)
        for (n, x), c in zip(data, _colors(len(data))):
            style = dict(color="black", linestyle="--") if n == "start" else dict(color=c)
            ax.plot(grid, gaussian_kde(x, grid), label=f"{n}: mean {x.mean():.2f}", **style)
        ax.legend(fontsize=7)
    ax.set_xlabel("log p_student(teacher answer | prompt) per token (nats), held-out prompts")
    ax.set_ylabel("density")
    ax.set_title("Held-out teacher answers under each student (Figure 4 analogue)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


def _global_series(run, key: str) -> dict[int, float]:
    """{global step: value} of `key` in a run's metrics.jsonl; a pipeline's stages are laid end to end."""
    out: dict[int, float] = {}
    offset, last_stage, stage_max = 0, None, 0
    for row in run.metrics:
        stage = row.get("stage")
        if stage != last_stage and last_stage is not None:
            offset += stage_max
            stage_max = 0
        last_stage = stage
        stage_max = max(stage_max, int(row["step"]))
        if key in row and isinstance(row[key], (int, float)) and math.isfinite(row[key]):
            out[offset + int(row["step"])] = float(row[key])
    return out


def _accuracy_series(run, start_acc: float | None) -> dict[int, float]:
    out = _global_series(run, "eval/prompt_level_strict_acc")
    if start_acc is not None:
        out[0] = start_acc
    step = 0
    for st in run.stages:
        step += int(st.get("steps", 0))
        acc = (st.get("eval") or {}).get("after", {}).get("prompt_level_strict_acc")
        if acc is not None:
            out[step] = float(acc)
    return out


def _mean_over_seeds(series: list[dict[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    steps = sorted(set().union(*[s.keys() for s in series])) if series else []
    ys = [np.mean([s[k] for s in series if k in s]) for k in steps]
    return np.asarray(steps, dtype=np.float64), np.asarray(ys, dtype=np.float64)


def _smooth(y: np.ndarray, w: int) -> np.ndarray:
    if w <= 1 or y.size < 2:
        return y
    out = np.empty_like(y)
    for i in range(y.size):
        out[i] = y[max(0, i - w + 1) : i + 1].mean()
    return out


def plot_curves(path: Path, groups: list, *, start_acc: float | None, smoothing: int = 5) -> list[str]:
    plt = _plt()
    panels: list[tuple[str, Any, bool]] = [
        ("reward (training rollouts)", lambda r: _global_series(r, "reward"), True),
        ("held-out IF accuracy (prompt strict)", lambda r: _accuracy_series(r, start_acc), False),
        ("KL to the reference (k3)", lambda r: _global_series(r, "kl"), True),
        ("discriminator coef (mean)", lambda r: _global_series(r, "adv/coef_mean"), True),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    colors = _colors(len(groups))
    for ax, (title, get, smooth) in zip(axes.flat, panels):
        drawn = 0
        for g, c in zip(groups, colors):
            series = [s for s in (get(r) for r in g.runs) if s]
            if not series:
                continue
            x, y = _mean_over_seeds(series)
            if smooth:
                ax.plot(x, _smooth(y, smoothing), color=c, label=g.name, linewidth=1.3)
            else:
                ax.plot(x, y, color=c, label=g.name, marker="o", markersize=3, linewidth=1.2)
            drawn += 1
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.tick_params(labelsize=8)
        if not drawn:
            ax.text(0.5, 0.5, "no method logs this", ha="center", transform=ax.transAxes, fontsize=8)
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8)
    fig.suptitle(f"Training curves, mean over seeds (moving average over {smoothing} steps where smoothed)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.07 if handles else 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


def plot_sweep(path: Path, groups: list, metric: str = "prompt_level_strict_acc", label: str = "prompt strict") -> list[str]:
    keys = sorted({k for g in groups for k, v in g.sweep.items() if isinstance(v, (int, float))})
    keys = [k for k in keys if len({g.sweep[k] for g in groups if k in g.sweep}) >= 3]
    if not keys:
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(5.6 * len(keys), 3.8), squeeze=False)
    methods = list(dict.fromkeys(g.method for g in groups))
    colors = dict(zip(methods, _colors(len(methods))))
    for ax, key in zip(axes[0], keys):
        xs_all = sorted({float(g.sweep[key]) for g in groups if key in g.sweep})
        for m in methods:
            pts = sorted((float(g.sweep[key]), *g.values.get(metric, (math.nan, math.nan)), g.label)
                         for g in groups if g.method == m and key in g.sweep)
            if pts:
                x, y, ci = (np.array([p[i] for p in pts]) for i in range(3))
                ax.errorbar(x, y, yerr=np.nan_to_num(ci), marker="o", capsize=3, color=colors[m], label=pts[0][3])
        for g in groups:
            if key not in g.sweep and not any(key in h.sweep for h in groups if h.method == g.method):
                mean = g.values.get(metric, (math.nan, math.nan))[0]
                ax.axhline(mean, linestyle="--", linewidth=1.2, color=colors[g.method], label=g.name)
        if xs_all[0] > 0 and xs_all[-1] / xs_all[0] >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{label} against the swept settings (mean ± 95 % t-interval over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path.name]
