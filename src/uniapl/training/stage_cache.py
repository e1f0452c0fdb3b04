"""A cache of finished first stages (``stages[0].cache: true``): a stage that ran before with the same
resolved config, the same starting model, the same uniapl source and the same library versions is copied,
not trained again.

The quickstart's warm-up is the intended user: it stands in for a pre-trained model, costs most of the
quickstart's time, and is the same in every run that changes only the later stages. A hit copies what
the stage wrote (``final/``, its evaluation responses, its ``metrics.jsonl`` rows, its summary) into the
run's stage folder, so the run folder is complete on its own; its ``stage_summary.json`` adds
``cache: {hit, key, path, wall_seconds}`` with the wall time of the run that trained it.

Key: SHA-256 of the stage's config (less output_dir, resume, overwrite, logging), the starting model
(``embedded``, or a local folder's file names, sizes and mtimes, or a hub id and revision), the sha256 of
every ``.py`` file of the installed uniapl package, and the python / torch / transformers / tokenizers
versions. Location: ``$UNIAPL_CACHE_DIR``, else ``$XDG_CACHE_HOME/uniapl``, else ``~/.cache/uniapl``;
entries live in ``stages/<key>/`` and are written aside, then renamed (never half). Delete the folder to
clear it. Single-process runs only (a distributed run trains the stage and does not store it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from uniapl.infra.atomic import atomic_copy_tree, atomic_write_jsonl, atomic_write_text
from uniapl.training.metrics import read_metrics_rows  # drops a line a kill cut short

log = logging.getLogger(__name__)
_NOT_IN_KEY = ("output_dir", "resume", "overwrite", "logging")


def cache_root() -> Path:
    if os.environ.get("UNIAPL_CACHE_DIR"):
        return Path(os.environ["UNIAPL_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "uniapl"


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 over the installed uniapl package's .py files (path and content): any code change is a miss."""
    root = Path(__file__).resolve().parent.parent  # the uniapl package
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _model_identity(name: str, revision: str | None) -> Any:
    p = Path(name).expanduser()
    if name == "embedded" or not p.exists():
        return {"name": name, "revision": revision}
    files = sorted(x for x in (p.rglob("*") if p.is_dir() else [p]) if x.is_file())
    return {"path": str(p.resolve()),
            "files": [[str(x.relative_to(p) if p.is_dir() else x.name), x.stat().st_size, x.stat().st_mtime_ns]
                      for x in files]}


def stage_key(cfg_dict: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(key, what it was made of) for a stage's resolved config (`to_dict` of its Config)."""
    import tokenizers
    import torch
    import transformers

    conf = {k: v for k, v in cfg_dict.items() if k not in _NOT_IN_KEY}
    model = cfg_dict.get("model", {})
    material = {
        "config": conf,
        "start": _model_identity(str(model.get("name_or_path")), model.get("revision")),
        "uniapl_source": source_digest(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
    }
    blob = json.dumps(material, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32], material


def lookup(key: str) -> Path | None:
    d = cache_root() / "stages" / key
    return d if (d / "stage_summary.json").is_file() and (d / "final").is_dir() else None


def restore(entry_dir: Path, key: str, stage_dir: Path, stage: str, metrics_path: Path) -> dict[str, Any]:
    """Copy a cached stage into `stage_dir` and its metrics rows into `metrics_path`; its summary entry."""
    t0 = time.time()
    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_copy_tree(entry_dir / "final", stage_dir / "final")
    if (entry_dir / "eval_responses.jsonl").is_file():
        atomic_write_text(stage_dir / "eval_responses.jsonl",
                          (entry_dir / "eval_responses.jsonl").read_text(encoding="utf-8"))
    entry = json.loads((entry_dir / "stage_summary.json").read_text())

    rows = read_metrics_rows(entry_dir / "metrics.jsonl")
    old = read_metrics_rows(metrics_path)
    atomic_write_jsonl(metrics_path, [r for r in old if r.get("stage") != stage] + rows)
    trained = entry.get("wall_seconds")
    merged = Path(entry["final_checkpoint"]).name == "merged"  # LoRA: the next stage starts from final/merged
    entry["final_checkpoint"] = str(stage_dir / "final" / "merged" if merged else stage_dir / "final")
    entry["wall_seconds"] = round(time.time() - t0, 2)
    entry["cache"] = {"hit": True, "key": key, "path": str(entry_dir), "wall_seconds": trained}
    atomic_write_text(stage_dir / "stage_summary.json", json.dumps(entry, indent=2))
    log.info("stage %s: copied from the stage cache (%s; trained there in %s s)", stage, entry_dir, trained)
    return entry


def store(key: str, material: dict[str, Any], stage_dir: Path, stage: str, entry: dict[str, Any],
          metrics_path: Path) -> Path | None:
    """Keep a finished stage in the cache (written aside, then renamed); None (and a warning) if it cannot."""
    root = cache_root() / "stages"
    dst = root / key
    if lookup(key) is not None:
        return dst
    tmp = root / f"{key}.tmp-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        shutil.copytree(stage_dir / "final", tmp / "final")
        if (stage_dir / "eval_responses.jsonl").is_file():
            shutil.copyfile(stage_dir / "eval_responses.jsonl", tmp / "eval_responses.jsonl")

        atomic_write_jsonl(tmp / "metrics.jsonl", [r for r in read_metrics_rows(metrics_path) if r.get("stage") == stage])
        (tmp / "key.json").write_text(json.dumps(material, indent=2, default=str))
        (tmp / "stage_summary.json").write_text(json.dumps({k: v for k, v in entry.items() if k != "cache"}, indent=2))
        if dst.exists():  # an incomplete entry (no summary): replaced
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except OSError as e:
        log.warning("stage %s: not stored in the stage cache %s (%s)", stage, root, e)
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    log.info("stage %s: stored in the stage cache (%s)", stage, dst)
    return dst


__all__ = ["cache_root", "lookup", "restore", "source_digest", "stage_key", "store"]
