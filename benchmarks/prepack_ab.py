"""The built-in engine with and without pre-packed decode weights, interleaved in one process.

    OMP_NUM_THREADS=2 python benchmarks/prepack_ab.py --model DIR [--threads 2] [--pairs 6] [--prompts 8]
        [--samples 4] [--new-tokens 64]

The same prompts and sampling settings as benchmarks/rollout_engines.py (chat-templated IFEval prompts, G
samples each, a fixed number of new tokens, EOS ignored), through two `KVCacheEngine`s on one model that
differ only in `prepack` (True / False) and decode with --threads threads. Each pair runs both, in
alternating order, so that a slow stretch of a shared machine hits both alike; the CPU time stolen by other
virtual machines during each run (`/proc/stat` steal) is printed with it. Prints every pair; the last line
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rollout_engines import IFEVAL, load_prompts  # noqa: E402


def stolen_s() -> float | None:
    try:
        with open("/proc/stat") as f:
            return int(f.readline().split()[8]) / 100.0  # USER_HZ ticks
    except (OSError, IndexError, ValueError):
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a Hugging Face model folder")
    ap.add_argument("--data", default=str(IFEVAL), help="IFEval input_data.jsonl")
    ap.add_argument("--threads", type=int, default=2, help="decode threads of both engines")
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    if min(args.threads, args.pairs, args.prompts, args.samples, args.new_tokens) < 1:
        ap.error("--threads, --pairs, --prompts, --samples and --new-tokens must be >= 1")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from uniapl.rollout import EngineOptions, SamplingParams, build_engine

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    prompts = load_prompts(tok, Path(args.data), args.prompts)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    n_tokens = len(prompts) * args.samples * args.new_tokens
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, num_samples=args.samples, seed=0)
    engines = {name: build_engine("hf", model=model, eos_token_ids=[], pad_token_id=pad,
                                  options=EngineOptions(decode_threads=args.threads, prepack=packed))
               for name, packed in (("packed", True), ("unpacked", False))}
    for eng in engines.values():  # warm-up
        eng.generate(prompts, SamplingParams(max_new_tokens=4, temperature=1.0, num_samples=args.samples, seed=1))
    tps: dict[str, list[float]] = {k: [] for k in engines}
    steal: dict[str, list[float | None]] = {k: [] for k in engines}
    print(f"{len(prompts)} prompts x {args.samples} samples x {args.new_tokens} tokens, {args.threads} thread(s)")
    print(f"{'pair':>4} {'packed tok/s':>13} {'unpacked tok/s':>15} {'ratio':>6} {'stolen s (packed, unpacked)':>28}")
    for i in range(args.pairs):
        for name in (list(engines) if i % 2 == 0 else list(engines)[::-1]):
            s0, t0 = stolen_s(), time.perf_counter()
            engines[name].generate(prompts, params)
            dt, s1 = time.perf_counter() - t0, stolen_s()
            tps[name].append(round(n_tokens / dt, 2))
            steal[name].append(None if s0 is None or s1 is None else round(s1 - s0, 2))
        print(f"{i:>4} {tps['packed'][-1]:>13.1f} {tps['unpacked'][-1]:>15.1f} "
              f"{tps['packed'][-1] / tps['unpacked'][-1]:>5.2f}x {str((steal['packed'][-1], steal['unpacked'][-1])):>28}")
    med = {k: statistics.median(v) for k, v in tps.items()}
    print(f"median: packed {med['packed']:.1f}, unpacked {med['unpacked']:.1f} tokens/s "
          f"({med['packed'] / med['unpacked']:.2f}x)")
    print(json.dumps({"benchmark": "prepack_ab", "model": str(args.model), "threads": args.threads,
                      "tokens_per_s_median": med, "tokens_per_s_runs": tps, "stolen_s": steal,
                      "paired_ratios": [round(a / b, 3) for a, b in zip(tps["packed"], tps["unpacked"])]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
