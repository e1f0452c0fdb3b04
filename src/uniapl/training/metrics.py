"""A step's metrics: collected from the update's micro-batches in one place, reduced over processes.

Metrics are flat dicts with slash names (`loss/grpo`, `clip_ratio/region_mean`, `time/rollout_s` ...);
TRL's names where TRL has them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from uniapl.infra.atomic import atomic_write_jsonl


class UpdateLog:
    """What the micro-batches of one update report (the `UpdateLog` protocol of `uniapl.objective.base`):
    totals (loss/<term>: each micro-batch's share of the step's loss), weighted means, extremes (*/max,
    */min) and row concatenations (the mean over every row)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.weighted: dict[str, list[float]] = {}
        self.extremes: dict[str, float] = {}
        self.rows: dict[str, list[torch.Tensor]] = {}

    def total(self, key: str, value: float) -> None:
        self.totals[key] = self.totals.get(key, 0.0) + value

    def mean(self, metrics: dict[str, float], keys: tuple[str, ...], weight: float) -> None:
        for k in keys:
            if k in metrics:
                acc = self.weighted.setdefault(k, [0.0, 0.0])
                acc[0] += metrics[k] * weight
                acc[1] += weight

    def extreme(self, key: str, value: float) -> None:
        if key in self.extremes:
            value = (max if key.endswith("/max") else min)(self.extremes[key], value)
        self.extremes[key] = value

    def concat(self, key: str, values: torch.Tensor) -> None:
        self.rows.setdefault(key, []).append(values)

    def result(self) -> dict[str, float]:
        out = dict(self.totals)
        out.update({k: s / w for k, (s, w) in self.weighted.items() if w > 0})
        out.update(self.extremes)
        out.update({k: float(torch.cat(v).mean()) for k, v in self.rows.items()})
        return out


def reduce_over_processes(acc, metrics: dict[str, float]) -> dict[str, float]:
    """The mean over processes of each metric (*/max and */min: the max / min). Processes may report
    different keys (one had no DPO pair, no KTO row): a key is averaged over the processes that report it,
    except the `loss/*` totals, which each process reports as its share of the global sum (times world)
    and a process without the term contributes 0 to."""
    if acc.num_processes == 1:
        return metrics
    from accelerate.utils import gather_object

    keys = sorted(set().union(*gather_object([sorted(metrics)])))
    inf = float("inf")
    rows = []
    for k in keys:
        present = k in metrics or k.startswith("loss/")
        fill = -inf if k.endswith("/max") else inf if k.endswith("/min") else 0.0
        rows.append([metrics.get(k, 0.0 if present else fill), float(present)])
    t = torch.tensor(rows, dtype=torch.float64, device=acc.device)
    every = acc.gather(t[None]).view(acc.num_processes, len(keys), 2)
    out = {}
    for i, k in enumerate(keys):
        vals, seen = every[:, i, 0], every[:, i, 1]
        if k.endswith("/max"):
            out[k] = float(vals.max())
        elif k.endswith("/min"):
            out[k] = float(vals.min())
        else:
            out[k] = float(vals.sum() / max(float(seen.sum()), 1.0))
    return out


def read_metrics_rows(path: Path) -> list[dict]:
    """metrics.jsonl rows; a line cut short by a kill (the last one) is dropped."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def truncate_metrics(path: Path, stage: str, last_step: int) -> None:
    """Drop `stage`'s rows after `last_step` (the checkpoint a resumed stage restarts from), atomically, so
    that the steps a killed attempt logged after its last checkpoint appear once, from the resumed attempt."""
    if not path.is_file():
        return
    rows = read_metrics_rows(path)
    keep = [r for r in rows if not (r.get("stage") == stage and int(r.get("step", 0)) > last_step)]
    if len(keep) != len(rows) or len(path.read_bytes().splitlines()) != len(rows):
        atomic_write_jsonl(path, keep)


__all__ = ["UpdateLog", "read_metrics_rows", "reduce_over_processes", "truncate_metrics"]
