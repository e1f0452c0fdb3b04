"""Everything a run needs, checked before anything is written: the output directory, each stage's data (files,
records, what each objective term needs of them, instruction specs), the model and a served discriminator."""

from __future__ import annotations

import os
from pathlib import Path

from uniapl.algorithms import get_algorithm
from uniapl.config import Config, DataSource, stage_configs
from uniapl.data.loaders import DataError, load_records, require, validate_specs
from uniapl.data.records import Record
from uniapl.infra.errors import UserError
from uniapl.infra.schema import ConfigError
from uniapl.models.loading import EMBEDDED

_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow")


def load_source(src: DataSource, key: str, synthetic_cfg) -> list[Record]:
    """Records of one data source; a missing file or an unloadable dataset is an error naming `key`."""
    path = src.path
    if not path:
        raise DataError(f"key '{key}.path' is empty")
    if not path.startswith("synthetic:"):
        p = Path(path).expanduser()
        if p.suffix in _FILE_SUFFIXES and not p.exists():
            raise DataError(f"key '{key}.path': data file not found: {path}")
        if not p.exists():
            from uniapl.infra.hub import check_source

            check_source(path, f"{key}.path", kind="dataset")
    try:
        return load_records(src, synthetic_cfg)
    except UserError:
        raise
    except (OSError, ValueError) as e:  # datasets: not found, unreachable, unreadable
        raise DataError(f"key '{key}.path': cannot load {path!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def stage_records(cfg: Config, stage: str = "") -> tuple[list[Record], list[Record], list[Record]]:
    p = get_algorithm(cfg.algorithm)
    d = cfg.data
    cache: dict[tuple, list[Record]] = {}
    where = f" (stage {stage})" if stage else ""

    def load(src, key):
        ck = (src.path, src.split, src.name, src.limit, src.format, tuple(sorted(src.field_map.items())))
        if ck not in cache:
            cache[ck] = load_source(src, key, d.synthetic)
        return cache[ck]

    def nonempty(recs, key, what):
        if not recs:
            src = getattr(d, key.split(".")[1]) or d.train
            raise DataError(f"key '{key}'{where}: {src.path!r} holds no records, but {what} needs at least one")
        return recs

    sft_key, pref_key = ("data.sft" if d.sft else "data.train"), ("data.pref" if d.pref else "data.train")
    sft = nonempty(load(d.sft or d.train, sft_key), sft_key, f"the SFT slice of '{cfg.algorithm}'") if p.uses_sft_slice else []
    pref = nonempty(load(d.pref or d.train, pref_key), pref_key, f"the preference slice of '{cfg.algorithm}'") if p.uses_pref_slice else []
    ev = load(d.eval, "data.eval") if (d.eval is not None and cfg.eval.enabled) else []
    from uniapl.objective import get_term

    for slice_name, recs in (("sft", sft), ("pref", pref)):  # what each term needs of its slice's records
        for term in p.term_names(slice_name):
            get_term(term)(cfg, p, slice_name).check_records(recs)
    if ev:
        require(ev, ["instruction_id_list"], "evaluation")
        validate_specs(ev)
        if cfg.eval.limit is not None:
            ev = ev[: cfg.eval.limit]
    if d.eval is not None and cfg.eval.enabled and not ev:
        raise DataError(f"key 'data.eval'{where}: no evaluation records ({d.eval.path!r} is empty"
                        f"{' or eval.limit is 0' if cfg.eval.limit == 0 else ''}); set eval.enabled=false to train "
                        f"without evaluation")
    return sft, pref, ev


# what a run writes into output_dir (and, for multi-stage configs, into each stage-* directory)
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "stage_summary.json", "stage_state.json",
             "eval_responses.jsonl", "eval_general.json", "checkpoints", "final", "final.tmp", "final.old")


def existing_results(out: Path) -> list[Path]:
    """What an earlier run left in `out`: its files and stage directories."""
    if not out.is_dir():
        return []
    found = [out / n for n in RUN_FILES if (out / n).exists()]
    return found + sorted(d for d in out.glob("stage-*") if d.is_dir())


def check_output_dir(cfg: Config) -> list[Path]:
    """Refuse (UserError naming the directory) an output_dir that is a file, cannot be written, or holds the
    results of a run while neither resume=true nor overwrite=true (the Hugging Face convention). Returns the
    earlier results that overwrite=true will delete. Writes nothing."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"key 'output_dir': {out} is a file, not a directory")
    anc = out
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigError(f"key 'output_dir': {out} cannot be created: {anc} is a file")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ConfigError(f"key 'output_dir': {out} is not writable ({anc}: permission denied)")
    found = existing_results(out)
    if found and not cfg.resume and not cfg.overwrite:
        names = ", ".join(p.name for p in found[:6]) + (", ..." if len(found) > 6 else "")
        raise ConfigError(f"key 'output_dir': {out} already holds the results of a run ({names}); pass resume=true "
                          f"to continue it, overwrite=true to replace it, or choose another output_dir")
    return found if cfg.overwrite else []


def check_discriminator(cfg: Config) -> None:
    """A discriminator must be usable before any work starts: a local model's folder (`polar`, `embedding`,
    `learned` with model=hf) exists, and a served one (`polar_server`) answers."""
    d = cfg.discriminator
    if not get_algorithm(cfg.algorithm).uses_discriminator:
        return
    needs_model = d.name == "polar" or (d.name == "learned" and d.learned.model == "hf")
    if needs_model and not d.model_path:
        raise ConfigError(f"key 'discriminator.model_path': discriminator {d.name!r}"
                          f"{' with learned.model=hf' if d.name == 'learned' else ''} needs a local model folder")
    if d.model_path and (needs_model or d.name == "embedding"):
        from uniapl.infra.hub import check_source

        check_source(d.model_path, "discriminator.model_path")
        if d.tokenizer_path:
            check_source(d.tokenizer_path, "discriminator.tokenizer_path")
    if d.name != "polar_server":
        return
    from uniapl.discriminators.polar_server import PolarHTTPClient

    PolarHTTPClient.from_config(cfg.discriminator.server).check()


def validate_run(cfg: Config) -> list[tuple[str, Config, tuple]]:
    """Everything a run needs, checked before anything is written: the output directory, each stage's data
    (files, records, instruction specs), the model and a served discriminator. [(stage name, config, records)]."""
    from uniapl.infra.hub import check_source

    stages = stage_configs(cfg)
    check_output_dir(cfg)
    out = []
    checked: set = set()
    for i, (name, scfg) in enumerate(stages):
        if scfg.model.name_or_path != EMBEDDED and (i == 0 or scfg.model.name_or_path != stages[i - 1][1].model.name_or_path):
            check_source(scfg.model.name_or_path, "model.name_or_path", revision=scfg.model.revision)
        recs = stage_records(scfg, name if len(stages) > 1 else "")
        server = (scfg.discriminator.name, scfg.discriminator.server.url)
        if server not in checked:
            check_discriminator(scfg)
            if get_algorithm(scfg.algorithm).uses_discriminator:
                checked.add(server)
        out.append((name, scfg, recs))
    return out


__all__ = ["RUN_FILES", "check_discriminator", "check_output_dir", "existing_results", "load_source", "stage_records",
           "validate_run"]
