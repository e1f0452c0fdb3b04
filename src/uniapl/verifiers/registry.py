"""The checker registry: instruction id -> check function, and validation of specs against it.

A checker is a plain function ``fn(response: str, **kwargs) -> bool`` (the strict check of one
instruction). Its keyword-only parameters are its kwargs schema: their annotations (``int``, ``str``,
``list[str]``, ``Literal[...]``, ``X | None``) are what `validate_spec` checks data against, and a
parameter without a default is required. A checker that needs the prompt declares a ``prompt``
parameter; `verify` fills it.

Register your own::

    @register_checker("mine:ends_with_emoji")
    def ends_with_emoji(response: str) -> bool:
        return response.rstrip()[-1:] in EMOJI
"""

from __future__ import annotations

import collections.abc
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, UnionType
from typing import Any

from uniapl.infra.errors import UserError

__all__ = ["CHECKERS", "register_checker", "get_checker", "validate_spec", "normalize_kwargs", "Param", "SpecError"]

Checker = Callable[..., bool]

_REGISTRY: dict[str, Checker] = {}
CHECKERS: Mapping[str, Checker] = MappingProxyType(_REGISTRY)
"""Read-only view of the registry (instruction id -> strict check function)."""


@dataclass(frozen=True)
class Param:
    name: str
    types: tuple[type, ...]  # accepted Python types ((): anything)
    choices: tuple[Any, ...] | None  # Literal values, if any
    item_type: type | None  # element type of a list parameter
    required: bool


_SCHEMAS: dict[str, dict[str, Param]] = {}
_TAKES_PROMPT: dict[str, bool] = {}
_LOOSE: dict[str, bool] = {}


def _param_from(p: inspect.Parameter, hint: Any) -> Param:
    types: list[type] = []
    choices: list[Any] | None = None
    item_type: type | None = None
    alternatives = typing.get_args(hint) if (typing.get_origin(hint) in (typing.Union, UnionType)) else (hint,)
    for alt in alternatives:
        if alt is type(None):
            continue
        origin = typing.get_origin(alt)
        if origin is typing.Literal:
            choices = [*(choices or []), *typing.get_args(alt)]
            types.extend({type(c) for c in typing.get_args(alt)})
        elif origin in (list, tuple, collections.abc.Sequence) or alt in (list, tuple):
            types.extend([list, tuple])
            args = typing.get_args(alt)
            item_type = args[0] if args else None
        elif alt is inspect.Parameter.empty or alt is Any:
            types = []
            break
        elif isinstance(alt, type):
            types.append(alt)
    return Param(
        name=p.name,
        types=tuple(dict.fromkeys(types)),
        choices=tuple(choices) if choices is not None else None,
        item_type=item_type,
        required=p.default is inspect.Parameter.empty,
    )


def _schema_of(fn: Checker) -> tuple[dict[str, Param], bool]:
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn, include_extras=False)
    except Exception:  # unresolvable annotations: validate names only
        hints = {}
    params = list(sig.parameters.values())
    if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
        raise TypeError(f"checker {fn!r} must take the response as its first positional parameter")
    schema: dict[str, Param] = {}
    takes_prompt = False
    for p in params[1:]:
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if p.name == "prompt":
            takes_prompt = True
            continue
        schema[p.name] = _param_from(p, hints.get(p.name, p.annotation))
    return schema, takes_prompt


def register_checker(instruction_id: str, *, replace: bool = False, loose: bool = True) -> Callable[[Checker], Checker]:
    """Decorator: register ``fn(response, **kwargs) -> bool`` as the strict check of `instruction_id`.

    Registering an id twice is an error unless ``replace=True`` (so a typo cannot silently shadow a
    built-in checker). ``loose=False`` makes the loose verdict equal the strict one (no re-check on
    IFEval's loose variants: for costly checkers, e.g. sandboxed code).
    """
    if not isinstance(instruction_id, str) or not instruction_id:
        raise ValueError(f"instruction id must be a non-empty string, got {instruction_id!r}")

    def decorator(fn: Checker) -> Checker:
        if instruction_id in _REGISTRY and not replace and _REGISTRY[instruction_id] is not fn:
            raise ValueError(f"checker {instruction_id!r} is already registered (pass replace=True to override)")
        schema, takes_prompt = _schema_of(fn)
        _REGISTRY[instruction_id] = fn
        _SCHEMAS[instruction_id] = schema
        _TAKES_PROMPT[instruction_id] = takes_prompt
        _LOOSE[instruction_id] = loose
        return fn

    return decorator


