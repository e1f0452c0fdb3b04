"""What each rollout / log-prob optimisation is worth: every switch turned off in turn, measured interleaved.

    OMP_NUM_THREADS=1 python tests/perf/ablation.py [--repeats 7] [--part rollout|logprobs|all]

Model: the quickstart's shape (Qwen3, hidden 128, 4 layers, vocabulary 1,024; ~0.9M parameters), random init.
Rollout workload: 8 distinct prompts of 55-62 tokens x 4 samples, 64 new tokens, temperature 1 ("nominal").
Two more workloads isolate two effects: "early_eos" (12 end tokens: rows stop at different steps, for
compaction) and "peaked" (logits scaled x40 as a trained model's are: the softmax underflows to denormals).
Log-prob workload: the GRPO step's forward/backward, 32 rows of 62 prompt + 64 completion tokens.
Each variant runs `repeats` times, variants interleaved in a new random order every round; the median and
minimum CPU time (process_time, less sensitive to other processes on a shared machine than wall time) and
the median wall time are printed.
The last line is one JSON object. Numbers recorded in docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import time

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from uniapl.models.logprobs import completion_logprobs
from uniapl.rollout import EngineOptions, SamplingParams
import uniapl.rollout.engine as engine_mod
from uniapl.rollout.engine import generate
import uniapl.rollout.steppers as steppers_mod


def quickstart_like(seed: int = 0) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=1024, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
                      tie_word_embeddings=True)
    return Qwen3ForCausalLM(cfg).eval()


# ------------------------------------------------------------------------------------------- switched-off versions
def _multinomial_next_tokens(logits, *, temperature, top_k=0, top_p=1.0, uniforms=None):
    """The previous sampler: full log-softmax + torch.multinomial (one exponential draw per vocabulary entry)."""
    from uniapl.rollout.sampling import filter_logits

    if temperature <= 0:
        return logits.argmax(-1), torch.zeros(logits.shape[0])
    z = logits / temperature
    logp = torch.log_softmax(z, -1)
    tok = torch.multinomial(torch.softmax(filter_logits(z, top_k, top_p), -1), 1).squeeze(-1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


@contextlib.contextmanager
def patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


class _NoInference:
    """torch.inference_mode replaced by torch.no_grad."""

    def __getattr__(self, n):
        return torch.no_grad if n == "inference_mode" else getattr(torch, n)


ROLLOUT_VARIANTS = {
    "engine (all on)": lambda: (EngineOptions(), contextlib.nullcontext()),
    "dynamic cache (HF forward, concat growth)": lambda: (EngineOptions(cache="dynamic"), contextlib.nullcontext()),
    "no prompt dedup in prefill": lambda: (EngineOptions(dedup_prompts=False), contextlib.nullcontext()),
    "multinomial sampling": lambda: (EngineOptions(), patched(engine_mod, "next_tokens", _multinomial_next_tokens)),
    "unfused RMSNorm modules": lambda: (EngineOptions(), patched(steppers_mod, "_plain_rms_norm", lambda m: False)),
    "no_grad instead of inference_mode": lambda: (EngineOptions(), patched(engine_mod, "torch", _NoInference())),
    "no denormal flush": lambda: (EngineOptions(flush_denormal=False), contextlib.nullcontext()),
    "no compaction": lambda: (EngineOptions(compact_fraction=0.0), contextlib.nullcontext()),
    "torch's thread count in decode": lambda: (EngineOptions(decode_threads=0), contextlib.nullcontext()),
}


def _time(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.process_time() - c, time.perf_counter() - w


def rollout_ablation(repeats: int) -> dict:
    model = quickstart_like()
    prompts = [list(range(10 + i, 10 + i + 55 + i)) for i in range(8)]
    params = SamplingParams(max_new_tokens=64, num_samples=4, seed=0)
    peaked = quickstart_like()
    with torch.no_grad():
        peaked.model.norm.weight.mul_(40.0)
    workloads = {"nominal": (model, [2]), "early_eos": (model, list(range(100, 112))), "peaked": (peaked, [2])}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for wname, (m, eos) in workloads.items():
        names = list(ROLLOUT_VARIANTS) if wname == "nominal" else (
            ["engine (all on)", "no compaction"] if wname == "early_eos" else
            ["engine (all on)", "no denormal flush", "multinomial sampling"])
        runs: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        lengths = None
        order = random.Random(0)
        for r in range(repeats + 1):
            for n in order.sample(names, len(names)):  # a new order every round: no variant always runs first
                opts, ctx = ROLLOUT_VARIANTS[n]()
                with ctx:
                    res = {}
                    t = _time(lambda: res.setdefault("b", generate(m, prompts, params, eos_token_ids=eos,
                                                                     pad_token_id=0, options=opts)))
                if r:  # the first round warms up
                    runs[n].append(t)
                lengths = res["b"].completion_mask.sum(-1).float().mean().item()
        out[wname] = {n: _summary(v) for n, v in runs.items()}
        out[wname]["_mean_completion_length"] = {"tokens": lengths}
    return out


# ------------------------------------------------------------------------------------------- log-probs
def _checkpointed_chunks(model, ids, attn, t, chunk_rows=512):
    """The previous log-prob path: decoder once, LM head + log-softmax per 512-row chunk under checkpoint()."""
    from torch.utils.checkpoint import checkpoint

    def head_lp(h, w, y):
        logits = torch.nn.functional.linear(h, w).float()
        return logits.gather(-1, y[:, None]).squeeze(-1) - torch.logsumexp(logits, -1)

    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    hidden = model.get_decoder()(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state
    flat = hidden[:, -t - 1 : -1].reshape(-1, hidden.shape[-1])
    y = ids[:, -t:].reshape(-1)
    w = model.get_output_embeddings().weight
    return torch.cat([checkpoint(head_lp, flat[s : s + chunk_rows], w, y[s : s + chunk_rows], use_reentrant=False)
                      for s in range(0, flat.shape[0], chunk_rows)]).view(ids.shape[0], t)


def _naive(model, ids, attn, t):
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=t + 1).logits[:, :-1]
    return torch.log_softmax(logits.float(), -1).gather(-1, ids[:, -t:, None]).squeeze(-1)


LOGPROB_VARIANTS = {
    "uniapl (shared prompts + chunked head)": lambda m, i, a, t: completion_logprobs(m, i, a, t),
    "no prompt sharing": lambda m, i, a, t: completion_logprobs(m, i, a, t, share_prompts=False),
    "previous: checkpointed chunks": _checkpointed_chunks,
    "naive log_softmax": _naive,
}


def logprob_ablation(repeats: int) -> dict:
    model = quickstart_like().train()
    torch.manual_seed(1)
    g, p, t = 4, 62, 64
    prompts = torch.randint(3, 1000, (8, p))
    pmask = torch.ones_like(prompts)
    for i in range(8):
        pmask[i, : 7 - i] = 0
    ids = torch.cat([prompts.repeat_interleave(g, 0), torch.randint(3, 1000, (8 * g, t))], 1)
    attn = torch.cat([pmask.repeat_interleave(g, 0), torch.ones(8 * g, t, dtype=torch.long)], 1)
    w = torch.randn(8 * g, t)
    runs: dict[str, list[tuple[float, float]]] = {n: [] for n in LOGPROB_VARIANTS}
    order = random.Random(0)
    for r in range(repeats + 1):
        for n in order.sample(list(LOGPROB_VARIANTS), len(LOGPROB_VARIANTS)):
            fn = LOGPROB_VARIANTS[n]
            model.zero_grad(set_to_none=True)
            tt = _time(lambda: (fn(model, ids, attn, t) * w).sum().backward())
            if r:
                runs[n].append(tt)
    return {n: _summary(v) for n, v in runs.items()}


def _summary(v: list[tuple[float, float]]) -> dict[str, float]:
    return {"cpu_s": statistics.median(x[0] for x in v), "cpu_min_s": min(x[0] for x in v),
            "wall_s": statistics.median(x[1] for x in v)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--part", default="all", choices=("rollout", "logprobs", "all"))
    args = ap.parse_args(argv)
    res: dict = {"torch_threads": torch.get_num_threads(), "load_before": os.getloadavg()[0]}
    if args.part in ("rollout", "all"):
        res["rollout"] = rollout_ablation(args.repeats)
        for wname, rows in res["rollout"].items():
            print(f"\nrollout, {wname} workload (mean completion length "
                  f"{rows['_mean_completion_length']['tokens']:.1f} tokens)")
            base = rows["engine (all on)"]["cpu_s"]
            for n, v in rows.items():
                if not n.startswith("_"):
                    print(f"  {n:<44} cpu median {v['cpu_s']:.4f} s (x{v['cpu_s'] / base:.2f})  "
                          f"min {v['cpu_min_s']:.4f} s  wall median {v['wall_s']:.4f} s")
    if args.part in ("logprobs", "all"):
        res["logprobs"] = logprob_ablation(args.repeats)
        print("\nlog-probs forward+backward, 32 rows x (62 + 64) tokens")
        base = res["logprobs"]["uniapl (shared prompts + chunked head)"]["cpu_s"]
        for n, v in res["logprobs"].items():
            print(f"  {n:<44} cpu median {v['cpu_s']:.4f} s (x{v['cpu_s'] / base:.2f})  "
                  f"min {v['cpu_min_s']:.4f} s  wall median {v['wall_s']:.4f} s")
    res["load_after"] = os.getloadavg()[0]
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
