"""The experiment config: a matrix of methods x swept values x seeds under one budget.

    name: laptop
    output_dir: runs/experiments/laptop
    base: null                     # a training config the runs derive from (path, relative to this file or the CWD)
    overrides: {...}               # training-config keys for every run (nested or dotted)
    steps: 60                      # the budget: optimizer steps of every method, its stages together
    seeds: [0, 1, 2]
    warmup: {algorithm: sft, steps: 300, overrides: {...}}   # run once; every run starts from its weights
    teacher: {build: {algorithm: sft, steps: 150, overrides: {...}}}   # or {model: PATH}
    methods:
      sft_grpo: {label: "SFT→GRPO", stages: [{algorithm: sft}, {algorithm: grpo}]}
      unified: {algorithm: unified}
    sweep: [{key: loss.lambda_adv, values: [0.1, 0.01], methods: [a_grpo]}]
    tune: {grid: {train.learning_rate: [3.0e-4, 1.0e-3]}, metric: prompt_level_strict_acc,
           eval: {path: "synthetic:validation"}, seeds: [0]}   # per method; methods.X.tune: its own grid
    compare: ["unified - grpo", "a_grpo - grpo"]   # paired-by-seed differences (comparisons.md/csv)
    split: {prompts: input_data.jsonl, teacher: gpt4_responses.jsonl, eval: 200, validation: 50}
    smoke: false                   # true: smoke_overrides {dotted experiment key: value} apply, then the command line

Equal budget: every method trains `steps` optimizer steps (a staged method splits them: stages without
`steps` share what the others leave, equally) with the same rollout settings; method and stage
overrides may not change the budget keys (`BUDGET_KEYS`); a sweep may, explicitly.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from uniapl.analysis.compare import parse_comparison
from uniapl.config import Config, load_raw, parse_override, stage_configs
from uniapl.infra.schema import ConfigError, deep_merge, from_dict, set_dotted, to_dict

BUDGET_KEYS = ("train.steps", "train.pref_batch_size", "rollout.num_generations", "rollout.max_new_tokens",
               "rollout.adv_num_generations")


@dataclass
class StageSpec:
    algorithm: str = "sft"
    steps: Optional[int] = None  # methods: None shares the budget; warmup/teacher: None keeps the config's train.steps
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodConfig:
    label: Optional[str] = None  # the name in tables and legends (default: the method's key)
    algorithm: Optional[str] = None  # a single-stage method ...
    stages: list[StageSpec] = field(default_factory=list)  # ... or a pipeline, each stage from the previous one
    overrides: dict[str, Any] = field(default_factory=dict)  # training-config keys for every stage
    # this method's tuning grid {dotted key: [values]} (replaces tune.grid); {} = not tuned; null = tune.grid
    tune: Optional[dict[str, list[Any]]] = None
    tune_from: Optional[str] = None  # use the values tuning chose for this other method (not tuned itself)

    def __post_init__(self) -> None:
        if (self.algorithm is None) == (not self.stages):
            raise ValueError("a method needs exactly one of 'algorithm' or 'stages'")


@dataclass
class SweepAxis:
    key: str = ""  # a dotted training-config key, e.g. loss.lambda_adv
    values: list[Any] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)  # the methods it applies to (empty: all)

    def __post_init__(self) -> None:
        if not self.key or not self.values:
            raise ValueError("a sweep axis needs a 'key' and a non-empty list of 'values'")


@dataclass
class TeacherConfig:
    """The teacher MODEL of Figure 4 (log-likelihoods) and of the teacher-model length curve.

    model: a local path or hub id; null: build one with `build`, starting from the warm-up's weights
    (on the embedded default: SFT on the data's teacher answers, a stand-in for the paper's teacher LLM).
    """

    model: Optional[str] = None
    build: Optional[StageSpec] = None


@dataclass
class AnalysisConfig:
    num_samples: int = 128  # responses sampled per run (temperature below) for the log-likelihood gap
    temperature: float = 1.0
    max_new_tokens: Optional[int] = None  # default: eval.max_new_tokens
    smoothing: int = 5  # moving-average window of the training curves (steps)
    teacher_logp: bool = True  # score the held-out teacher answers under each student (teacher_logp.png)
    bootstrap: int = 2000  # paired bootstrap resamples of the held-out prompts (comparisons); 0: none
    power: float = 0.8  # of the minimum detectable difference in comparisons.md


@dataclass
class TuneConfig:
    """Per-method choice of settings on a validation split, before the main runs.

    Every method (or those in `methods`) trains at every point of its grid (the product of the values)
    for each of `seeds`, evaluated on `eval` (the training config's data.eval for these runs: a split that
    is neither training nor the reported evaluation set); the point with the highest mean `metric`
    wins (ties: the first in grid order) and the main runs use it.
    """

    grid: dict[str, list[Any]] = field(default_factory=dict)
    metric: str = "prompt_level_strict_acc"
    eval: dict[str, Any] = field(default_factory=lambda: {"path": "synthetic:validation"})
    eval_limit: Optional[int] = None  # eval.limit of the tuning runs (null: the experiment's)
    seeds: list[int] = field(default_factory=lambda: [0])
    methods: list[str] = field(default_factory=list)  # empty: every method

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("key 'tune.seeds' must list at least one seed")


@dataclass
class SplitConfig:
    """A data set split by key into train / validation / eval files (prep/data/*.jsonl + split.json).

    prompts: JSONL with key, prompt, instruction_id_list, kwargs (IFEval's input_data.jsonl);
    teacher: JSONL of answers (`response`) joined to the prompts by `join` (key or prompt text); each
    record's `teacher` field is the answer. Prompts without an answer are dropped.
    The runs' data.train / data.eval (and tune.eval) point at the written files.
    """

    prompts: str = ""
    teacher: Optional[str] = None
    join: Literal["key", "prompt"] = "key"
    eval: int = 100  # prompts in the eval split (the reported one)
    validation: int = 0  # prompts in the validation split (tuning)
    seed: int = 0


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    output_dir: str = "runs/experiment"
    base: Optional[str] = None
    overrides: dict[str, Any] = field(default_factory=dict)
    steps: int = 60
    seeds: list[int] = field(default_factory=lambda: [0])
    methods: dict[str, MethodConfig] = field(default_factory=dict)
    select: list[str] = field(default_factory=list)  # run only these methods (empty: all)
    sweep: list[SweepAxis] = field(default_factory=list)
    warmup: Optional[StageSpec] = None
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    jobs: int = 1  # runs in parallel, each in its own process (1: in this process)
    threads_per_job: int = 1  # torch / OpenMP threads of each run process
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    tune: Optional[TuneConfig] = None
    compare: list[str] = field(default_factory=list)  # "a - b" by method key: paired-by-seed differences
    split: Optional[SplitConfig] = None
    results_dir: Optional[str] = None  # copy the report (tables, figures, responses) here at the end
    smoke: bool = False
    smoke_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"key 'steps' must be >= 1, got {self.steps}")
        if not self.seeds:
            raise ValueError("key 'seeds' must list at least one seed")
        if self.jobs < 1 or self.threads_per_job < 1:
            raise ValueError("keys 'jobs' and 'threads_per_job' must be >= 1")


@dataclass
class RunSpec:
    """One cell of the matrix: a method at one sweep point and one seed."""

    run_id: str  # "<method>[__key=value ...]"
    method: str
    label: str
    sweep: dict[str, Any]
    seed: int
    config: dict[str, Any]  # the full training config (plain dict), stages included
    tuned: dict[str, Any] = field(default_factory=dict)  # the values tuning chose (applied under the sweep)


def _flat_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.extend(_flat_keys(v, key))
        out.append(key)
    return out


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", str(value))


def load_experiment(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> tuple[ExperimentConfig, dict]:
    """(experiment config, base training config as a plain dict). Errors name file:line or 'command line'."""
    data, where = load_raw(path, overrides)
    if data.get("smoke") is True:  # the file, its smoke_overrides, then the command line
        raw, _ = load_raw(path)
        smoke = raw.get("smoke_overrides") or {}
        if not isinstance(smoke, dict):
            raise ConfigError(f"{where('smoke_overrides')}: key 'smoke_overrides' must be a mapping of experiment keys")
        data = raw
        for key, value in smoke.items():  # each key replaces its dotted path, as on the command line
            set_dotted(data, str(key), copy.deepcopy(value))
        for item in overrides:
            set_dotted(data, *parse_override(item))
    exp = from_dict(ExperimentConfig, data, where=where)
    base: dict[str, Any] = {}
    if exp.base:
        candidates = [Path(exp.base)] + ([Path(path).parent / exp.base] if path else [])
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ConfigError(f"{where('base')}: key 'base': training config {exp.base!r} not found")
        base, _ = load_raw(found)
    base.pop("stages", None)
    base = deep_merge(base, copy.deepcopy(exp.overrides))
    try:
        from_dict(Config, base, where=lambda k: f"{where('overrides')} (overrides/base key '{k}')")
    except ConfigError:
        raise
    for name in exp.select:
        if name not in exp.methods:
            raise ConfigError(f"{where('select')}: key 'select': unknown method {name!r}; methods: {', '.join(exp.methods)}")
    for i, axis in enumerate(exp.sweep):
        for m in axis.methods:
            if m not in exp.methods:
                raise ConfigError(f"{where(f'sweep[{i}]')}: sweep over {axis.key!r}: unknown method {m!r}")
    for name, m in exp.methods.items():
        touched = set(_flat_keys(deep_merge({}, m.overrides)))
        for s in m.stages:
            touched |= set(_flat_keys(deep_merge({}, s.overrides)))
        bad = sorted(touched & set(BUDGET_KEYS))
        if bad:
            raise ConfigError(f"{where(f'methods.{name}')}: method {name!r} overrides budget key(s) {', '.join(bad)}: "
                              f"every method runs with the same steps and rollout settings (use a sweep to vary them)")
    if not exp.methods:
        raise ConfigError(f"{where('methods')}: key 'methods': the experiment defines no method")
    _check_tune(exp, where)
    for i, c in enumerate(exp.compare):
        a, b = parse_comparison(c)
        for m in (a, b):
            if m not in exp.methods:
                raise ConfigError(f"{where(f'compare[{i}]')}: comparison {c!r}: unknown method {m!r}; "
                                  f"methods: {', '.join(exp.methods)}")
    if exp.split is not None and not exp.split.prompts:
        raise ConfigError(f"{where('split')}: key 'split.prompts': the prompts file to split is missing")
    return exp, base


def tune_grid(exp: ExperimentConfig, name: str) -> dict[str, list[Any]]:
    """The grid method `name` is tuned over ({} = not tuned)."""
    if exp.tune is None:
        return {}
    if exp.tune.methods and name not in exp.tune.methods:
        return {}
    m = exp.methods[name]
    if m.tune_from is not None:
        return {}
    return dict(m.tune) if m.tune is not None else dict(exp.tune.grid)


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*[grid[k] for k in keys])]


def _check_tune(exp: ExperimentConfig, where) -> None:
    from uniapl.evaluation.ifeval import METRIC_KEYS

    tuned_somewhere = any(m.tune for m in exp.methods.values())
    if exp.tune is None:
        if tuned_somewhere:
            bad = next(n for n, m in exp.methods.items() if m.tune)
            raise ConfigError(f"{where(f'methods.{bad}.tune')}: method {bad!r} has a tuning grid but the experiment "
                              f"has no 'tune' section (its metric, validation split and seeds)")
        return
    if exp.tune.metric not in METRIC_KEYS:
        raise ConfigError(f"{where('tune.metric')}: key 'tune.metric': {exp.tune.metric!r} is not one of "
                          f"{', '.join(METRIC_KEYS)}")
    for m in exp.tune.methods:
        if m not in exp.methods:
            raise ConfigError(f"{where('tune.methods')}: key 'tune.methods': unknown method {m!r}")
    for name, m in exp.methods.items():
        if m.tune_from is not None and (m.tune_from not in exp.methods or not tune_grid(exp, m.tune_from)):
            raise ConfigError(f"{where(f'methods.{name}.tune_from')}: method {name!r}: tune_from {m.tune_from!r} "
                              f"is not a tuned method of this experiment")
    swept = {a.key for a in exp.sweep}
    for name in exp.methods:
        grid = tune_grid(exp, name)
        for key, values in grid.items():
            w = where(f"methods.{name}.tune") if exp.methods[name].tune is not None else where("tune.grid")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{w}: tuning grid of method {name!r}: key {key!r} needs a non-empty list of values")
            if key in BUDGET_KEYS:
                raise ConfigError(f"{w}: tuning grid of method {name!r}: {key!r} is a budget key (equal for every method)")
            if key in swept:
                raise ConfigError(f"{w}: tuning grid of method {name!r}: {key!r} is also swept; tune or sweep it, not both")


def _stage_steps(name: str, stages: list[StageSpec], budget: int) -> list[int]:
    fixed = sum(s.steps for s in stages if s.steps is not None)
    free = [i for i, s in enumerate(stages) if s.steps is None]
    left = budget - fixed
    if left < 0 or (not free and left != 0) or (free and left < len(free)):
        raise ConfigError(f"method {name!r}: stage steps {[s.steps for s in stages]} do not fit the budget of {budget} steps")
    out = [s.steps for s in stages]
    for j, i in enumerate(free):
        out[i] = left // len(free) + (1 if j < left % len(free) else 0)
    return out  # type: ignore[return-value]


def stage_run_config(base: dict, spec: StageSpec, *, output_dir: str, init_from: str | None, seed: int | None = None
                     ) -> dict[str, Any]:
    """A single-stage training config (warm-up, teacher build) from the base config and a StageSpec."""
    d = deep_merge(copy.deepcopy(base), copy.deepcopy(spec.overrides))
    d["algorithm"] = spec.algorithm
    if spec.steps is not None:
        d = deep_merge(d, {"train": {"steps": spec.steps}})
    if seed is not None:
        d["seed"] = seed
    if init_from is not None:
        d = deep_merge(d, {"model": {"name_or_path": init_from}})
    d.update(output_dir=output_dir, resume=True, stages=[])
    return d


def _run_config(base: dict, name: str, m: MethodConfig, steps: list[int], values: dict[str, Any], seed: int,
                output_dir: str, init_from: str | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full training config of method `name` with `values` (dotted keys: tuned, then swept) set over the
    method's and its stages' overrides; `extra` (training-config keys) over everything but `values`."""
    stages = m.stages or [StageSpec(algorithm=m.algorithm or "", overrides={})]
    d = deep_merge(copy.deepcopy(base), copy.deepcopy(m.overrides))
    if extra:
        d = deep_merge(d, copy.deepcopy(extra))
    for k, v in values.items():
        set_dotted(d, k, copy.deepcopy(v))
    if init_from is not None:
        d = deep_merge(d, {"model": {"name_or_path": init_from}})
    d.update(seed=seed, output_dir=output_dir, resume=True)
    if len(stages) == 1:
        d = deep_merge(d, copy.deepcopy(stages[0].overrides))
        d = deep_merge(d, {"train": {"steps": steps[0]}})
        for k, v in values.items():  # tuned and swept values win over method and stage overrides
            set_dotted(d, k, copy.deepcopy(v))
        d["algorithm"] = stages[0].algorithm
        d["stages"] = []
    else:
        st = []
        algs = [s.algorithm for s in stages]
        for i, (s, n) in enumerate(zip(stages, steps)):
            ov = deep_merge(copy.deepcopy(s.overrides), {"train": {"steps": n}})
            for k, v in values.items():
                set_dotted(ov, k, copy.deepcopy(v))
            name_i = s.algorithm if algs.count(s.algorithm) == 1 else f"{i}-{s.algorithm}"
            st.append({"name": name_i, "algorithm": s.algorithm, "overrides": ov})
        d["algorithm"] = stages[-1].algorithm
        d["stages"] = st
    return d


def _validated(d: dict, name: str, seed: int, point: dict) -> dict:
    try:
        stage_configs(from_dict(Config, copy.deepcopy(d), where=lambda k, n=name: f"method {n!r}"))
    except ConfigError as e:
        raise ConfigError(f"method {name!r} (seed {seed}, {'values ' + str(point) if point else 'no sweep'}): {e}") from e
    return d


def point_slug(point: dict[str, Any]) -> str:
    return "__".join(f"{k.split('.')[-1]}={_slug(v)}" for k, v in point.items()) or "default"


def expand_runs(exp: ExperimentConfig, base: dict, *, runs_dir: Path, init_from: str | None,
                tuned: dict[str, dict[str, Any]] | None = None) -> list[RunSpec]:
    """Every (method, sweep point, seed) of the matrix with its full training config, validated.

    tuned: {method: {dotted key: value}} chosen by the tuning phase (applied under the sweep's values)."""
    runs = []
    names = exp.select or list(exp.methods)
    for name in names:
        m = exp.methods[name]
        axes = [a for a in exp.sweep if not a.methods or name in a.methods]
        points = [dict(zip([a.key for a in axes], combo)) for combo in itertools.product(*[a.values for a in axes])]
        stages = m.stages or [StageSpec(algorithm=m.algorithm or "", overrides={})]
        steps = _stage_steps(name, stages, exp.steps)
        chosen = dict((tuned or {}).get(name, {}))
        for point in points:
            run_id = name + "".join(f"__{k.split('.')[-1]}={_slug(v)}" for k, v in point.items())
            for seed in exp.seeds:
                d = _run_config(base, name, m, steps, {**chosen, **point}, seed, str(runs_dir / run_id / f"seed-{seed}"),
                                init_from)
                runs.append(RunSpec(run_id=run_id, method=name, label=m.label or name, sweep=point, seed=seed,
                                    config=_validated(d, name, seed, {**chosen, **point}), tuned=chosen))
    return runs


def expand_tuning_runs(exp: ExperimentConfig, base: dict, *, tune_dir: Path, init_from: str | None) -> list[RunSpec]:
    """Every (method, grid point, tuning seed): the method's config (no sweep) with data.eval = tune.eval.

    run_id is "<method>/<point slug>"; `sweep` holds the grid point."""
    runs: list[RunSpec] = []
    if exp.tune is None:
        return runs
    t = exp.tune
    extra: dict[str, Any] = {"data": {"eval": copy.deepcopy(t.eval)}}
    if t.eval_limit is not None:
        extra["eval"] = {"limit": t.eval_limit}
    for name in exp.select or list(exp.methods):
        grid = tune_grid(exp, name)
        if not grid:
            continue
        m = exp.methods[name]
        stages = m.stages or [StageSpec(algorithm=m.algorithm or "", overrides={})]
        steps = _stage_steps(name, stages, exp.steps)
        for point in grid_points(grid):
            run_id = f"{name}/{point_slug(point)}"
            for seed in t.seeds:
                d = _run_config(base, name, m, steps, point, seed, str(tune_dir / run_id / f"seed-{seed}"), init_from,
                                extra=extra)
                runs.append(RunSpec(run_id=run_id, method=name, label=m.label or name, sweep=point, seed=seed,
                                    config=_validated(d, name, seed, point)))
    return runs


def dump_experiment(exp: ExperimentConfig) -> dict:
    return to_dict(exp)


__all__ = ["AnalysisConfig", "BUDGET_KEYS", "ExperimentConfig", "MethodConfig", "RunSpec", "SplitConfig", "StageSpec",
           "SweepAxis", "TeacherConfig", "TuneConfig", "expand_runs", "expand_tuning_runs", "grid_points",
           "load_experiment", "stage_run_config", "tune_grid"]
