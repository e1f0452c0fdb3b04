"""AutoIF verification code as a checker: ``autoif:code`` runs one model-written ``evaluate(response)``.

The source string is untrusted: it runs in the sandbox pool (`sandbox`), never in this process. The
check passes only if the function returns exactly ``True`` within the limits; a function that loops,
forks, allocates too much, writes outside its scratch directory, opens a socket or raises scores 0.

`verify_many` calls `prefetch` first, so the calls of a whole batch are spread over the pool's
workers instead of running one after another.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from .registry import register_checker
from .sandbox import default_pool

AUTOIF_ID = "autoif:code"

_prefetched: dict[tuple[str, str, str], bool] = {}


def prefetch(calls: Iterable[tuple[str, str, str]]) -> None:
    """Run ``(source, entry, response)`` calls in parallel now; the checker then finds their results."""
    by_entry: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for source, entry, response in dict.fromkeys(calls):
        if (source, entry, response) not in _prefetched:
            by_entry[entry].append((source, response))
    for entry, items in by_entry.items():
        results = default_pool().run_many([(src, [resp]) for src, resp in items], entry=entry)
        for (src, resp), res in zip(items, results):
            _prefetched[(src, entry, resp)] = res.passed


def clear_prefetched() -> None:
    _prefetched.clear()


@register_checker(AUTOIF_ID, loose=False)
def autoif_code(response: str, *, source: str, entry: str = "evaluate") -> bool:
    """Untrusted ``entry(response)`` from `source`, run sandboxed; True only for a returned ``True``."""
    hit = _prefetched.pop((source, entry, response), None)
    if hit is not None:
        return hit
    return default_pool().run(source, response, entry=entry).passed
