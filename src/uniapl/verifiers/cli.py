"""The ``uniapl ifeval`` command: ``score`` a responses file, or ``run`` a model on the prompts and score it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from uniapl.infra.atomic import atomic_write_text

from .registry import validate_spec
from .scoring import ScoreError, format_report, join_specs, load_prompts, read_jsonl, score_records, summary, write_verdicts


def _needs_prompts(records: list[tuple[str, dict]]) -> bool:
    return any("instruction_id_list" not in r for _, r in records)


def score(args: argparse.Namespace) -> int:
    try:
        records = read_jsonl(args.responses)
        prompts = load_prompts(args.prompts) if (args.prompts or _needs_prompts(records)) else None
        scored = score_records(join_specs(records, prompts))
    except (ScoreError, OSError) as e:
        print(f"uniapl ifeval score: error: {e}", file=sys.stderr)
        return 2
    result = summary(scored)
    print(format_report(result))
    if args.output:
        write_verdicts(scored, args.output)
        print(f"\nverdicts: {args.output}")
    if args.metrics:
        atomic_write_text(args.metrics, json.dumps(result, indent=2) + "\n")
    return 0


def run(args: argparse.Namespace) -> int:
    from .generate import generate_responses, load_model

    out_dir = Path(args.output_dir)
    try:
        prompts = load_prompts(args.prompts)
        for where, row in prompts.rows[: args.limit if args.limit else None]:  # fail before generating
            validate_spec(row["instruction_id_list"], row.get("kwargs"), where=where)
    except (ValueError, OSError) as e:
        print(f"uniapl ifeval run: error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from uniapl.infra.hub import check_source

    try:  # a missing path or an unreachable hub: one line, not transformers' retries and tracebacks
        check_source(args.model, "argument MODEL")
        model, tok = load_model(args.model, gguf_file=args.gguf_file, dtype=args.dtype, device=args.device)
    except OSError as e:
        print(f"uniapl ifeval run: error: MODEL {args.model} cannot be loaded: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    responses_path = out_dir / "responses.jsonl"
    responses = generate_responses(
        model, tok, prompts, responses_path,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, temperature=args.temperature,
        seed=args.seed, limit=args.limit, progress=not args.no_progress,
    )
    try:
        scored = score_records(join_specs([(f"{responses_path}:{i}", r) for i, r in enumerate(responses, 1)], prompts))
    except ScoreError as e:
        print(f"uniapl ifeval run: error: {e}", file=sys.stderr)
        return 2
    write_verdicts(scored, out_dir / "verdicts.jsonl")
    result = summary(scored)
    result["settings"] = {
        "model": args.model, "gguf_file": args.gguf_file, "prompts": args.prompts or "hub:google/IFEval",
        "limit": args.limit, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "temperature": args.temperature, "seed": args.seed, "dtype": args.dtype, "device": args.device, "threads": args.threads,
    }
    atomic_write_text(out_dir / "metrics.json", json.dumps(result, indent=2) + "\n")
    print(format_report(result))
    print(f"\nwrote {responses_path}, {out_dir / 'verdicts.jsonl'}, {out_dir / 'metrics.json'}")
    return 0


def add_subparser(subparsers) -> None:
    """Add ``ifeval score`` and ``ifeval run`` to the ``uniapl`` command."""
    p = subparsers.add_parser("ifeval", help="IFEval: score responses, or run a model and score it")
    sub = p.add_subparsers(dest="ifeval_command", required=True)

    s = sub.add_parser("score", help="score a JSONL file of responses (strict and loose)")
    s.add_argument("--responses", required=True, help="JSONL: response + (instruction_id_list/kwargs | key/prompt)")
    s.add_argument("--prompts", default=None,
                   help="JSONL of prompts to join on key/prompt (default: google/IFEval from the hub, if needed)")
    s.add_argument("--output", default=None, help="write one verdict line per record here")
    s.add_argument("--metrics", default=None, help="also write the metrics as JSON here")
    s.set_defaults(func=score)

    r = sub.add_parser("run", help="generate responses with a model, then score them")
    r.add_argument("model", help="hub id, local folder, or a .gguf file")
    r.add_argument("--prompts", default=None, help="JSONL of prompts (default: google/IFEval from the hub)")
    r.add_argument("--output-dir", default="outputs/ifeval", help="where responses, verdicts and metrics go")
    r.add_argument("--gguf-file", default=None, help="GGUF file name inside MODEL (a folder or hub repo)")
    r.add_argument("--max-new-tokens", type=int, default=1024)
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    r.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    r.add_argument("--device", default="cpu")
    r.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default; 1 is fastest on a busy 2-core machine)")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m uniapl.verifiers.cli ifeval score ...``)."""
    parser = argparse.ArgumentParser(prog="uniapl")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
