"""Reward functions named in the config, called the way TRL's GRPOTrainer calls them, and their combination.

TRL (``GRPOTrainer._calculate_rewards``) calls each function once per batch of N completions::

    f(prompts=[...N], completions=[...N], completion_ids=[...N], trainer_state=..., **columns) -> list[float | None]

``prompts`` are the records' prompts as the data has them (a string, or a list of chat messages);
``completions`` are strings for string prompts and ``[{"role": "assistant", "content": text}]`` for chat
prompts; every other column of the records comes as a keyword argument holding one value per
completion (None where a record lacks it). None means "this function does not score this completion":
it becomes NaN, and the total is the NaN-aware weighted sum

    r_i = sum_f  w_f * R[i, f]   over the f with R[i, f] not NaN     (0 when every function gave None)

Each function is logged as TRL logs it: ``rewards/<name>/mean`` and ``rewards/<name>/std`` (NaN-aware,
Bessel-corrected), with ``<name>`` the function's ``__name__`` (``ifeval`` for the verifier).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import torch

from uniapl.data.records import Record
from uniapl.infra.errors import UserError

__all__ = ["RewardError", "RewardFunction", "Rewards", "load_function", "nanstd", "reward_metrics", "weighted_sum"]


class RewardError(UserError, RuntimeError):
    """User reward code failed (raised, or returned the wrong thing); the message names function and record."""


def load_function(spec: str) -> Callable:
    """The callable `spec` names: ``"pkg.module:function"`` or ``"path/to/file.py:function"``.

    Raises ValueError saying what is wrong (for the config loader to name the key). A module is looked
    up on sys.path and then in the current directory (the `uniapl` script does not put it on sys.path).
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"{spec!r} should look like 'pkg.module:function' or 'path/to/file.py:function'")
    mod_name, attr = spec.split(":")
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise ValueError(f"{spec!r}: file not found: {path}")
        name = f"uniapl_user_rewards.{path.stem}_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(loader_spec)
            try:
                loader_spec.loader.exec_module(module)
            except Exception as e:
                raise ValueError(f"{spec!r}: importing {path} failed: {type(e).__name__}: {e}") from e
            sys.modules[name] = module
    else:
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name is None or not mod_name.startswith(e.name) or os.getcwd() in sys.path:
                raise ValueError(f"{spec!r}: cannot import {mod_name!r}: {e}") from e
            sys.path.append(os.getcwd())
            try:
                module = importlib.import_module(mod_name)
            except ModuleNotFoundError as e2:
                raise ValueError(f"{spec!r}: cannot import {mod_name!r}: {e2}") from e2
            except Exception as e2:
                raise ValueError(f"{spec!r}: importing {mod_name!r} failed: {type(e2).__name__}: {e2}") from e2
        except Exception as e:
            raise ValueError(f"{spec!r}: importing {mod_name!r} failed: {type(e).__name__}: {e}") from e
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"{spec!r}: module {mod_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"{spec!r}: {attr!r} is a {type(fn).__name__}, not a function")
    return fn


@dataclass
class RewardFunction:
    name: str  # TRL's reward_func_names entry: the function's __name__
    fn: Callable
    spec: str = ""

    @classmethod
    def from_spec(cls, spec: str) -> "RewardFunction":
        fn = load_function(spec)
        return cls(getattr(fn, "__name__", spec.split(":")[1]), fn, spec)


def _completion(record: Record, text: str) -> Any:
    return [{"role": "assistant", "content": text}] if not isinstance(record.prompt, str) else text


