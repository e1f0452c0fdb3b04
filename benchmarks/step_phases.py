"""Where the time of a uniapl training step goes: rollout, reward, discriminator, forward/backward, optimiser.

    OMP_NUM_THREADS=1 python benchmarks/step_phases.py [--algorithm unified] [--steps 5] [--warmup 1]
        [--max-new-tokens 64] [--set key=value ...]   (config overrides, as on the `uniapl train` command line)

Runs real `Trainer.step()` calls on the quickstart setting (configs/quickstart.yaml without its warm-up
stage: the tiny Qwen3 built from config and randomly initialised, 8 SFT + 8 preference prompts, 4 samples per
preference prompt; 64 new tokens, the issue's setting, unless --max-new-tokens says otherwise) and times each
phase from the `time/*_s` metrics the trainer reports for every step (`uniapl.infra.timing.timed`):

    rollout         time/rollout_s: weight sync + engine.generate (every rollout of the step, one call)
    reward          time/reward_s: the verifiable rewards
    discriminator   time/discriminator_s: discriminator.coefficients + discriminator.update
    ref/old logp    time/ref_old_logprobs_s: no-grad log-probs (reference model, num_iterations > 1, DPO/KTO)
    forward/backward  time/update_s - time/optimizer_s: the update loop (policy forward, losses, backward)
    optimiser       time/optimizer_s: grad clipping, optimizer.step, scheduler.step
    other           the rest of the step (decoding texts, packing tensors, metrics)

Prints a table of mean seconds and percent of the step; the last line is one JSON object.
This file also holds the setup that benchmarks/grpo_step.py shares.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
PHASES = ("rollout", "reward", "discriminator", "ref_old_logprobs", "forward_backward", "optimiser", "other")


class Setup:
    """The quickstart model (random init), tokenizer and data, built once and copied for every trainer."""

    def __init__(self, overrides: list[str] = ()):
        from uniapl.config import load_config
        from uniapl.models.loading import eos_token_ids
        from uniapl.models.loading import build_policy
        from uniapl.training.validation import stage_records

        self.tmp = tempfile.mkdtemp(prefix="uniapl-bench-")
        atexit.register(shutil.rmtree, self.tmp, ignore_errors=True)
        self.overrides = ["stages=[]", f"output_dir={self.tmp}", "logging.progress=false", *overrides]
        self.cfg = load_config(QUICKSTART, self.overrides)
        torch.manual_seed(self.cfg.seed)
        self.model, self.tokenizer = build_policy(self.cfg, None)
        self.init_state = copy.deepcopy(self.model.state_dict())
        self.eos = eos_token_ids(self.model, self.tokenizer)
        self.records = {}
        for algo in ("grpo", "unified"):
            sft, pref, _ = stage_records(self.config(algo))
            self.records[algo] = (sft, pref)
        warm_up_checkers([r for _, pref in self.records.values() for r in pref])

    def config(self, algorithm: str):
        from uniapl.config import load_config

        return load_config(QUICKSTART, self.overrides + [f"algorithm={algorithm}"])

    def fresh_model(self):
        m = copy.deepcopy(self.model)
        m.load_state_dict(self.init_state)
        return m

    def trainer(self, algorithm: str):
        from accelerate import Accelerator

        from uniapl.training.trainer import Trainer

        cfg = self.config(algorithm)
        sft, pref = self.records[algorithm]
        acc = Accelerator(cpu=True)
        return Trainer(cfg, acc, self.fresh_model(), self.tokenizer, sft_records=sft, pref_records=pref,
                       stage_dir=Path(self.tmp) / algorithm, eos_ids=self.eos)


def warm_up_checkers(records) -> None:
    """Run every instruction checker once: some load models lazily (language detection: ~0.5 s on first use),
    a one-off cost per process that would otherwise land in whichever measured step meets it first."""
    from uniapl.verifiers import verify

    seen = set()
    for r in records:
        key = tuple(r.instruction_id_list)
        if key not in seen:
            seen.add(key)
            for text in ("this is a short answer in plain english, written in lowercase letters only.",
                         "This Is A Short Answer. P.S. Another Line."):
                verify(text, r.instruction_id_list, r.kwargs, prompt=r.prompt_text())


class PhaseTimer:
    """Times each phase of a trainer's steps from the `time/*_s` metrics the step reports; `rollout_shapes` and
    `policy_calls` record the shapes the step ran (benchmarks/grpo_step.py builds its lower bound from them)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.rollout_shapes: list[tuple[int, int, int]] = []  # (rows, prompt width, completion width)
        self.policy_calls: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # (ids, attn, n_completion)
        engine, policy = trainer.engine, trainer.policy
        generate, forward = engine.generate, policy.forward

        def recorded_generate(*a, **k):
            batch = generate(*a, **k)
            self.rollout_shapes.append((batch.completion_ids.shape[0], batch.prompt_ids.shape[1],
                                        batch.completion_ids.shape[1]))
            return batch

        def recorded_forward(ids, attn, n_completion, *a, **k):
            self.policy_calls.append((ids.detach().clone(), attn.detach().clone(), int(n_completion)))
            return forward(ids, attn, n_completion, *a, **k)

        engine.generate = recorded_generate
        policy.forward = recorded_forward

    def step(self) -> dict[str, float]:
        """One trainer step; returns seconds per phase (+ 'step')."""
        self.rollout_shapes, self.policy_calls = [], []
        t0 = time.perf_counter()
        m = self.trainer.step()
        total = time.perf_counter() - t0
        t = lambda name: m.get(f"time/{name}_s", 0.0)  # noqa: E731
        out = {"rollout": t("rollout"), "reward": t("reward"), "discriminator": t("discriminator"),
               "ref_old_logprobs": t("ref_old_logprobs"), "forward_backward": max(t("update") - t("optimizer"), 0.0),
               "optimiser": t("optimizer")}
        out["other"] = max(total - sum(out.values()), 0.0)
        out["step"] = total
        return out


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f} (1 min) {five:.2f} (5 min) on {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


@contextmanager
def quiet():
    import logging
    import warnings

    logging.getLogger("transformers").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def phase_table(rows: list[dict[str, float]]) -> tuple[str, dict[str, dict[str, float]]]:
    mean = {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}
    lines = [f"{'phase':<18}{'mean s':>10}{'% of step':>11}"]
    summary = {}
    for p in (*PHASES, "step"):
        pct = 100.0 * mean[p] / mean["step"] if mean["step"] else 0.0
        summary[p] = {"mean_s": round(mean[p], 4), "pct": round(pct, 1)}
        if p == "step" or mean[p] > 0:
            lines.append(f"{p:<18}{mean[p]:>10.4f}{pct:>10.1f}%")
    return "\n".join(lines), summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--algorithm", default="unified")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    with quiet():
        setup = Setup([f"rollout.max_new_tokens={args.max_new_tokens}", *args.overrides])
        timer = PhaseTimer(setup.trainer(args.algorithm))
        for _ in range(args.warmup):
            timer.step()
        rows = [timer.step() for _ in range(args.steps)]
    table, summary = phase_table(rows)
    shapes = timer.rollout_shapes[-1] if timer.rollout_shapes else None
    print(f"uniapl {args.algorithm} step, quickstart model ({sum(p.numel() for p in setup.model.parameters()):,} "
          f"parameters), {args.steps} steps after {args.warmup} warm-up; {load_note()}")
    if shapes:
        print(f"rollout batch: {shapes[0]} rows, prompt width {shapes[1]}, completion width {shapes[2]}")
    print(table)
    print(json.dumps({"benchmark": "step_phases", "algorithm": args.algorithm, "steps": args.steps,
                      "phases": summary, "torch_threads": torch.get_num_threads(), "load_1min": os.getloadavg()[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
