"""Peak memory and time of uniapl's chunked log-prob computation against the naive one, large vocabulary.

    python benchmarks/logprob_memory.py [--batch 8] [--seq 256] [--vocab 151936] [--hidden 256] [--layers 2]
        [--device cpu|cuda] [--repeats 3] [--entropy]

Both compute the log-probs of `seq` completion tokens per row (after a short prompt) with a Qwen3-shaped model
(randomly initialised; Qwen3's vocabulary of 151,936 by default), then back-propagate a weighted sum of them:
    chunked  uniapl.models.logprobs.completion_logprobs (decoder once; LM head + float32 log-softmax over row chunks,
             each chunk recomputed in the backward pass)
    naive    model(...).logits -> log_softmax over [B, T, V] in float32 -> gather -> backward
Each variant runs in a fresh subprocess. Peak memory = the highest resident set size during forward+backward
minus the resident size just before it (CPU: /proc/self/status VmHWM after resetting it through
/proc/self/clear_refs), or torch.cuda.max_memory_allocated minus the memory allocated before (CUDA).
The naive variant needs about 3 * B * T * V * 4 bytes: 8 x 256 tokens is ~3.7 GB; the issue's 8 x 2048 is ~30 GB
(run that on a machine with the memory: --seq 2048). Prints a table; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MIB = 2**20


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(args) -> dict:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from uniapl.models.logprobs import completion_logprobs

    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = Qwen3Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=3 * args.hidden,
                      num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                      num_key_value_heads=max(1, args.hidden // 128), head_dim=64,
                      max_position_embeddings=args.prompt + args.seq + 8, tie_word_embeddings=True)
    model = Qwen3ForCausalLM(cfg).to(device)
    b, t = args.batch, args.seq
    ids = torch.randint(0, args.vocab, (b, args.prompt + t), device=device)
    attn = torch.ones_like(ids)
    weights = torch.randn(b, t, device=device)

    def chunked():
        out = completion_logprobs(model, ids, attn, t, return_entropy=args.entropy,
                                   chunk_rows=args.chunk_rows or None)
        lp = out[0] + 0.01 * out[1] if args.entropy else out
        return lp

    def naive():
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=t + 1,
                       use_cache=False).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1)
        lp = logp.gather(-1, ids[:, -t:, None]).squeeze(-1)
        if args.entropy:
            lp = lp + 0.01 * -(logp.exp() * logp).sum(-1)
        return lp

    fn = chunked if args.variant == "chunked" else naive
    times, peaks = [], []
    values = None
    hwm_reset = True
    for _ in range(args.repeats):
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset VmHWM to the current resident size
            except OSError:  # some sandboxes lack it: VmHWM is then the peak since the process started
                hwm_reset = False
            base = _rss_kib("VmRSS") * 1024
        t0 = time.perf_counter()
        lp = fn()
        (lp * weights).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _rss_kib("VmHWM") * 1024
        peaks.append((peak - base) / MIB)
        values = lp.detach()[:, :64].cpu()
        del lp
    torch.save(values, args.values_out)
    return {"peak_mib": max(peaks), "time_s": statistics.median(times), "times_s": times, "hwm_reset": hwm_reset}


def run_variant(args, variant: str, values_out: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--variant", variant, "--values-out", values_out]
    for k in ("batch", "seq", "prompt", "vocab", "hidden", "layers", "device", "repeats", "chunk_rows"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    if args.entropy:
        cmd.append("--entropy")
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr or out.stdout).strip().splitlines()[-1:] or [f"exit {out.returncode}"]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256, help="completion tokens per row (scored)")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--entropy", action="store_true", help="also compute (and back-propagate) entropies")
    ap.add_argument("--chunk-rows", type=int, default=0, help="rows per chunk (0: uniapl's default, 64 MiB of logits)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="chunked", help=argparse.SUPPRESS)
    ap.add_argument("--values-out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    import atexit
    import shutil
    import tempfile

    import torch

    tmp = tempfile.mkdtemp(prefix="uniapl-lpmem-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    res = {v: run_variant(args, v, os.path.join(tmp, f"{v}.pt")) for v in ("chunked", "naive")}
    diff = None
    if all("error" not in r for r in res.values()):
        a, b = (torch.load(os.path.join(tmp, f"{v}.pt")) for v in ("chunked", "naive"))
        diff = float((a - b).abs().max())
    logits_gib = args.batch * args.seq * args.vocab * 4 / 2**30
    print(f"log-probs of {args.batch} x {args.seq} tokens, vocabulary {args.vocab:,}, hidden {args.hidden}, "
          f"{args.layers} layers, forward + backward on {args.device}{' (+ entropies)' if args.entropy else ''}; "
          f"float32 [B, T, V] logits would be {logits_gib:.2f} GiB; load {os.getloadavg()[0]:.2f}")
    print(f"{'variant':<10}{'peak MiB':>12}{'median s':>11}")
    for v, r in res.items():
        if "error" in r:
            print(f"{v:<10}{'failed: ' + ' '.join(r['error']):>23}")
        else:
            print(f"{v:<10}{r['peak_mib']:>12.1f}{r['time_s']:>11.3f}")
    ok = all("error" not in r for r in res.values())
    ratio = res["chunked"]["peak_mib"] / res["naive"]["peak_mib"] if ok else None
    if ok:
        print(f"ratio (chunked / naive peak): {ratio:.3f}; max |log-prob difference|: {diff:.2e}")
    print(json.dumps({
        "benchmark": "logprob_memory",
        "peak_mib": res["chunked"].get("peak_mib"), "naive_peak_mib": res["naive"].get("peak_mib"),
        "ratio": None if ratio is None else round(ratio, 4),
        "time_s": res["chunked"].get("time_s"), "naive_time_s": res["naive"].get("time_s"),
        "max_abs_diff": diff, "batch": args.batch, "seq": args.seq, "vocab": args.vocab, "hidden": args.hidden,
        "layers": args.layers, "device": args.device, "entropy": args.entropy, "chunk_rows": args.chunk_rows or None,
        "errors": {v: r["error"] for v, r in res.items() if "error" in r} or None,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
