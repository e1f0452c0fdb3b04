"""The ``uniapl data`` command group: ``build`` (constraint prompts from plain prompts), ``teacher`` (teacher answers).

A subcommand is a function ``add_<name>(subparsers)`` listed in `SUBCOMMANDS`; it adds its parser and
sets ``func`` (returning the exit status; a `DataError` becomes exit status 2 with one message).
"""

from __future__ import annotations

import argparse
import json
import sys

from uniapl.data.jsonl import DataError


def build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm.auto import tqdm

    from uniapl.data.build import BuildStats, build_records, parse_num_constraints, read_base_prompts, select_ids, write_jsonl_atomic
    from uniapl.data.decontaminate import NgramIndex, ifeval_prompts, load_eval_prompts

    if Path(args.output).exists() and not args.overwrite:  # before any work
        raise DataError(f"{args.output} exists; pass --overwrite to replace it")
    k = parse_num_constraints(args.num_constraints)
    allowed = select_ids(_split(args.instructions), _split(args.exclude))
    index = None
    if args.decontaminate or args.decontaminate_against:
        against = load_eval_prompts(args.decontaminate_against) if args.decontaminate_against else ifeval_prompts()
        index = NgramIndex.build(against, n=args.ngram)
    stats = BuildStats()
    base = read_base_prompts(args.base, field_name=args.field, key_field=args.key_field, split=args.split, name=args.name)
    with tqdm(desc="prompts", unit=" prompts", disable=args.no_progress, file=sys.stderr) as bar:
        rows = build_records(base, num_constraints=k, seed=args.seed, allowed=allowed, index=index, stats=stats,
                             progress=bar)
        write_jsonl_atomic(args.output, rows, overwrite=args.overwrite)
    result = {"output": args.output, **stats.as_dict()}
    if index is not None:
        result["decontaminated_against"] = args.decontaminate_against or "IFEval (541 prompts, shipped copy)"
        result["ngram"] = args.ngram
    print(json.dumps(result, indent=2))
    return 0


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for item in (values or []) for v in item.split(",") if v.strip()]


def add_build(sub) -> None:
    from uniapl.data.decontaminate import DEFAULT_NGRAM

    b = sub.add_parser("build", help="IFEval-style constraint prompts from plain prompts: "
                                     "uniapl data build BASE --output OUT.jsonl --num-constraints K --seed S",
                       description="Append K mutually compatible IFEval instructions (kwargs drawn as IFEval's "
                                   "generator draws them) to every base prompt; write IFEval-layout JSONL.")
    b.add_argument("base", help="base prompts: .jsonl / .json / .txt (one prompt a line), a save_to_disk dataset "
                                "dir or a hub dataset id")
    b.add_argument("--output", required=True, help="JSONL to write (key, prompt, instruction_id_list, kwargs, base_prompt)")
    b.add_argument("--num-constraints", default="3", help="K constraints per prompt, or a range MIN-MAX (default 3)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--field", default="prompt", help="the prompt field of a JSON/dataset row (default: prompt)")
    b.add_argument("--key-field", default="key", help="the key field, kept if present (default: key; else the row index)")
    b.add_argument("--split", default="train", help="dataset split (datasets only)")
    b.add_argument("--name", default=None, help="dataset config name (hub datasets only)")
    b.add_argument("--instructions", action="append", default=None,
                   help="draw only these ids or categories (comma-separated, e.g. detectable_format:,punctuation:no_comma)")
    b.add_argument("--exclude", action="append", default=None, help="never draw these ids or categories")
    b.add_argument("--decontaminate", action="store_true",
                   help="drop base prompts sharing a word n-gram with IFEval's 541 prompts (shipped copy)")
    b.add_argument("--decontaminate-against", default=None,
                   help="decontaminate against this JSONL (field 'prompt') or .txt file instead (implies --decontaminate)")
    b.add_argument("--ngram", type=int, default=DEFAULT_NGRAM, help=f"n-gram size for decontamination (default {DEFAULT_NGRAM})")
    b.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=build)


def add_teacher(sub) -> None:
    from uniapl.data.teacher import add_teacher_parser

    add_teacher_parser(sub)


SUBCOMMANDS = [add_build, add_teacher]


def _guarded(func):
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args) or 0)
        except DataError as e:
            print(f"uniapl data {args.data_command}: error: {e}", file=sys.stderr)
            return 2

    return run


def add_data_commands(subparsers) -> None:
    """Add ``uniapl data <subcommand>`` for every entry of `SUBCOMMANDS`."""
    p = subparsers.add_parser("data", help="build training data: uniapl data build | teacher ...")
    sub = p.add_subparsers(dest="data_command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    for action in sub.choices.values():
        func = action.get_default("func")
        if func is not None:
            action.set_defaults(func=_guarded(func))


add_subparser = add_data_commands  # the name uniapl.cli looks for


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="uniapl")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
