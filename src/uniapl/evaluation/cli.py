"""The ``uniapl eval`` command group: ``general`` (lm-evaluation-harness tasks on a trained model)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _limit(text: str) -> int | float:
    value = float(text)
    return int(value) if value >= 1 and value.is_integer() else value


def general(args: argparse.Namespace) -> int:
    from uniapl.evaluation.general import GeneralEvalError, evaluate_general

    out = Path(args.output)
    try:
        if out.exists() and not args.overwrite:
            raise GeneralEvalError(f"{out} exists; pass --overwrite to replace it")
        tasks = [t.strip() for item in args.tasks for t in item.split(",") if t.strip()]
        batch = int(args.batch_size) if str(args.batch_size).isdigit() else args.batch_size  # "auto" passes through
        result = evaluate_general(args.model, tasks, include_path=args.include_path, limit=args.limit,
                                  batch_size=batch, device=args.device, num_fewshot=args.num_fewshot,
                                  dtype=args.dtype, apply_chat_template=args.apply_chat_template, seed=args.seed,
                                  log_samples=args.log_samples, builtin_tasks=not args.no_builtin_tasks,
                                  confirm_run_unsafe_code=args.confirm_run_unsafe_code)
    except GeneralEvalError as e:
        print(f"uniapl eval general: error: {e}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    print(json.dumps(result.get("metrics", {}), indent=2))
    print(f"\nwrote {out}")
    return 0


def add_subparser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a trained model: uniapl eval general MODEL --tasks ...")
    sub = p.add_subparsers(dest="eval_command", required=True)
    g = sub.add_parser("general", help="general capability through lm-evaluation-harness (pip install 'uniapl[eval]')",
                       description="Run lm-eval tasks (hub tasks such as mmlu, gsm8k, or YAML tasks under "
                                   "--include-path) on a uniapl output: a run dir, final/, checkpoints/step-N/, "
                                   "a LoRA adapter dir, or a hub id.")
    g.add_argument("model", help="run dir, model folder, checkpoint folder, LoRA adapter folder or hub id")
    g.add_argument("--tasks", action="append", required=True, help="lm-eval task/group names, comma-separated")
    g.add_argument("--include-path", action="append", default=None, help="folder of extra lm-eval YAML tasks")
    g.add_argument("--no-builtin-tasks", action="store_true",
                   help="only tasks under --include-path (lm-eval's own index takes a while to build)")
    g.add_argument("--limit", type=_limit, default=None, help="N documents per task (or a fraction < 1)")
    g.add_argument("--batch-size", default="1", help="batch size, or 'auto'")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:0 ... (default: cuda if available)")
    g.add_argument("--num-fewshot", type=int, default=None)
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    g.add_argument("--apply-chat-template", action="store_true", help="wrap prompts in the model's chat template")
    g.add_argument("--confirm-run-unsafe-code", action="store_true",
                   help="allow tasks that run model-written code unsandboxed (humaneval, mbpp)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--log-samples", action="store_true", help="also keep per-document samples in the output")
    g.add_argument("--output", required=True, help="JSON file: metrics (general/<task>/<metric>), raw results, settings")
    g.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    g.set_defaults(func=general)
