"""Records scored per second (strict + loose) on IFEval's GPT-4 responses.

    python benchmarks/ifeval_throughput.py [--data DIR] [--repeats 3] [--workers 0] [--json]

Modes:
  cold     caches cleared before each pass: every record analysed from scratch (what a training step
           with new rollouts sees)
  warm     the same records again with caches kept (re-scoring identical text)
  naive    the reference's way, for comparison: each instruction re-checked on all 8 loose variants,
           no de-duplication, no strict short-cut, no cache
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def _find_data() -> Path:
    for base in [Path.cwd(), *Path(__file__).resolve().parents]:
        d = base / "shared" / "data" / "ifeval"
        if d.is_dir():
            return d
    raise SystemExit("shared/data/ifeval not found; pass --data")


def _load(data: Path):
    inputs = {}
    for line in (data / "input_data.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        inputs[r["key"]] = r
    out = []
    for line in (data / "gpt4_responses.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        spec = inputs[r["key"]]
        out.append((r["response"], spec["instruction_id_list"], spec["kwargs"], spec["prompt"]))
    return out


def _naive(records):
    from uniapl.verifiers import get_checker
    from uniapl.verifiers.registry import normalize_kwargs
    from uniapl.verifiers.text import clear_caches

    for response, ids, kwargs_list, _ in records:
        lines = response.split("\n")
        first, last, both = "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()
        variants = [response, response.replace("*", ""), first, last, both,
                    first.replace("*", ""), last.replace("*", ""), both.replace("*", "")]
        for iid, kw in zip(ids, kwargs_list):
            check, kw = get_checker(iid), normalize_kwargs(kw)
            clear_caches()
            _ = bool(response.strip()) and check(response, **kw)
            for v in variants:
                clear_caches()
                if v.strip() and check(v, **kw):
                    break


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0, help="processes for verify_many (0: in-process)")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    from uniapl.verifiers import verify, verify_many
    from uniapl.verifiers.text import clear_caches, count_sentences, detect_language

    count_sentences("Warm up. The tokenizer.")
    detect_language("warm up the language profiles")
    import_s = time.perf_counter() - t0
    records = _load(args.data or _find_data())
    n = len(records)
    n_inst = sum(len(r[1]) for r in records)

    def run_pass():
        if args.workers > 1:
            verify_many([r[0] for r in records], [r[1] for r in records], [r[2] for r in records],
                        [r[3] for r in records], workers=args.workers)
        else:
            for response, ids, kw, prompt in records:
                verify(response, ids, kw, prompt)

    results = {}
    cold = []
    for _ in range(args.repeats):
        clear_caches()
        t = time.perf_counter()
        run_pass()
        cold.append(time.perf_counter() - t)
    warm = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        run_pass()
        warm.append(time.perf_counter() - t)
    results["cold"] = min(cold)
    results["warm"] = min(warm)
    if not args.skip_naive:
        t = time.perf_counter()
        _naive(records)
        results["naive"] = time.perf_counter() - t

    report = {
        "records": n,
        "instructions": n_inst,
        "workers": args.workers,
        "import_and_warmup_s": round(import_s, 3),
        **{f"{k}_records_per_s": round(n / v, 1) for k, v in results.items()},
        **{f"{k}_ms_per_record": round(1000 * v / n, 3) for k, v in results.items()},
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"IFEval scoring throughput, strict + loose, {n} GPT-4 responses ({n_inst} instructions)")
        for k in results:
            print(f"  {k:<6} {report[f'{k}_records_per_s']:>9.1f} records/s  ({report[f'{k}_ms_per_record']:.3f} ms/record)")
        if "naive" in results:
            print(f"  sharing the loose work: {results['naive'] / results['cold']:.1f}x faster than the naive loop (cold)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
