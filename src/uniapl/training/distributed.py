"""Sharded training helpers: the whole policy for the decode loop, full state dicts for checkpoints.

Under FSDP (and DeepSpeed ZeRO-3) each process holds a shard of every parameter; a forward through the
wrapped module gathers them layer by layer, which is a collective: every process must run the same forwards.
The rollout engine's decode loop runs a different number of forwards per process (rows stop at EOS), and it
calls the model's modules directly (`rollout/steppers.py`). So generation runs inside `gathered_params`:
the full parameters are materialised once per step on every process (no writeback), the loop runs on plain
tensors, and the shards come back at the end of the block.

Checkpoints: `full_model_state_dict` / `full_optimizer_state_dict` gather the full (unsharded) state
(collectives: call them on every process); `load_full_optimizer_state_dict` scatters it back on resume.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch


def enable_cpu_fsdp(acc) -> bool:
    """Make a CPU (gloo) run launched with an FSDP config (`ACCELERATE_USE_FSDP=true`) shard with FSDP.

    accelerate only turns FSDP on for accelerator backends; on CPUs it silently falls back to DDP
    (`AcceleratorState` keeps MULTI_CPU). torch's FSDP runs on CPUs over gloo, so the state is switched to
    FSDP here with the plugin the launcher's FSDP_* variables describe. True if it switched."""
    import os

    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or acc.distributed_type != DistributedType.MULTI_CPU:
        return False
    from accelerate.state import AcceleratorState, PartialState

    acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()
    # both singletons' shared states: accelerate re-reads PartialState's (e.g. while preparing)
    for shared in (AcceleratorState._shared_state, PartialState._shared_state):
        shared["distributed_type"] = DistributedType.FSDP
    acc.state.distributed_type = DistributedType.FSDP
    return True


def kind(acc) -> str:
    """"FSDP", "DEEPSPEED", "MULTI_GPU" (DDP), "MULTI_CPU" (DDP on gloo), "NO", ...: accelerate's name."""
    return str(getattr(acc.distributed_type, "value", acc.distributed_type))


def summary(acc) -> dict[str, Any]:
    """What summary.json records under `distributed`."""
    return {"type": kind(acc), "num_processes": int(acc.num_processes)}


def fsdp_version(acc) -> int:
    """0 (not FSDP), 1 (FullyShardedDataParallel wrapper) or 2 (fully_shard modules)."""
    if kind(acc) != "FSDP":
        return 0
    plugin = getattr(acc.state, "fsdp_plugin", None)
    return int(getattr(plugin, "fsdp_version", 1) or 1)


def is_sharded(acc) -> bool:
    if kind(acc) == "FSDP":
        return True
    if kind(acc) == "DEEPSPEED":
        plugin = getattr(acc.state, "deepspeed_plugin", None)
        return int(getattr(plugin, "zero_stage", 0) or 0) == 3
    return False


def _fsdp2_modules(module: torch.nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered_params(acc, wrapped: torch.nn.Module) -> Iterator[None]:
    """Inside the block every process holds the FULL parameters of `wrapped` (what `accelerator.prepare`
    returned); changes made inside are not written back. A no-op without sharding."""
    if not is_sharded(acc):
        yield
        return
    if kind(acc) == "DEEPSPEED":
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(wrapped.parameters()), modifier_rank=None):
            yield
        return
    if fsdp_version(acc) == 1:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(wrapped, writeback=False, recurse=True):
            yield
        return
    # FSDP2: unshard every fully_shard module once and keep them unsharded between forwards (the decode
    # loop's forwards then gather nothing), then reshard and restore the modules' setting
    mods = _fsdp2_modules(wrapped)
    if mods:
        mods[0]._get_fsdp_state()._lazy_init()  # the root's (idempotent); its first forward would do it
    saved = []
    for m in mods:
        state = m._get_fsdp_state()
        group = state._fsdp_param_group
        saved.append((group, None if group is None else group.post_forward_mesh_info))
        if group is not None:
            group.post_forward_mesh_info = None  # reshard_after_forward=False
    try:
        for m in mods:
            m.unshard()
        yield
    finally:
        for m in mods:
            m.reshard()
        for group, info in saved:
            if group is not None:
                group.post_forward_mesh_info = info


def _strip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}


def full_model_state_dict(acc, wrapped: torch.nn.Module, prefix: str = "model.", *,
                          every_process: bool = False) -> dict[str, torch.Tensor]:
    """The full state dict of `wrapped`'s inner model on the CPU, keys without `prefix` (the PolicyLogprobs
    wrapper's attribute). A collective when sharded; under FSDP only the main process receives it unless
    `every_process`."""
    if not is_sharded(acc):
        inner = acc.unwrap_model(wrapped)
        return _strip({k: v.detach().cpu() for k, v in inner.state_dict().items()}, prefix)
    if kind(acc) == "DEEPSPEED":
        return _strip({k: v.cpu() for k, v in acc.get_state_dict(wrapped).items()}, prefix)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=not every_process))
    return _strip({k: v.detach().cpu() for k, v in sd.items()}, prefix)


def full_optimizer_state_dict(acc, wrapped: torch.nn.Module, optimizer) -> dict[str, Any]:
    """The optimizer's full state (parameters keyed by name when sharded); collective when sharded."""
    opt = getattr(optimizer, "optimizer", optimizer)
    if kind(acc) != "FSDP":
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(wrapped, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state_dict(acc, wrapped: torch.nn.Module, optimizer, state: dict[str, Any]) -> None:
    opt = getattr(optimizer, "optimizer", optimizer)
    if kind(acc) != "FSDP":
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(wrapped, opt, state, options=StateDictOptions(full_state_dict=True))


def global_max(acc, value: float) -> float:
    """The largest `value` over processes (a collective: every process calls it)."""
    if acc.num_processes == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=acc.device)
    return float(acc.gather(t).max().item())


def has_accelerator() -> bool:
    """Without a GPU, Accelerator(cpu=True) is what makes `accelerate launch --multi_gpu` processes use gloo."""
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


# what a run writes into output_dir (and, for multi-stage configs, into each stage-* directory)
