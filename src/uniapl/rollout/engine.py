"""The built-in rollout engine: batched KV-cached sampling in the trainer's process.

One `generate` call:
  1. prefills each DISTINCT prompt once (the G samples of a GRPO group share one prefill), then repeats
     the cache rows;
  2. runs one decode forward per new token over the batch (`steppers.py`: a preallocated static cache
     for Llama/Qwen layouts, transformers' DynamicCache for any other model);
  3. samples with one uniform draw per row (`sampling.py`);
  4. drops finished rows from the batch once enough of them have emitted EOS (compaction), and stops
     when every row has.

CPU settings it applies for the duration of the call (docs/performance.md has the measurements):
  * `torch.inference_mode` (no autograd bookkeeping; outputs are cloned out as ordinary tensors);
  * flush-to-zero for denormal floats (a trained model's softmax produces them, and they are slow);
  * `decode_threads`: intra-op threads of the decode loop. Decode forwards of small models are too short
    to split across threads, and on a machine whose cores are busy OpenMP threads wait for each other at
    every op: 2-thread decodes were measured 10-150x slower than 1-thread ones on a loaded 2-core machine
    (docs/performance.md). "auto" uses 1 thread when a decode forward is under SMALL_DECODE_FLOPS or OTHER
    processes keep the cores busy (`others_busy_cores`: the machine's busy CPU time less this process's own,
    since the previous look), else leaves torch's setting alone. The process's own load must not count: the
    load average counts the trainer's own threads, and in a 2-thread GRPO run on SmolLM2-135M alone on 2
    cores it rose from 0.7 to 1.87 in four steps, near the core count at which a load-average rule drops
    to one decode thread (rollouts 16-17 s instead of 12-13 s there; docs/performance.md);
  * `prepack`: the decode step's weights pre-packed by oneDNN (`packed_linear.py`, `prepack_rows`): with 2
    decode threads, SmolLM2-135M's rollouts were 1.29x faster.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, replace
from typing import Literal

import torch

from uniapl.rollout.base import RolloutBatch, SamplingParams, register_engine
from uniapl.rollout.sampling import next_tokens
from uniapl.rollout.steppers import make_stepper

SMALL_DECODE_FLOPS = 5e8  # below this many FLOPs per decode forward, "auto" decodes with one thread
PREPACK_MIN_TOKENS = 8  # "auto" packs weights only for calls that decode at least this many tokens


@dataclass
class EngineOptions:
    cache: Literal["auto", "static", "dynamic"] = "auto"  # "auto" | "static" | "dynamic" (see steppers.make_stepper)
    dedup_prompts: bool = True  # prefill identical prompts once
    compact_fraction: float = 0.25  # drop finished rows once this share of the batch has finished (0: never)
    check_every: int = 0  # look at the finished rows every k tokens (a host sync on accelerators); 0: auto
    decode_threads: Literal["auto"] | int = "auto"  # "auto" | 0 (leave torch's setting) | n
    flush_denormal: bool = True
    batch_size: int = 0  # prompts per generate call (0: all at once); bounds the KV cache's memory
    prepack: Literal["auto"] | bool = "auto"  # oneDNN-packed decode weights on the CPU (see `prepack_rows`)

    def __post_init__(self) -> None:
        if self.prepack not in ("auto", True, False):
            raise ValueError(f"key 'prepack' must be 'auto', true or false, got {self.prepack!r}")
        if self.cache not in ("auto", "static", "dynamic"):
            raise ValueError(f"key 'cache' must be 'auto', 'static' or 'dynamic', got {self.cache!r}")
        if not (self.decode_threads == "auto" or (isinstance(self.decode_threads, int) and self.decode_threads >= 0)):
            raise ValueError(f"key 'decode_threads' must be 'auto' or an integer >= 0, got {self.decode_threads!r}")
        if not 0.0 <= self.compact_fraction < 1.0:
            raise ValueError(f"key 'compact_fraction' must be in [0, 1), got {self.compact_fraction}")
        if self.check_every < 0 or self.batch_size < 0:
            raise ValueError(f"keys 'check_every' and 'batch_size' must be >= 0, got {self.check_every}, {self.batch_size}")


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """[N] token lists -> (ids [N, P], mask [N, P]) left-padded to the longest."""
    width = max((len(p) for p in prompts), default=0)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


@contextlib.contextmanager
def cpu_decode_settings(model: torch.nn.Module, rows: int, opts: EngineOptions):
    """Thread count and denormal flushing for a decode loop on the CPU (no-ops on accelerators)."""
    device = next(model.parameters()).device
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    want = opts.decode_threads
    if want == "auto":
        want = auto_decode_threads(model, rows) if threads > 1 else 0
    if want:
        torch.set_num_threads(int(want))
    if opts.flush_denormal:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if want:
            torch.set_num_threads(threads)
        if opts.flush_denormal:
            torch.set_flush_denormal(False)


def small_decode(model: torch.nn.Module, rows: int) -> bool:
    """A decode forward of `rows` rows under SMALL_DECODE_FLOPS (2 FLOPs per parameter and row): too short
    to split across threads or to repay packing its weights."""
    return 2.0 * sum(p.numel() for p in model.parameters()) * rows < SMALL_DECODE_FLOPS


def auto_decode_threads(model: torch.nn.Module, rows: int) -> int:
    """1 when a decode forward is small (< SMALL_DECODE_FLOPS) or other processes leave fewer free cores
    than torch's thread count (OpenMP threads then wait for each other at every op); 0 (leave torch's
    setting) otherwise."""
    if small_decode(model, rows):
        return 1
    threads = torch.get_num_threads()
    others = others_busy_cores()
    if others is not None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return 1 if cores - others < threads - 0.5 else 0
    try:  # no /proc/stat: the load average, which also counts this process's own threads
        busy = os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:
        busy = False
    return 1 if busy else 0


_last_cpu_sample: tuple[float, float, float] | None = None  # (wall s, machine busy CPU s, own CPU s)
MIN_WINDOW_S = 0.2  # a shorter window since the previous look is extended by sleeping (the first look)


def _cpu_sample() -> tuple[float, float, float] | None:
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # steal too: a VM neighbour's time is not ours
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), time.process_time()


def busy_cores_from(prev: tuple[float, float, float], now: tuple[float, float, float]) -> float:
    """Cores other processes used between two `_cpu_sample`s: (machine busy - own CPU time) / wall time."""
    wall = now[0] - prev[0]
    if wall <= 0:
        return 0.0
    return max(0.0, ((now[1] - prev[1]) - (now[2] - prev[2])) / wall)


def others_busy_cores() -> float | None:
    """Cores used by other processes since this function's previous call (the first call watches for
    MIN_WINDOW_S); None without a Linux /proc/stat. In a container /proc/stat counts the host's CPUs,
    so on a shared host this over-counts and errs towards one decode thread."""
    global _last_cpu_sample
    prev = _last_cpu_sample
    if prev is None or time.monotonic() - prev[0] < MIN_WINDOW_S:
        prev = prev or _cpu_sample()
        if prev is None:
            return None
        time.sleep(max(0.0, MIN_WINDOW_S - (time.monotonic() - prev[0])))
    now = _cpu_sample()
    if now is None:
        return None
    _last_cpu_sample = now
    return busy_cores_from(prev, now)


def _distinct(prompts: list[list[int]]) -> tuple[list[int], list[int]]:
    """(row of the first occurrence of each distinct prompt, index of each row's prompt in that list)."""
    seen: dict[tuple[int, ...], int] = {}
    firsts, inverse = [], []
    for i, p in enumerate(prompts):
        key = tuple(p)
        if key not in seen:
            seen[key] = len(firsts)
            firsts.append(i)
        inverse.append(seen[key])
    return firsts, inverse


def generate(model: torch.nn.Module, prompts: list[list[int]], params: SamplingParams, *, eos_token_ids: list[int],
             pad_token_id: int, options: EngineOptions | None = None) -> RolloutBatch:
    """Sample `params.num_samples` responses per prompt (contiguous). See `RolloutBatch` for the shapes."""
    opts = options or EngineOptions()
    expanded = [p for p in prompts for _ in range(params.num_samples)]
    was_training = model.training
    model.eval()
    try:
        with cpu_decode_settings(model, len(expanded), opts), torch.inference_mode():
            out = _generate(model, expanded, params, eos_token_ids, pad_token_id, opts)
    finally:
        if was_training:
            model.train()
    # inference tensors cannot be saved for backward: hand out ordinary ones
    return RolloutBatch(*(t.clone() for t in out), num_samples=params.num_samples)


def _generate(model, rows: list[list[int]], params: SamplingParams, eos_token_ids, pad_id: int, opts: EngineOptions):
    device = next(model.parameters()).device
    n, t_max = len(rows), params.max_new_tokens
    ids, mask = left_pad(rows, pad_id, device)
    tokens = torch.full((n, t_max), pad_id, dtype=torch.long, device=device)
    logps = torch.zeros((n, t_max), dtype=torch.float32, device=device)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    if n == 0 or t_max == 0:
        return ids, mask, tokens[:, :0], tokens[:, :0].clone(), logps[:, :0]
    gen = None
    if params.seed is not None:
        gen = torch.Generator(device=device)
        gen.manual_seed(params.seed)
    eos = torch.tensor(sorted(set(eos_token_ids)), device=device)
    stepper = make_stepper(model, ids.shape[1] + t_max, t_max, opts.cache, prepack_rows(model, n, t_max, opts))

    firsts, inverse = _distinct(rows) if opts.dedup_prompts else (list(range(n)), None)
    if len(firsts) < n:  # prefill each distinct prompt once, then repeat its cache rows
        first = torch.tensor(firsts, device=device)
        logits = _prefill(stepper, ids.index_select(0, first), mask.index_select(0, first))
        index = torch.tensor(inverse, device=device)
        stepper.select(index)
        logits = logits.index_select(0, index)
    else:
        logits = _prefill(stepper, ids, mask)
    pos = mask.sum(-1)  # position of each row's next token
    greedy = params.temperature <= 0
    check_every = opts.check_every or (1 if device.type == "cpu" else 8)
    active = torch.arange(n, device=device)  # original row of each row in the stepper's batch
    alive = torch.ones(n, dtype=torch.bool, device=device)
    compacted = False
    steps = 0
    for t in range(t_max):
        u = None if greedy else torch.rand(n, generator=gen, device=device)
        if compacted and u is not None:
            u = u.index_select(0, active)
        nxt, lp = next_tokens(logits, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                              uniforms=u)
        nxt = torch.where(alive, nxt, pad_id)
        lp = torch.where(alive, lp, 0.0)
        if compacted:
            tokens[active, t] = nxt
            logps[active, t] = lp
            lengths.index_add_(0, active, alive.long())
        else:
            tokens[:, t] = nxt
            logps[:, t] = lp
            lengths += alive.long()
        alive &= ~torch.isin(nxt, eos)
        steps = t + 1
        if steps == t_max:
            break
        if steps % check_every == 0:
            n_alive = int(alive.sum())
            if n_alive == 0:
                break
            if opts.compact_fraction > 0 and n_alive <= (1.0 - opts.compact_fraction) * active.numel():
                keep = alive.nonzero().squeeze(1)
                stepper.select(keep)
                active, alive, pos, nxt = active[keep], alive[keep], pos[keep], nxt[keep]
                compacted = True
        logits = stepper.decode(nxt, pos)
        pos = pos + 1
    steps = int(lengths.max())  # rows may all have ended a few tokens before the last check (accelerators)
    tokens, logps = tokens[:, :steps], logps[:, :steps]
    comp_mask = (torch.arange(steps, device=device)[None, :] < lengths[:, None]).long()
    return ids, mask, tokens, comp_mask, logps


def prepack_rows(model: torch.nn.Module, rows: int, new_tokens: int, opts: EngineOptions) -> int:
    """Rows to pre-pack the decode weights for with oneDNN (0: do not pack; `packed_linear.py`). True: pack
    (where oneDNN supports the weights); False: never. "auto" packs on the CPU when the decode runs on 2+
    threads, a decode forward is not small (>= SMALL_DECODE_FLOPS) and the call decodes >=
    PREPACK_MIN_TOKENS tokens. Measured on SmolLM2-135M, 32 rows x 64 tokens (docs/performance.md): with 2
    threads packing made rollouts 1.29x faster (118 -> 152 tokens/s, the packing, about one pass over the
    weights, included); with one thread no difference showed (93-110 tokens/s either way), and packing
    would hold a second copy of the weights for nothing."""
    if opts.prepack is False or rows == 0:
        return 0
    if opts.prepack is True:
        return rows
    if next(model.parameters()).device.type != "cpu" or torch.get_num_threads() < 2 or new_tokens < PREPACK_MIN_TOKENS:
        return 0
    return 0 if small_decode(model, rows) else rows


def _prefill(stepper, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return stepper.prefill(ids, mask, position_ids)


class KVCacheEngine:
    """The built-in engine: samples from the live policy in the trainer's process (no weight sync needed)."""

    # its log-probs are the trainer's own (same model, same kernels): no rollout correction needed
    logprobs_match_trainer = True

    def __init__(self, model: torch.nn.Module, *, eos_token_ids: list[int], pad_token_id: int,
                 options: EngineOptions | None = None, **option_kwargs):
        self.model = model
        self.eos_token_ids = list(eos_token_ids)
        self.pad_token_id = pad_token_id
        self.options = replace(options or EngineOptions(), **option_kwargs)

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.model = model

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> RolloutBatch:
        bs = self.options.batch_size
        if not bs or len(prompts) <= bs:
            return generate(self.model, prompts, params, eos_token_ids=self.eos_token_ids,
                            pad_token_id=self.pad_token_id, options=self.options)
        parts = []
        for i, s in enumerate(range(0, len(prompts), bs)):
            p = replace(params, seed=None if params.seed is None else params.seed + i)
            parts.append(generate(self.model, prompts[s : s + bs], p, eos_token_ids=self.eos_token_ids,
                                  pad_token_id=self.pad_token_id, options=self.options))
        return concat_batches(parts, self.pad_token_id)


def _pad_to(x: torch.Tensor, width: int, value: int | float, left: bool) -> torch.Tensor:
    extra = width - x.shape[1]
    if extra <= 0:
        return x
    pad = torch.full((x.shape[0], extra), value, dtype=x.dtype, device=x.device)
    return torch.cat([pad, x] if left else [x, pad], 1)


def concat_batches(parts: list[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    p = max(b.prompt_ids.shape[1] for b in parts)
    t = max(b.completion_ids.shape[1] for b in parts)
    return RolloutBatch(
        torch.cat([_pad_to(b.prompt_ids, p, pad_token_id, True) for b in parts]),
        torch.cat([_pad_to(b.prompt_mask, p, 0, True) for b in parts]),
        torch.cat([_pad_to(b.completion_ids, t, pad_token_id, False) for b in parts]),
        torch.cat([_pad_to(b.completion_mask, t, 0, False) for b in parts]),
        torch.cat([_pad_to(b.logprobs, t, 0.0, False) for b in parts]),
        num_samples=parts[0].num_samples,
    )


@register_engine("hf")
def _build(model, eos_token_ids, pad_token_id, **kwargs) -> KVCacheEngine:
    """The default engine ("hf": it runs any Hugging Face causal LM); options as EngineOptions keywords."""
    return KVCacheEngine(model, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id, **kwargs)
