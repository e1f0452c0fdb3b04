"""uniapl's GRPO and unified step time beside the lower bound and beside TRL's GRPOTrainer, on the CPU.

    OMP_NUM_THREADS=1 python benchmarks/grpo_step.py [--steps 5] [--warmup 1] [--trl-steps 3] [--no-trl]
        [--max-new-tokens 64] [--set key=value ...]

Setting (default): the quickstart model (configs/quickstart.yaml: a tiny Qwen3 built from config, randomly
initialised, with its locally trained tokenizer) and data, 8 preference prompts x 4 samples, 64 new tokens,
temperature 1, no KL reference; the unified step adds 8 SFT prompts (8 expert sequences + 8 student rollouts
for the adversarial term, lexical discriminator).

Measured, after warm-up steps:
  uniapl_{grpo,unified}_step_s  mean wall time of `Trainer.step()` (rollout, rewards, discriminator,
                                forward/backward, optimiser: everything)
  lower_bound_s                 right after each grpo step, on the same shapes: one KV-cached decode forward per
                                generated token over the step's rollout batch (prompt cache prefilled, not
                                timed; the faster of transformers' StaticCache forward and uniapl's static-cache
                                decode step) + one forward/backward of the model over each batch the step trained on
                                (logits of the completion positions summed, no loss). Nothing else.
                                `lower_bound_unified_s` is the same for the unified step's shapes.
  trl_grpo_step_s               TRL GRPOTrainer on the same model (same initial weights), prompts, reward function,
                                group size, batch and lengths; fp32, no gradient checkpointing, beta 0, one
                                iteration, no vLLM; the faster of its two generation caches (dynamic / static)
                                found in docs/performance.md (--trl-cache). null when TRL is not installed.
  ratio_to_lower_bound          max(grpo / lower_bound, unified / lower_bound_unified)
  ratio_to_trl                  uniapl_grpo_step_s / trl_grpo_step_s

Prints a table; the last line is one JSON object. TRL is optional (`pip install -e .[bench]`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_phases import PhaseTimer, Setup, load_note, phase_table, quiet  # noqa: E402


# ---------------------------------------------------------------------------------------------- lower bound
def _decode_static_hf(model, rows: int, prompt_width: int, steps: int) -> float:
    from transformers import StaticCache

    from uniapl.rollout.steppers import cache_kwarg

    kw = cache_kwarg(model)
    ids = torch.randint(3, model.config.vocab_size, (rows, prompt_width))
    mask = torch.ones((rows, prompt_width + steps), dtype=torch.long)
    pos = torch.arange(prompt_width)[None].expand(rows, -1)
    with torch.inference_mode():
        cache = StaticCache(config=model.config, max_cache_len=prompt_width + steps)
        model(input_ids=ids, attention_mask=mask[:, :prompt_width], position_ids=pos, logits_to_keep=1,
              use_cache=True, **{kw: cache})
        tok = ids[:, -1:]
        t0 = time.perf_counter()
        for t in range(steps):
            p = torch.full((rows, 1), prompt_width + t)
            model(input_ids=tok, attention_mask=mask[:, : prompt_width + t + 1], position_ids=p, use_cache=True,
                  **{kw: cache})
        return time.perf_counter() - t0


def _decode_static_uniapl(model, rows: int, prompt_width: int, steps: int) -> float | None:
    from uniapl.rollout.steppers import StaticKVStepper, static_kv_unsupported

    if static_kv_unsupported(model, prompt_width + steps):
        return None
    st = StaticKVStepper(model, steps)
    ids = torch.randint(3, model.config.vocab_size, (rows, prompt_width))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        st.prefill(ids, mask, torch.arange(prompt_width)[None].expand(rows, -1))
        tok = ids[:, -1]
        pos = torch.full((rows,), prompt_width)
        t0 = time.perf_counter()
        for _ in range(steps):
            st.decode(tok, pos)
            pos = pos + 1
        return time.perf_counter() - t0


def _forward_backward(model, calls) -> float:
    t0 = time.perf_counter()
    for ids, attn, n in calls:
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=n, use_cache=False).logits
        logits.float().sum().backward()
    elapsed = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    return elapsed


def lower_bound(model, timer: PhaseTimer) -> dict[str, float]:
    """The step's unavoidable model compute, on the shapes the step just ran."""
    model.eval()  # no dropout (the trainer's forward runs the same layers)
    decode_hf = decode_ours = 0.0
    for rows, prompt_width, width in timer.rollout_shapes:
        decode_hf += _decode_static_hf(model, rows, prompt_width, width)
        ours = _decode_static_uniapl(model, rows, prompt_width, width)
        decode_ours += ours if ours is not None else float("inf")
    decode = min(decode_hf, decode_ours)
    fb = _forward_backward(model, timer.policy_calls)
    return {"decode_hf_static_s": decode_hf, "decode_uniapl_static_s": decode_ours, "decode_s": decode,
            "forward_backward_s": fb, "lower_bound_s": decode + fb}