class SpecError(UserError, ValueError):
    """An instruction spec (ids + kwargs) that cannot be checked; the message names the record."""


class UnknownInstructionError(KeyError, ValueError):
    """An instruction id that no checker is registered for."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def get_checker(instruction_id: str) -> Checker:
    """The registered check function of `instruction_id`; an error listing the known ids otherwise."""
    try:
        return _REGISTRY[instruction_id]
    except (KeyError, TypeError):
        raise UnknownInstructionError(
            f"unknown instruction id {instruction_id!r}; known ids: {', '.join(sorted(_REGISTRY))}"
        ) from None


def takes_prompt(instruction_id: str) -> bool:
    return _TAKES_PROMPT.get(instruction_id, False)


def checks_loose(instruction_id: str) -> bool:
    """Whether the loose verdict re-checks IFEval's loose variants (else it equals the strict one)."""
    return _LOOSE.get(instruction_id, True)


def schema(instruction_id: str) -> dict[str, Param]:
    get_checker(instruction_id)
    return dict(_SCHEMAS[instruction_id])


def _check_value(p: Param, value: Any) -> str | None:
    """An error message for a bad `value` of parameter `p`, or None."""
    if p.types:
        ok = isinstance(value, p.types) and not (isinstance(value, bool) and bool not in p.types)
        if not ok and int in p.types and isinstance(value, float) and value.is_integer():
            ok = True  # 3.0 from a JSON writer that does not keep ints
        if not ok and float in p.types and isinstance(value, int) and not isinstance(value, bool):
            ok = True  # an int where a float is expected
        if not ok:
            names = "/".join(t.__name__ for t in p.types)
            return f"{p.name}={value!r} should be {names}"
    if p.choices is not None and value not in p.choices:
        return f"{p.name}={value!r} should be one of {list(p.choices)}"
    if p.item_type is not None and isinstance(value, (list, tuple)):
        bad = [v for v in value if not isinstance(v, p.item_type)]
        if bad:
            return f"{p.name} should hold {p.item_type.__name__} items, got {bad[0]!r}"
    return None


def normalize_kwargs(kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Drop None-valued entries (as the reference does: the HF IFEval rows carry every key, mostly None)."""
    if not kwargs:
        return {}
    out = {}
    for k, v in kwargs.items():
        if v is None:
            continue
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        out[k] = v
    return out


def _problems(instruction_id: Any, kwargs: Any) -> list[str]:
    if not isinstance(instruction_id, str) or instruction_id not in _REGISTRY:
        return [f"unknown instruction id {instruction_id!r}"]
    if kwargs is not None and not isinstance(kwargs, Mapping):
        return [f"kwargs of {instruction_id} should be an object, got {type(kwargs).__name__}"]
    kw = normalize_kwargs(kwargs)
    sch = _SCHEMAS[instruction_id]
    problems = []
    unknown = sorted(set(kw) - set(sch))
    if unknown:
        problems.append(f"{instruction_id}: unexpected kwargs {unknown} (accepted: {sorted(sch)})")
    for p in sch.values():
        if p.name in kw:
            msg = _check_value(p, kw[p.name])
            if msg:
                problems.append(f"{instruction_id}: {msg}")
        elif p.required:
            problems.append(f"{instruction_id}: missing kwarg {p.name!r}")
    return problems


def validate_spec(instruction_id_list: Any, kwargs_list: Any, *, where: str = "") -> None:
    """Raise SpecError (a ValueError), naming `where` (e.g. ``"data.jsonl:12"``), if the spec cannot be checked.

    Bad: an unknown instruction id, a kwargs list of another length, a missing required kwarg, an
    unexpected kwarg, or a kwarg of the wrong type / outside its allowed values. None-valued kwargs
    are ignored, as in the reference.
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(instruction_id_list, (list, tuple)):
        raise SpecError(f"{prefix}instruction_id_list should be a list, got {type(instruction_id_list).__name__}")
    if kwargs_list is None:
        kwargs_list = [{}] * len(instruction_id_list)
    if not isinstance(kwargs_list, (list, tuple)) or len(kwargs_list) != len(instruction_id_list):
        n = len(kwargs_list) if isinstance(kwargs_list, (list, tuple)) else type(kwargs_list).__name__
        raise SpecError(f"{prefix}kwargs should be a list of {len(instruction_id_list)} objects, got {n}")
    problems = [msg for iid, kw in zip(instruction_id_list, kwargs_list) for msg in _problems(iid, kw)]
    if problems:
        raise SpecError(prefix + "; ".join(problems))
