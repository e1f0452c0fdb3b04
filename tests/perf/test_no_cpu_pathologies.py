"""Deterministic guards against the CPU pathologies the rollout engine and the log-prob path were built to avoid.

No timings here (the machines are shared and noisy): operation counts, buffer addresses, thread settings and
the tensors autograd keeps. Speed itself is measured by benchmarks/ and tests/perf/ablation.py.
"""

import collections
import os
import subprocess
import sys
import time

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import Qwen3Config, Qwen3ForCausalLM

from uniapl.models.logprobs import completion_logprobs
from uniapl.rollout import EngineOptions, SamplingParams
import uniapl.rollout.engine as engine_mod
from uniapl.rollout.engine import generate
from uniapl.rollout.steppers import StaticKVStepper

V = 97
LAYERS = 2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=128, tie_word_embeddings=True)
    return Qwen3ForCausalLM(cfg).eval()


def _op_counts(model, rows: int, new_tokens: int) -> collections.Counter:
    prompts = [[1 + i, 2, 3] for i in range(rows)]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate(model, prompts, SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=0), eos_token_ids=[],
                 pad_token_id=0)
    return collections.Counter({e.key: e.count for e in prof.key_averages() if e.key.startswith("aten::")})


def test_per_token_work_does_not_grow_with_rows_or_concatenate_the_cache(model):
    per_token = {}
    for rows in (2, 8):
        short, long = _op_counts(model, rows, 6), _op_counts(model, rows, 14)
        per_token[rows] = {k: (long[k] - short[k]) / 8 for k in long}
    # the same tensor operations per generated token whatever the batch size: no per-row Python work
    assert sum(per_token[2].values()) == sum(per_token[8].values())
    # the only concatenations per token are the two rotary half-swaps per layer: the KV cache never grows by cat
    assert per_token[8].get("aten::cat", 0) <= 2 * LAYERS


def test_static_cache_is_allocated_once(model, monkeypatch):
    seen = []
    decode = StaticKVStepper.decode

    def spy(self, tokens, pos):
        seen.append((self.k.data_ptr(), self.v.data_ptr(), self.k.shape))
        return decode(self, tokens, pos)

    monkeypatch.setattr(StaticKVStepper, "decode", spy)
    generate(model, [[1, 2, 3], [4, 5]], SamplingParams(max_new_tokens=12, temperature=1.0, num_samples=2, seed=0),
             eos_token_ids=[], pad_token_id=0, options=EngineOptions(compact_fraction=0.0))
    assert len(seen) == 11 and len(set(seen)) == 1
    assert seen[0][2][3] == 3 + 12  # room for the prompt and every new token, allocated before the first step


def test_small_model_decodes_with_one_thread_and_restores_the_setting(model, monkeypatch):
    inside = []
    decode = StaticKVStepper.decode
    monkeypatch.setattr(StaticKVStepper, "decode",
                        lambda self, t, p: (inside.append(torch.get_num_threads()), decode(self, t, p))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        generate(model, [[1, 2, 3]], SamplingParams(max_new_tokens=4, temperature=1.0, seed=0), eos_token_ids=[],
                 pad_token_id=0)
        assert set(inside) == {1} and torch.get_num_threads() == 2
        inside.clear()
        generate(model, [[1, 2, 3]], SamplingParams(max_new_tokens=4, temperature=1.0, seed=0), eos_token_ids=[],
                 pad_token_id=0, options=EngineOptions(decode_threads=0))
        assert set(inside) == {2}
    finally:
        torch.set_num_threads(before)
    assert engine_mod.SMALL_DECODE_FLOPS > 2 * sum(p.numel() for p in model.parameters())


def test_busy_cores_subtract_the_process_own_cpu_time():
    # (wall s, machine busy CPU s, own CPU s): 2 s in which the machine was busy 3 CPU s, 2.2 of them ours
    assert engine_mod.busy_cores_from((10.0, 100.0, 5.0), (12.0, 103.0, 7.2)) == pytest.approx(0.4)
    # all of the machine's busy time was ours: nobody else is there, whatever the load average says
    assert engine_mod.busy_cores_from((10.0, 100.0, 5.0), (12.0, 104.0, 9.0)) == 0.0
    assert engine_mod.busy_cores_from((10.0, 100.0, 5.0), (10.0, 100.0, 5.0)) == 0.0


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc/stat")
def test_cpu_samples_count_this_process_in_the_machine_busy_time_in_seconds():
    prev = engine_mod._cpu_sample()
    t0 = time.process_time()
    while time.process_time() - t0 < 0.5:  # this process keeps one core busy
        pass
    now = engine_mod._cpu_sample()
    own, machine, wall = now[2] - prev[2], now[1] - prev[1], now[0] - prev[0]
    assert own >= 0.5
    assert machine >= own - 0.05  # the machine's busy time includes ours, in the same unit (s, not jiffies)
    assert machine <= wall * len(os.sched_getaffinity(0)) * 1.5 + 0.05


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc/stat")
def test_others_busy_cores_sees_another_process():
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<2: pass"])
    try:
        time.sleep(0.5)  # the interpreter has started and spins
        engine_mod.others_busy_cores()  # start a window
        time.sleep(0.8)
        other = engine_mod.others_busy_cores()
    finally:
        spinner.wait()
    # the spinner holds about a core (at least half of one beside another test worker on 2 cores)
    assert 0.45 <= other <= len(os.sched_getaffinity(0)) + 0.2


def test_auto_decode_threads_follows_the_other_processes(model, monkeypatch):
    big = torch.nn.Linear(8, 8)  # its FLOPs are scaled past SMALL_DECODE_FLOPS below
    monkeypatch.setattr(engine_mod, "SMALL_DECODE_FLOPS", 0.0)
    monkeypatch.setattr(engine_mod.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(engine_mod, "others_busy_cores", lambda: 0.2)
        assert engine_mod.auto_decode_threads(big, 32) == 0  # 1.8 free cores for 2 threads: keep them
        monkeypatch.setattr(engine_mod, "others_busy_cores", lambda: 0.7)
        assert engine_mod.auto_decode_threads(big, 32) == 1  # 1.3 free cores: one thread
    finally:
        torch.set_num_threads(before)


def test_logprob_backward_keeps_no_vocabulary_sized_tensor():
    """What autograd saves for the backward of the log-prob path: nothing of size rows x vocabulary."""
    torch.manual_seed(0)
    vocab = 4096
    m = Qwen3ForCausalLM(Qwen3Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                     tie_word_embeddings=True)).train()
    rows, t = 6, 16
    ids = torch.randint(1, vocab, (rows, 4 + t))
    attn = torch.ones_like(ids)
    saved = []

    def pack(x):
        saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        lp, ent = completion_logprobs(m, ids, attn, t, chunk_rows=8, return_entropy=True)
    # the largest saved tensors are the weights ([vocab, hidden]) and decoder activations, not [rows * t, vocab]
    assert max(saved) <= vocab * 32 < rows * t * vocab
    (lp + ent).sum().backward()
    assert m.lm_head.weight.grad is not None
