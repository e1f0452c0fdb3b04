"""Typed dataclass schemas -> validation of plain dicts (from YAML or the command line).

Supports the types our configs use: bool, int, float, str, Any, Optional[X], Literal[...], list[X],
dict[str, X] and nested dataclasses. Every error names the dotted key, where it came from (file:line
or "command line") and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from uniapl.infra.errors import UserError


class ConfigError(UserError, ValueError):
    """A config value or key is invalid. The message names the key, its origin and what is allowed."""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        (arg,) = get_args(tp) or (Any,)
        return f"list[{_type_name(arg)}]"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def convert(tp: Any, value: Any, key: str, where: Any) -> Any:
    """Check `value` against type `tp` and return it converted (dicts become dataclasses).

    `where(key) -> str` gives a human-readable origin for a key (e.g. "quickstart.yaml:12").
    """

    def fail(msg: str) -> ConfigError:
        return ConfigError(f"{where(key)}: key '{key}': {msg}")

    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise fail(f"null is not allowed; expected {_type_name(tp)}")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(arg, value, key, where)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:  # Optional[X]: X's own message names the nested key that is wrong
            raise errors[0]
        raise fail(f"got {value!r}; expected {_type_name(tp)}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise fail(f"got {value!r}; allowed values: {', '.join(repr(a) for a in allowed)}")
        return value
    if origin is list:
        (arg,) = get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise fail(f"got {value!r}; expected a list ({_type_name(tp)})")
        return [convert(arg, v, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        _, varg = get_args(tp) or (str, Any)
        if not isinstance(value, dict):
            raise fail(f"got {value!r}; expected a mapping")
        return {str(k): convert(varg, v, f"{key}.{k}", where) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise fail(f"got {value!r}; expected a mapping ({tp.__name__})")
        return from_dict(tp, value, prefix=key, where=where)
    if value is None:
        raise fail(f"null is not allowed; expected {_type_name(tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail(f"got {value!r}; expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise fail(f"got {value!r}; expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise fail(f"got {value!r}; expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise fail(f"got {value!r}; expected a string")
    if isinstance(value, tp):
        return value
    raise fail(f"got {value!r}; expected {_type_name(tp)}")


def from_dict(cls: type, data: dict, *, prefix: str = "", where: Any = None) -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys and ill-typed values."""
    where = where or (lambda key: "config")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            allowed = ", ".join(sorted(fields))
            raise ConfigError(f"{where(key)}: unknown key '{key}'; allowed keys here: {allowed}")
        kwargs[name] = convert(hints[name], value, key, where)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        named = re.match(r"key '([^']+)'", str(e))  # a __post_init__ check naming its key: point at that key
        if named:
            raise ConfigError(f"{where(named.group(1))}: {e}") from e
        raise ConfigError(f"{where(prefix or '<root>')}: {prefix or 'config'}: {e}") from e


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain (YAML/JSON-able) dict."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """data['a']['b'] = value for dotted 'a.b', creating mappings on the way."""
    parts = dotted.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):  # `stages.1.overrides.train.steps=5`: an index into a list
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"command line: key '{dotted}': '{part}' is not an index of a list of {len(node)}")
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
            continue
        if last:
            node[part] = value
            return
        nxt = node.get(part)
        if not isinstance(nxt, (dict, list)):
            nxt = {}
            node[part] = nxt
        node = nxt


def deep_merge(base: dict, update: dict) -> dict:
    """Recursive dict merge; `update` wins. Keys with dots in `update` are expanded."""
    out = dict(base)
    for k, v in update.items():
        if "." in k:
            tmp: dict = {}
            set_dotted(tmp, k, v)
            out = deep_merge(out, tmp)
            continue
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


__all__ = ["ConfigError", "convert", "from_dict", "to_dict", "set_dotted", "deep_merge", "typing"]