def run_uniapl(setup: Setup, algorithm: str, steps: int, warmup: int):
    timer = PhaseTimer(setup.trainer(algorithm))
    lb_model = setup.fresh_model()
    for _ in range(warmup):
        timer.step()
        lower_bound(lb_model, timer)
    phases, bounds = [], []
    for _ in range(steps):
        phases.append(timer.step())
        bounds.append(lower_bound(lb_model, timer))
    return phases, bounds, timer.rollout_shapes[-1]


# ---------------------------------------------------------------------------------------------- TRL
def run_trl(setup: Setup, steps: int, warmup: int, cache: str) -> tuple[list[float] | None, str]:
    if importlib.util.find_spec("trl") is None:
        return None, "TRL is not installed (pip install -e .[bench]); trl_grpo_step_s is null"
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from uniapl.verifiers import verifiable_reward, verify

    cfg = setup.config("grpo")
    _, pref = setup.records["grpo"]
    rc = cfg.rollout
    ds = Dataset.from_list([{"prompt": r.messages(), "idx": i} for i, r in enumerate(pref)])

    def reward(prompts, completions, idx, **_):
        out = []
        for c, i in zip(completions, idx):
            text = c[0]["content"] if isinstance(c, list) else c
            r = pref[i]
            out.append(verifiable_reward(verify(text, r.instruction_id_list, r.kwargs, prompt=r.prompt_text()),
                                         mode=cfg.reward.mode, partial=cfg.reward.partial))
        return out

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    batch = cfg.train.pref_batch_size * rc.num_generations
    args = GRPOConfig(
        output_dir=os.path.join(setup.tmp, "trl"), per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        num_generations=rc.num_generations, max_completion_length=rc.max_new_tokens, temperature=rc.temperature,
        top_p=rc.top_p, top_k=rc.top_k or None, learning_rate=cfg.train.learning_rate, beta=0.0, num_iterations=1,
        epsilon=cfg.loss.grpo.eps_low, epsilon_high=cfg.loss.grpo.eps_high, max_steps=warmup + steps,
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, use_vllm=False,
        cache_implementation=None if cache == "dynamic" else cache, report_to=[], save_strategy="no",
        logging_steps=10_000, disable_tqdm=True, dataloader_num_workers=0, seed=cfg.seed, log_completions=False,
        max_grad_norm=cfg.train.max_grad_norm, warmup_steps=0, lr_scheduler_type="constant",
    )
    model = setup.fresh_model()
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=ds,
                          processing_class=setup.tokenizer, callbacks=[Clock()])
    trainer.train()
    return times[warmup:], f"TRL {trl.__version__}, generation cache {cache}"