def _to_float(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, (str, bytes)):
        raise TypeError(f"got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"got {type(value).__name__} {value!r}") from None


def call_function(rf: RewardFunction, records: Sequence[Record], texts: Sequence[str],
                  completion_ids: Sequence[list[int]] | None = None, trainer_state: Any = None) -> torch.Tensor:
    """[N] rewards of `rf` for the completions `texts` of `records` (NaN where it returned None)."""
    keys: list[str] = []
    for r in records:
        keys += [k for k in r.columns if k not in keys and k not in ("prompt", "completion", "completion_ids")]
    kwargs = {k: [r.columns.get(k) for r in records] for k in keys}
    kwargs["trainer_state"] = trainer_state
    if completion_ids is not None:
        kwargs["completion_ids"] = [list(c) for c in completion_ids]
    prompts = [r.prompt for r in records]
    completions = [_completion(r, t) for r, t in zip(records, texts)]
    try:
        out = rf.fn(prompts=prompts, completions=completions, **kwargs)
    except Exception as e:
        raise RewardError(f"reward function {rf.spec or rf.name} raised {type(e).__name__}: {e}"
                          f"{_first_failing(rf, prompts, completions, kwargs, records)}") from e
    try:
        out = list(out)
    except TypeError:
        raise RewardError(f"reward function {rf.spec or rf.name} returned {type(out).__name__}, expected a list of "
                          f"{len(texts)} floats (or None)") from None
    if len(out) != len(texts):
        raise RewardError(f"reward function {rf.spec or rf.name} returned {len(out)} values for {len(texts)} "
                          f"completions (of {records[0].source}, ...)")
    vals = []
    for i, v in enumerate(out):
        try:
            vals.append(_to_float(v))
        except (TypeError, ValueError) as e:
            raise RewardError(f"reward function {rf.spec or rf.name}: value {i} (record {records[i].source}) is not "
                              f"a number or None: {e}") from None
    return torch.tensor(vals, dtype=torch.float32)


def _first_failing(rf: RewardFunction, prompts: list, completions: list, kwargs: dict, records: Sequence[Record]) -> str:
    """" on record X" for the first completion that raises alone (the batch call does not say which)."""
    for i in range(len(prompts)):
        one = {k: (v[i : i + 1] if isinstance(v, list) else v) for k, v in kwargs.items()}
        try:
            rf.fn(prompts=prompts[i : i + 1], completions=completions[i : i + 1], **one)
        except Exception:
            return f" on record {records[i].source or i} (completion {i} of the batch: {_short(completions[i])})"
    return " (on the batch; no single completion raises alone)"


def _short(c: Any, n: int = 60) -> str:
    text = c[-1]["content"] if isinstance(c, list) else str(c)
    return repr(text if len(text) <= n else text[:n] + "...")


def weighted_sum(rewards_per_func: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[N, F] rewards (NaN: not scored) x [F] weights -> [N] NaN-aware weighted sums (TRL's nansum)."""
    return (rewards_per_func * weights.to(rewards_per_func).unsqueeze(0)).nansum(dim=1)


def nanstd(t: torch.Tensor) -> torch.Tensor:
    """Standard deviation over the non-NaN entries, Bessel-corrected (TRL's nanstd)."""
    variance = torch.nanmean((t - torch.nanmean(t, dim=0, keepdim=True)) ** 2)
    count = torch.sum(~torch.isnan(t))
    return torch.sqrt(variance * count / (count - 1))


def reward_metrics(rewards_per_func: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    """``rewards/<name>/mean`` and ``rewards/<name>/std`` for each column, as TRL logs them."""
    out = {}
    for i, name in enumerate(names):
        col = rewards_per_func[:, i]
        out[f"rewards/{name}/mean"] = float(torch.nanmean(col))
        out[f"rewards/{name}/std"] = float(nanstd(col))
    return out


class Rewards:
    """The GRPO reward of a config: the IFEval verifier (``reward.verifier: ifeval``) and ``reward.functions``."""

    def __init__(self, reward_cfg):
        self.cfg = reward_cfg
        self.functions = [RewardFunction.from_spec(s) for s in reward_cfg.functions]
        self.names = (["ifeval"] if reward_cfg.verifier == "ifeval" else []) + [f.name for f in self.functions]
        w = reward_cfg.weights if reward_cfg.weights is not None else [1.0] * len(self.names)
        self.weights = torch.tensor(w, dtype=torch.float32)

    def _ifeval(self, records: Sequence[Record], texts: Sequence[str]) -> torch.Tensor:
        from uniapl.verifiers import verifiable_reward, verify

        return torch.tensor([
            verifiable_reward(verify(t, r.instruction_id_list, r.kwargs, prompt=r.prompt_text()),
                              mode=self.cfg.mode, partial=self.cfg.partial)
            for r, t in zip(records, texts)
        ], dtype=torch.float32)

    def per_function(self, records: Sequence[Record], texts: Sequence[str],
                     completion_ids: Sequence[list[int]] | None = None, step: int | None = None) -> torch.Tensor:
        """[N, F] rewards, one column per reward (NaN where a function returned None)."""
        cols = [self._ifeval(records, texts)] if self.cfg.verifier == "ifeval" else []
        state = SimpleNamespace(global_step=step)
        cols += [call_function(f, records, texts, completion_ids, state) for f in self.functions]
        return torch.stack(cols, dim=1)

    def __call__(self, records: Sequence[Record], texts: Sequence[str], completion_ids=None,
                 step: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """([N] total rewards, metrics): ``rewards/<name>/mean|std`` per reward and ``reward`` (the total's mean)."""
        per = self.per_function(records, texts, completion_ids, step)
        total = weighted_sum(per, self.weights)
        metrics = reward_metrics(per, self.names)
        metrics["reward"] = float(total.mean())
        return total, metrics
