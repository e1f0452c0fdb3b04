"""Time of every IFEval checker on long responses of several shapes, at growing sizes (linear or not?).

    python benchmarks/ifeval_long_responses.py --sizes 250000 500000 1000000

Prints one row per (shape, checker) whose largest size took over 0.2 s, with the time at each size and the
ratio of the last two (a linear checker's ratio is near the size ratio, 2 by default), and whether any
verdict came back with a checker error (e.g. a time limit). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "verifiers"))

SHAPES = {
    "prose": lambda n: ("The quick brown fox jumps over the lazy dog. " * (n // 45 + 1))[:n],
    "markup": lambda n: "".join(random.Random(0).choice("ab *-\n.[]<>P.S,\"'()`:;!?") for _ in range(n)),
    "abbreviations": lambda n: "Mr. A. B. " * (n // 10),
    "one_word": lambda n: "a" * n,
    "dashes": lambda n: "--" * (n // 2),
    "quotes": lambda n: "'\"`" * (n // 3),
}


def main() -> None:
    from test_fuzz import KWARGS  # one valid kwargs per instruction id

    from uniapl.verifiers import text as T
    from uniapl.verifiers import verify

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[250_000, 500_000])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    args = ap.parse_args()
    T.split_sentences("Warm. Up.")
    out = []
    for shape in args.shapes:
        for iid, kw in KWARGS.items():
            times, errors = [], {}
            for n in args.sizes:
                text = SHAPES[shape](n)
                T.clear_caches()
                t0 = time.perf_counter()
                v = verify(text, [iid], [kw], prompt="Write about tea.")
                times.append(time.perf_counter() - t0)
                errors.update(v.errors)
            if times[-1] > 0.2 or errors:
                ratio = times[-1] / max(times[-2], 1e-9) if len(times) > 1 else None
                row = {"shape": shape, "checker": iid, "seconds": [round(t, 3) for t in times],
                       "ratio": round(ratio, 2) if ratio else None, "errors": bool(errors)}
                out.append(row)
                print(f"{shape:14s} {iid:45s} " + "  ".join(f"{s:>8.2f}s" for s in times)
                      + f"  ratio {row['ratio']}" + ("  ERRORS" if errors else ""), flush=True)
    print(json.dumps({"sizes": args.sizes, "rows": out}))


if __name__ == "__main__":
    main()
