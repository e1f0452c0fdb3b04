"""Small text helpers shared by the scorers: chat messages -> text, a bounded LRU cache."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Generic, Hashable, TypeVar, Union

Messages = list[dict[str, Any]]
Prompt = Union[str, Messages]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def as_text(x: Prompt | None) -> str:
    """A string as is; chat messages as their contents joined with "\\n" (roles dropped, as POLAR does)."""
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    if isinstance(x, (list, tuple)):
        parts = []
        for m in x:
            if isinstance(m, dict):
                parts.append(str(m.get("content", "") or ""))
            else:
                parts.append(str(m))
        return "\n".join(parts)
    raise TypeError(f"expected a string or a list of chat messages, got {type(x).__name__}")


def prompt_key(x: Prompt | None) -> str:
    """A hashable key for a prompt (messages are keyed by role and content)."""
    if x is None or isinstance(x, str):
        return x or ""
    return "\x1e".join(f"{m.get('role', '')}\x1f{m.get('content', '')}" if isinstance(m, dict) else str(m) for m in x)


class LRUCache(Generic[K, V]):
    """A dict with a size bound, evicting the least recently used entry; counts hits and misses."""

    def __init__(self, maxsize: int = 4096):
        self.maxsize = max(0, int(maxsize))
        self._data: OrderedDict[K, V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: K) -> bool:
        return key in self._data

    def get(self, key: K) -> V | None:
        if key in self._data:
            self._data.move_to_end(key)
            self.hits += 1
            return self._data[key]
        self.misses += 1
        return None

    def put(self, key: K, value: V) -> None:
        if self.maxsize == 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def get_or_compute(self, key: K, compute: Callable[[], V]) -> V:
        value = self.get(key)
        if value is None:
            value = compute()
            self.put(key, value)
        return value

    def clear(self) -> None:
        self._data.clear()
        self.hits = self.misses = 0
