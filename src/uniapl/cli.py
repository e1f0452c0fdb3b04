"""The `uniapl` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback


def _train(args: argparse.Namespace) -> int:
    from uniapl.config import load_config
    from uniapl.training.run import run_training

    overrides = list(args.overrides)
    cfg = load_config(args.config, overrides)
    summary = run_training(cfg)
    ev = summary["eval"]
    print(json.dumps({"output_dir": summary["output_dir"], "wall_seconds": summary["wall_seconds"],
                      "steps": summary["steps"], "eval_before": ev["before"], "eval_after": ev["after"]}, indent=2))
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from uniapl.experiment.runner import main as run_main

    return run_main(args.config, list(args.overrides))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="uniapl", description="Unified Adversarial Preference Learning for language models",
                                epilog="--debug (anywhere): also print the traceback of a user error (exit status 2)")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model: uniapl train CONFIG [key=value ...]")
    t.add_argument("config", help="YAML config file (see configs/)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=50 output_dir=runs/x resume=true")
    t.set_defaults(func=_train)
    e = sub.add_parser("experiment", help="run a matrix of methods x seeds x swept values, then the paper's table and "
                                          "figures: uniapl experiment CONFIG [key=value ...]")
    e.add_argument("config", help="experiment YAML (see configs/experiments/)")
    e.add_argument("overrides", nargs="*", help="dotted overrides, e.g. output_dir=runs/exp seeds=[0] "
                                                "select=[sft,grpo] overrides.train.sft_batch_size=4")
    e.set_defaults(func=_experiment)
    for mod in ("uniapl.verifiers.cli", "uniapl.discriminators.cli", "uniapl.data.cli", "uniapl.evaluation.cli", "uniapl.models.convert"):
        try:
            module = __import__(mod, fromlist=["add_subparser"])
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            continue
        module.add_subparser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a command. A user's mistake (`uniapl.infra.errors.UserError`: a config key, a data line, a path, a
    server) is one line on stderr and exit status 2; `--debug` (anywhere on the line) or UNIAPL_DEBUG=1
    also prints its traceback. Any other exception is a bug and keeps its traceback."""
    from uniapl.infra.errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("UNIAPL_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        if debug:
            traceback.print_exc()
        print(f"uniapl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"uniapl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
