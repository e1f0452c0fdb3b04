"""Evaluation: held-out instruction following with the IFEval checkers (`ifeval.py`, eval.before/after of
every stage), general capability through lm-evaluation-harness (`general.py`, `uniapl eval general`, and
eval.general after training), and the `uniapl eval` command (`cli.py`)."""
