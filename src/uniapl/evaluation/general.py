"""General capability of a trained model through lm-evaluation-harness (``pip install uniapl[eval]``).

    result = evaluate_general("runs/x/final", tasks=["my_mc"], include_path="configs/lm_eval_tasks")
    result["metrics"]  # {"general/my_mc/acc": 0.75, ...}

The model is any uniapl output: a run directory (its ``summary.json`` names the final model), a
stage's ``final/`` or ``checkpoints/step-N/`` folder, a LoRA adapter folder (``adapter_config.json``:
loaded on its base model with lm-eval's ``peft=`` argument), or a hub id. It is run by lm-eval's
``hf`` model (`lm_eval.simple_evaluate`); tasks come from lm-eval's own registry (MMLU, GSM8K, ...;
their datasets come from the hub) and from ``include_path`` (YAML task files, e.g. a local JSON
dataset: ``dataset_path: json``, ``dataset_kwargs: {data_files: ...}``; relative paths there are
relative to the working directory, as in lm-eval). When every task is local and the model is a
local folder, the hub is not contacted (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set for the run).

Metric names: ``general/<task>/<metric>``, with ``/<filter>`` appended when lm-eval reports the metric
under a filter other than ``none`` (e.g. ``general/gsm8k/exact_match/strict-match``); standard errors
stay in the raw results only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uniapl.infra.atomic import atomic_write_text
from uniapl.infra.errors import UserError
from uniapl.infra.schema import ConfigError

if TYPE_CHECKING:
    from uniapl.config import Config

__all__ = ["GeneralEvalError", "PREFIX", "check_general_config", "evaluate_general", "evaluate_general_after_training",
           "flatten_results", "resolve_model"]

PREFIX = "general"


class GeneralEvalError(UserError, ValueError):
    """A user error: unknown task, missing model, lm-eval not installed. The message says which."""


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def resolve_model(model: str) -> dict[str, Any]:
    """lm-eval ``hf`` model_args for a uniapl output folder or hub id, e.g. ``{"pretrained": ".../final"}``."""
    p = Path(model)
    if p.is_dir() and (p / "summary.json").is_file() and not (p / "config.json").is_file():
        final = json.loads((p / "summary.json").read_text()).get("final_checkpoint")
        if not final or not Path(final).is_dir():
            raise GeneralEvalError(f"{p / 'summary.json'}: final_checkpoint {final!r} is not a folder")
        p = Path(final)
    if p.is_dir() and (p / "adapter_config.json").is_file():
        try:
            base = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except json.JSONDecodeError as e:
            raise GeneralEvalError(f"{p / 'adapter_config.json'}: not valid JSON: {e.msg}") from None
        if not base:
            raise GeneralEvalError(f"{p / 'adapter_config.json'}: no base_model_name_or_path to load the adapter on")
        args: dict[str, Any] = {"pretrained": base, "peft": str(p)}
        if any((p / f).is_file() for f in _TOKENIZER_FILES):
            args["tokenizer"] = str(p)
        return args
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise GeneralEvalError(f"{p}: not a model folder (no config.json, adapter_config.json or summary.json)")
        return {"pretrained": str(p)}
    if p.exists():
        raise GeneralEvalError(f"{p}: not a model folder")
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1 or model.endswith("/")
    if looks_local:
        raise GeneralEvalError(f"model not found: {model}")
    return {"pretrained": model}  # a hub id ("gpt2", "Qwen/Qwen3-0.6B"); a missing one fails in lm-eval, exit 2


def _is_local(model_args: dict[str, Any]) -> bool:
    return all(Path(str(model_args[k])).is_dir() for k in ("pretrained", "peft", "tokenizer") if k in model_args)


@contextlib.contextmanager
def _offline(on: bool) -> Iterator[None]:
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE for the duration (also on already-imported `datasets`)."""
    if not on:
        yield
        return
    keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    patched = []
    try:
        import datasets.config as dc

        for attr in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            if hasattr(dc, attr):
                patched.append((dc, attr, getattr(dc, attr)))
                setattr(dc, attr, True)
    except ImportError:
        pass
    try:
        yield
    finally:
        for mod, attr, value in patched:
            setattr(mod, attr, value)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def flatten_results(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """lm-eval's ``results`` -> ``{"general/<task>/<metric>[/<filter>]": value}`` (no stderr, no NaN)."""
    out: dict[str, float] = {}
    for task, entries in results.items():
        for key, value in entries.items():
            if "," not in key or "_stderr" in key:
                continue
            metric, filt = key.split(",", 1)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            name = f"{PREFIX}/{task}/{metric}" + ("" if filt == "none" else f"/{filt}")
            out[name] = float(value)
    return out


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    try:  # numpy scalars
        return _json_safe(x.item())
    except AttributeError:
        return str(x)


def evaluate_general(model: str, tasks: Sequence[str], *, include_path: str | Sequence[str] | None = None,
                     limit: int | float | None = None, batch_size: int | str = 1, device: str | None = None,
                     num_fewshot: int | None = None, dtype: str = "auto", apply_chat_template: bool = False,
                     seed: int = 0, log_samples: bool = False, builtin_tasks: bool = True,
                     confirm_run_unsafe_code: bool = False) -> dict[str, Any]:
    """Run lm-eval on `model` (see `resolve_model`); returns ``{"metrics", "results", "settings"[, "samples"]}``.

    ``confirm_run_unsafe_code``: lets tasks that execute model-written code run (HumanEval, MBPP), as
    lm-eval's flag of that name (and HF_ALLOW_CODE_EVAL=1 for their metric); that code is not sandboxed.
    ``builtin_tasks=False``: only tasks under `include_path` (skips indexing lm-eval's own, which is slow).
    Raises GeneralEvalError for a user error (unknown task, missing model, missing include_path).
    """
    tasks = [t for t in tasks if t]
    if not tasks:
        raise GeneralEvalError("no tasks given (e.g. --tasks mmlu,gsm8k)")
    paths = [include_path] if isinstance(include_path, (str, Path)) else list(include_path or [])
    for ip in paths:
        if not Path(ip).is_dir():
            raise GeneralEvalError(f"include path not found: {ip}")
    model_args = resolve_model(model)
    if "peft" in model_args:
        try:
            import peft  # noqa: F401
        except ImportError:
            raise GeneralEvalError(f"{model}: a LoRA adapter needs peft (pip install peft)") from None
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise GeneralEvalError("lm-eval is not installed: pip install 'uniapl[eval]'") from None
    # lm-eval's built-in index takes tens of seconds to build: only when a task is not under include_path
    local = TaskManager(include_path=[str(p) for p in paths], include_defaults=False) if paths else None
    local_tasks = local is not None and all(t in local.all_tasks for t in tasks)
    if local_tasks:
        manager = local
    elif builtin_tasks:
        manager = TaskManager(include_path=[str(p) for p in paths] or None)
    else:
        manager = local
    known = manager.all_tasks if manager is not None else []
    unknown = [t for t in tasks if t not in known]
    if unknown:
        where = f" under {', '.join(map(str, paths))}" if paths else ""
        scope = "" if builtin_tasks else " (built-in tasks off)"
        raise GeneralEvalError(f"unknown lm-eval task(s): {', '.join(unknown)}{where}{scope}; "
                               "`lm-eval ls tasks` lists the built-in ones")
    model_args = {**model_args, "dtype": dtype}
    device = device or ("cuda" if _cuda() else "cpu")
    if confirm_run_unsafe_code:
        os.environ.setdefault("HF_ALLOW_CODE_EVAL", "1")
    with _offline(local_tasks and _is_local(model_args)):
        try:
            out = lm_eval.simple_evaluate(
                model="hf", model_args=model_args, tasks=list(tasks), task_manager=manager, limit=limit,
                batch_size=batch_size, device=device, num_fewshot=num_fewshot, log_samples=log_samples,
                apply_chat_template=apply_chat_template, random_seed=seed, numpy_random_seed=seed,
                torch_random_seed=seed, fewshot_random_seed=seed, confirm_run_unsafe_code=confirm_run_unsafe_code,
            )
        except OSError as e:  # model or dataset files missing, hub unreachable
            raise GeneralEvalError(f"{type(e).__name__}: {e}") from None
        except ValueError as e:
            if "unsafe" in str(e).lower():
                raise GeneralEvalError(f"{e} (uniapl: --confirm-run-unsafe-code / eval.general.confirm_run_unsafe_code)") from None
            raise
    if out is None:  # non-zero ranks under a distributed launch
        return {}
    result = {
        "metrics": flatten_results(out["results"]),
        "results": _json_safe(out["results"]),
        "settings": {"model": model, "model_args": model_args, "tasks": list(tasks), "include_path": paths or None,
                     "limit": limit, "batch_size": batch_size, "device": device, "num_fewshot": num_fewshot,
                     "apply_chat_template": apply_chat_template, "seed": seed,
                     "confirm_run_unsafe_code": confirm_run_unsafe_code,
                     "lm_eval_version": out.get("lm_eval_version")},
    }
    if log_samples:
        result["samples"] = _json_safe(out.get("samples", {}))
    return result


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def check_general_config(cfg: "Config") -> None:
    """eval.general mistakes that need no model: found before training, not after it."""
    g = cfg.eval.general
    if not g.tasks:
        return
    if g.include_path is not None and not Path(g.include_path).is_dir():
        raise ConfigError(f"key 'eval.general.include_path': folder not found: {g.include_path}")
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError("key 'eval.general.tasks': lm-eval is not installed (pip install 'uniapl[eval]')") from None


def evaluate_general_after_training(cfg: "Config", entry: dict[str, Any], acc, stage_dir: Path) -> None:
    """eval.general: lm-eval tasks on the stage's final model, merged into entry["eval"]["after"] (main process).

    Results also go to <stage>/eval_general.json; a resumed run that has them does not evaluate again.
    """
    g = cfg.eval.general
    if not g.tasks or any(k.startswith("general/") for k in entry["eval"]["after"]):
        return
    if acc.is_main_process:
        try:
            result = evaluate_general(entry["final_checkpoint"], g.tasks, include_path=g.include_path, limit=g.limit,
                                      batch_size=g.batch_size, device=str(acc.device), num_fewshot=g.num_fewshot,
                                      apply_chat_template=g.apply_chat_template, seed=cfg.seed,
                                      builtin_tasks=g.builtin_tasks, confirm_run_unsafe_code=g.confirm_run_unsafe_code)
        except GeneralEvalError as e:
            raise ConfigError(f"key 'eval.general': {e}") from None
        atomic_write_text(stage_dir / "eval_general.json", json.dumps(result, indent=2))
        entry["eval"]["after"] = {**entry["eval"]["after"], **result["metrics"]}
        atomic_write_text(stage_dir / "stage_summary.json", json.dumps(entry, indent=2))
    acc.wait_for_everyone()
    if acc.num_processes > 1:  # every process returns the same summary
        from accelerate.utils import broadcast_object_list

        box = [entry["eval"]["after"]]
        broadcast_object_list(box, from_process=0)
        entry["eval"]["after"] = box[0]
