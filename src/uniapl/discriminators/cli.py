"""``uniapl discriminate CONFIG [key=value ...] --input triples.jsonl --output scores.jsonl``

Scores (prompt, reference, candidate) records with the discriminator a training config names, so a
discriminator can be inspected before training with it. Input: one JSON object per line with

    prompt                       a string or a list of chat messages
    candidate                    the answer to score (aliases: response, student, completion, output)
    reference                    teacher mode: the reference answer (alias: teacher)
    ground_truth, teacher        ground_truth mode (``discriminator.reference=ground_truth``)

Output: every input line with ``raw`` (the discriminator's raw score r) and ``coef`` (the transformed
coefficient) added; a summary (count, means, triples per second) goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .config import DiscriminatorConfig

_CANDIDATE_KEYS = ("candidate", "response", "student", "completion", "output")


def load_discriminator_config(path: str, overrides: list[str]) -> DiscriminatorConfig:
    """The ``discriminator`` section of a uniapl config (``discriminator.a.b=v`` overrides applied)."""
    from uniapl.config import load_config

    return load_config(path, list(overrides)).discriminator


def _field(rec: dict[str, Any], keys: tuple[str, ...], where: str, what: str) -> Any:
    for k in keys:
        if k in rec and rec[k] is not None:
            return rec[k]
    raise ValueError(f"{where}: no {what} (one of {list(keys)})")


def read_triples(path: str, reference_mode: str) -> tuple[list[dict], list, list, list, list]:
    records, prompts, candidates, teachers, gts = [], [], [], [], []
    from uniapl.data.jsonl import iter_jsonl

    for where, rec in iter_jsonl(path, error=ValueError):
        prompts.append(_field(rec, ("prompt",), where, "prompt"))
        candidates.append(_field(rec, _CANDIDATE_KEYS, where, "candidate"))
        if reference_mode == "teacher":
            teachers.append(_field(rec, ("reference", "teacher"), where, "reference"))
            gts.append(rec.get("ground_truth"))
        else:
            gts.append(_field(rec, ("ground_truth", "reference"), where, "ground_truth"))
            teachers.append(_field(rec, ("teacher",), where, "teacher answer"))
        records.append(rec)
    return records, prompts, candidates, teachers, gts


def run_discriminate(args: argparse.Namespace) -> int:
    from .polar_server import PolarServerError

    try:
        return _discriminate(args)
    except (ValueError, KeyError, FileNotFoundError, PolarServerError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"uniapl discriminate: error: {msg}", file=sys.stderr)
        return 2


def _discriminate(args: argparse.Namespace) -> int:
    from . import build_discriminator

    cfg = load_discriminator_config(args.config, list(args.overrides))
    if args.batch_size:
        cfg.batch_size = args.batch_size
    records, prompts, candidates, teachers, gts = read_triples(args.input, cfg.reference)
    disc = build_discriminator(cfg)
    t0 = time.perf_counter()
    coef, raw, metrics = disc.coefficients(prompts, candidates, teachers=teachers, ground_truths=gts)
    seconds = time.perf_counter() - t0
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    from uniapl.infra.atomic import atomic_write_jsonl

    atomic_write_jsonl(out, [{**rec, "raw": r, "coef": c} for rec, r, c in zip(records, raw.tolist(), coef.tolist())])
    summary = {
        "discriminator": cfg.name, "transform": cfg.transform, "reference": cfg.reference, "n": len(records),
        "seconds": round(seconds, 4), "triples_per_second": round(len(records) / seconds, 2) if seconds > 0 else None,
        **{k: round(v, 4) for k, v in metrics.items() if k.startswith("adv/") and not k.endswith("seconds")},
        "output": str(out),
    }
    print(json.dumps(summary), file=sys.stderr)
    return 0


def add_subparser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "discriminate",
        help="score (prompt, reference, candidate) JSONL records with the configured discriminator",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="a uniapl YAML config; its `discriminator:` section is used")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. discriminator.name=embedding")
    p.add_argument("--input", required=True, help="JSONL with prompt / reference / candidate per line")
    p.add_argument("--output", required=True, help="JSONL written with raw and coef added to each record")
    p.add_argument("--batch-size", type=int, default=None, help="override discriminator.batch_size")
    p.set_defaults(func=run_discriminate)
