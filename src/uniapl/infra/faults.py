"""Fault injection for tests only: ``UNIAPL_FAULT_AT=<point>[@N][,...]`` kills the process (``os._exit(137)``,
as SIGKILL would, with no cleanup) the N-th time (default: the first) it reaches a named point.

Points (``<point>:<stage name>`` restricts one to a stage):
    train.step                 after a training step (its metrics row and any checkpoint written)
    checkpoint.written         a checkpoint's files complete in step-N.tmp/, before the rename publishes it
    eval.before / eval.after   just before the starting / final evaluation of a stage
    final.written              the stage's final model complete in final.tmp/, before it replaces final/
    stage.done                 after the stage's stage_summary.json
    write:<file name>          inside an atomic write of that file (e.g. write:stage_summary.json), after
                               the temporary file is complete and before the rename
Never set it outside tests: the run dies on purpose.
"""

from __future__ import annotations

import os
from collections import Counter

ENV = "UNIAPL_FAULT_AT"
_hits: Counter = Counter()


def fault_point(name: str, stage: str | None = None) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    for item in spec.split(","):
        target, _, nth = item.strip().partition("@")
        if target == name or (stage is not None and target == f"{name}:{stage}"):
            _hits[target] += 1
            if not nth or _hits[target] == int(nth):
                os._exit(137)


__all__ = ["fault_point", "ENV"]