# ---------------------------------------------------------------------------------------------- report
def _mean(xs):
    return statistics.fmean(xs) if xs else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="measured uniapl steps per algorithm")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--trl-steps", type=int, default=3)
    ap.add_argument("--trl-warmup", type=int, default=1)
    ap.add_argument("--trl-cache", default="dynamic", choices=("dynamic", "static"))
    ap.add_argument("--no-trl", action="store_true")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    overrides = [f"rollout.max_new_tokens={args.max_new_tokens}", *args.overrides]
    result: dict[str, object] = {"benchmark": "grpo_step"}
    with quiet():
        setup = Setup(overrides)
        n_params = sum(p.numel() for p in setup.model.parameters())
        print(f"quickstart model: {n_params:,} parameters; {args.max_new_tokens} new tokens; {load_note()}")
        uni = {}
        for algo in ("grpo", "unified"):
            phases, bounds, shape = run_uniapl(setup, algo, args.steps, args.warmup)
            uni[algo] = (phases, bounds, shape)
            print(f"[{algo}] done; {load_note()}")
        trl_times, trl_note = (None, "skipped (--no-trl)") if args.no_trl else run_trl(
            setup, args.trl_steps, args.trl_warmup, args.trl_cache)
        print(f"[trl] {trl_note}; {load_note()}")

    print()
    print(f"{'':<34}{'grpo':>12}{'unified':>12}")
    rows = {}
    for algo in ("grpo", "unified"):
        phases, bounds, shape = uni[algo]
        step = [p["step"] for p in phases]
        rows[algo] = {
            "rollout batch (rows x prompt+new)": f"{shape[0]}x{shape[1]}+{shape[2]}",
            "uniapl step, mean s": _mean(step),
            "uniapl step, median s": statistics.median(step),
            "lower bound, mean s": _mean([b["lower_bound_s"] for b in bounds]),
            "  decode (HF StaticCache) s": _mean([b["decode_hf_static_s"] for b in bounds]),
            "  decode (uniapl static) s": _mean([b["decode_uniapl_static_s"] for b in bounds]),
            "  forward/backward s": _mean([b["forward_backward_s"] for b in bounds]),
        }
        rows[algo]["ratio to lower bound"] = rows[algo]["uniapl step, mean s"] / rows[algo]["lower bound, mean s"]
        rows[algo]["ratio, per-step median"] = statistics.median(
            p["step"] / b["lower_bound_s"] for p, b in zip(phases, bounds))
    for key in rows["grpo"]:
        g, u = rows["grpo"][key], rows["unified"][key]
        fmt = (lambda v: f"{v:>12}") if isinstance(g, str) else (lambda v: f"{v:>12.3f}")
        print(f"{key:<34}{fmt(g)}{fmt(u)}")
    trl_mean = _mean(trl_times) if trl_times else None
    print(f"{'TRL GRPOTrainer step, mean s':<34}{trl_mean if trl_mean is None else round(trl_mean, 3)!s:>12}"
          f"   ({trl_note}{'' if not trl_times else ', steps ' + ', '.join(f'{t:.2f}' for t in trl_times)})")
    for algo in ("grpo", "unified"):
        print(f"\nphases of the uniapl {algo} step:")
        print(phase_table(uni[algo][0])[0])
    ratio_lb = max(rows["grpo"]["ratio to lower bound"], rows["unified"]["ratio to lower bound"])
    result.update({
        "uniapl_grpo_step_s": round(rows["grpo"]["uniapl step, mean s"], 4),
        "uniapl_unified_step_s": round(rows["unified"]["uniapl step, mean s"], 4),
        "lower_bound_s": round(rows["grpo"]["lower bound, mean s"], 4),
        "lower_bound_unified_s": round(rows["unified"]["lower bound, mean s"], 4),
        "trl_grpo_step_s": None if trl_mean is None else round(trl_mean, 4),
        "ratio_to_lower_bound": round(ratio_lb, 3),
        "ratio_to_trl": None if trl_mean is None else round(rows["grpo"]["uniapl step, mean s"] / trl_mean, 4),
        "grpo_median_step_s": round(rows["grpo"]["uniapl step, median s"], 4),
        "unified_median_step_s": round(rows["unified"]["uniapl step, median s"], 4),
        "trl_note": trl_note, "steps": args.steps, "max_new_tokens": args.max_new_tokens,
        "torch_threads": torch.get_num_threads(), "load_1min": round(os.getloadavg()[0], 2),
    })
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
