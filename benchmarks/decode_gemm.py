"""The decode step's matrix products: PyTorch's default (MKL sgemm) against oneDNN with pre-packed weights.

    python benchmarks/decode_gemm.py --model DIR [--rows 32] [--threads 1,2] [--repeats 200]

DIR is a Hugging Face model folder (only its config.json is read: the weights are random, the shapes are the
model's). For each distinct linear shape of one decoder layer and for the vocabulary projection, it times
`F.linear(x [rows, in], W)` and `PackedLinear(W, rows)(x)` (`uniapl.rollout.packed_linear`, what the
built-in engine uses with `rollout.builtin.prepack`) at each thread count, after a warm-up, in float32 under
inference mode. Prints a table (microseconds per product, GFLOP/s); the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F


def per_call_us(fn, repeats: int) -> float:
    for _ in range(max(3, repeats // 20)):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1e6


def shapes(cfg) -> dict[str, tuple[int, int]]:
    """name -> (in_features, out_features) of the decode step's linear layers (Llama-like layouts)."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    hd = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    kv = (getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads) * hd
    return {"q_proj": (h, cfg.num_attention_heads * hd), "k_proj/v_proj": (h, kv),
            "o_proj": (cfg.num_attention_heads * hd, h), "gate_proj/up_proj": (h, i), "down_proj": (i, h),
            "lm_head": (h, cfg.vocab_size)}


def main() -> int:
    from transformers import AutoConfig

    from uniapl.rollout.packed_linear import PackedLinear, prepack_supported

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a Hugging Face model folder (its config.json)")
    ap.add_argument("--rows", type=int, default=32, help="rows per product (sequences in the decode batch)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--repeats", type=int, default=200, help="timed products per measurement (lm_head: a tenth)")
    args = ap.parse_args()
    if not prepack_supported(torch.zeros(1)):
        ap.error("this PyTorch has no oneDNN: nothing to compare")
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        ap.error(f"--threads must be comma-separated integers, got {args.threads!r}")
    cfg = AutoConfig.from_pretrained(args.model)
    torch.manual_seed(0)
    rows, results = args.rows, []
    print(f"{args.model}: {rows} rows, float32")
    print(f"{'product':<18} {'in x out':>12} {'threads':>7} {'MKL us':>10} {'packed us':>10} {'MKL GF/s':>9} "
          f"{'packed GF/s':>11} {'speed-up':>8}")
    with torch.inference_mode():
        for name, (k, n) in shapes(cfg).items():
            lin = torch.nn.Linear(k, n, bias=False)
            x = torch.randn(rows, k)
            reps = max(5, args.repeats // 10) if name == "lm_head" else args.repeats
            for t in threads:
                torch.set_num_threads(t)
                packed = PackedLinear(lin, rows)
                mkl = per_call_us(lambda: F.linear(x, lin.weight), reps)
                pk = per_call_us(lambda: packed(x), reps)
                gf = 2 * rows * k * n / 1e3
                results.append({"product": name, "in": k, "out": n, "threads": t, "mkl_us": round(mkl, 1),
                                "packed_us": round(pk, 1)})
                print(f"{name:<18} {f'{k}x{n}':>12} {t:>7} {mkl:>10.1f} {pk:>10.1f} {gf / mkl:>9.1f} {gf / pk:>11.1f} "
                      f"{mkl / pk:>7.2f}x")
    print(json.dumps({"benchmark": "decode_gemm", "model": str(args.model), "rows": rows, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
