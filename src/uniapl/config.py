"""The training config: a typed schema; YAML files are instances; `a.b=v` overrides on the command line.

    cfg = load_config("configs/quickstart.yaml", ["train.steps=50", "output_dir=runs/x"])

A multi-stage pipeline is a list of `stages`, each a name, an algorithm and overrides of the base
config; each stage starts from the previous stage's final weights (see `stage_configs`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from uniapl.data.synthetic import SyntheticTaskConfig
from uniapl.discriminators.config import DiscriminatorConfig
from uniapl.infra.schema import ConfigError, deep_merge, from_dict, set_dotted, to_dict
from uniapl.rollout.engine import EngineOptions
from uniapl.rollout.vllm_engine import VLLMConfig


@dataclass
class EmbeddedModelConfig:
    """The tiny Qwen3 built from config when `model.name_or_path` is `embedded`."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    vocab_size: int = 1024  # size the BPE tokenizer is trained to
    max_position_embeddings: int = 512


@dataclass
class LoraConfig:
    """`model.lora`: train LoRA adapters (PEFT) instead of the full weights (`uniapl.models.lora`). The reference
    policy is then the adapter-disabled model (no second copy); checkpoints and final/ hold the adapters,
    and with merge_final also final/merged/, a plain model with the adapters folded in."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: Any = "all-linear"  # "all-linear" or a list of module names (q_proj, v_proj, ...)
    merge_final: bool = False

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"key 'model.lora.r' must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"key 'model.lora.alpha' must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"key 'model.lora.dropout' must be in [0, 1), got {self.dropout}")
        t = self.target_modules
        if not (t == "all-linear" or (isinstance(t, list) and t and all(isinstance(x, str) and x for x in t))):
            raise ValueError(f"key 'model.lora.target_modules' must be 'all-linear' or a non-empty list of module "
                             f"names, got {t!r}")


@dataclass
class ModelConfig:
    name_or_path: str = "embedded"  # "embedded", a hub id or a local path
    revision: Optional[str] = None
    gguf_file: Optional[str] = None
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    trust_remote_code: bool = False
    attn_implementation: Optional[str] = "sdpa"
    chat_template: Optional[str] = None  # Jinja template overriding the tokenizer's
    enable_thinking: bool = False  # passed to chat templates that know it (Qwen3)
    think_prefix: str = "<think>\n\n</think>\n\n"  # a target starting with it keeps ONE block, masked (data.chat)
    gradient_checkpointing: bool = False  # recompute activations in the update (training mode); rollouts unaffected
    lora: Optional[LoraConfig] = None
    embedded: EmbeddedModelConfig = field(default_factory=EmbeddedModelConfig)


@dataclass
class DataSource:
    """Where records come from: `synthetic:<split>`, a .jsonl file, a local dataset dir or a hub id."""

    path: str = ""
    split: str = "train"
    name: Optional[str] = None  # dataset config name
    limit: Optional[int] = None  # keep the first N records
    field_map: dict[str, str] = field(default_factory=dict)  # record field -> column name
    # published layouts: "records" (uniapl's own fields, see README), "ifeval_like", "ifbench" (IF-RLVR
    # messages + ground_truth), "autoif" (model-written verification code, run sandboxed)
    format: Literal["records", "ifeval_like", "ifbench", "autoif"] = "records"


@dataclass
class PairsConfig:
    """Preference data for DPO / KTO (`uniapl.data.pairs`).

    source: "data"  use the records' chosen/rejected (DPO) or completion/label (KTO) fields;
            "build" build them: chosen = the reference answer (loss.sft_target first) that passes the
            verifiers, rejected = a sample of the reference (starting) policy that fails them;
            "auto"  the records' fields where present, built otherwise.
    """

    source: Literal["auto", "data", "build"] = "auto"
    num_samples: int = 4  # reference-policy samples drawn per prompt when looking for a failing answer

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"key 'data.pairs.num_samples' must be >= 1, got {self.num_samples}")


@dataclass
class DataConfig:
    train: DataSource = field(default_factory=lambda: DataSource(path="synthetic:train"))
    sft: Optional[DataSource] = None  # defaults to `train`
    pref: Optional[DataSource] = None  # defaults to `train`
    eval: Optional[DataSource] = field(default_factory=lambda: DataSource(path="synthetic:eval"))
    synthetic: SyntheticTaskConfig = field(default_factory=SyntheticTaskConfig)
    max_prompt_tokens: int = 256
    max_response_tokens: int = 256  # target answers (SFT, DPO/KTO) are cut here; a cut answer ends without EOS
    pairs: PairsConfig = field(default_factory=PairsConfig)


@dataclass
class TrainConfig:
    steps: int = 100
    learning_rate: float = 1e-5
    lr_scheduler: Literal["constant", "linear", "cosine", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    sft_batch_size: int = 8  # SFT-slice prompts per optimizer step (per process)
    pref_batch_size: int = 8  # preference-slice prompts per optimizer step (per process)
    gradient_accumulation_steps: int = 1  # micro-batches each slice is split into
    # sort a slice's rows by length before splitting it into micro-batches, so that each micro-batch pads
    # only to its own longest row (HF Trainer's name); the gradient is the same, the padding FLOPs are not
    group_by_length: bool = False
    log_every: int = 1
    save_every: int = 0  # 0: only the final checkpoint
    keep_checkpoints: int = 2
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"

    def __post_init__(self) -> None:
        bad = [(k, ">= 0") for k in ("steps", "save_every", "keep_checkpoints", "log_every") if getattr(self, k) < 0]
        bad += [(k, ">= 1") for k in ("sft_batch_size", "pref_batch_size", "gradient_accumulation_steps") if getattr(self, k) < 1]
        bad += [("learning_rate", "> 0")] if not self.learning_rate > 0 else []
        bad += [("warmup_ratio", "in [0, 1]")] if not 0.0 <= self.warmup_ratio <= 1.0 else []
        if bad:
            k, rule = bad[0]
            raise ValueError(f"key 'train.{k}' must be {rule}, got {getattr(self, k)}")


@dataclass
class ImportanceSamplingConfig:
    """Rollout correction (TRL's vllm_importance_sampling_*): weight the GRPO term by pi_theta / pi_sampler,
    truncated or masked (`uniapl.losses.importance`). "auto": on for engines whose log-probs are not the
    trainer's own (vLLM), off for the built-in engine, whose log-probs are the trainer's (tested to 1e-4)."""

    correction: Union[bool, Literal["auto"]] = "auto"
    mode: Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = "token_truncate"
    clip_min: Optional[float] = None
    clip_max: Optional[float] = 3.0


@dataclass
class RolloutConfig:
    engine: str = "hf"  # registered rollout engine: "hf" (built-in), "vllm"
    builtin: EngineOptions = field(default_factory=EngineOptions)  # options of engine "hf"
    vllm: VLLMConfig = field(default_factory=VLLMConfig)  # options of engine "vllm"
    num_generations: int = 4  # G responses per preference prompt
    adv_num_generations: int = 1  # student samples per SFT prompt for the A-SFT adversarial term
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    importance_sampling: ImportanceSamplingConfig = field(default_factory=ImportanceSamplingConfig)


@dataclass
class GRPOConfig:
    """GRPO's clipped surrogate + k3 KL to the frozen reference (the stage's starting weights).

    beta: the KL coefficient; the paper's 0.001 (all its experiments) by default. `beta: 0` switches the
        KL term off and loads no reference model (with `model.lora` the reference is free either way: it is
        the adapter-disabled policy).
    """

    beta: float = 0.001
    eps_low: float = 0.2
    eps_high: float = 0.2
    advantage_scale: Literal["group", "batch", "none"] = "group"
    aggregation: Literal["token_mean", "seq_mean", "dr_grpo"] = "token_mean"
    # optimisation passes over each rollout batch (TRL's mu): pass 1 trains every term; passes 2..K the GRPO term
    # alone, clipped ratio against the sampling log-probs (SFT/DPO/KTO/adversarial terms have no ratio: trained once)
    num_iterations: int = 1


@dataclass
class ChordConfig:
    """CHORD (algorithms chord, a_chord): mu = mu_schedule(step, ...) weights the expert SFT slice, 1 - mu GRPO."""

    mu_warmup_steps: int = 200
    mu_decay_steps: int = 400
    mu_peak: float = 0.5
    mu_valley: float = 0.02
    phi: bool = False  # weight SFT tokens by stopgrad(p (1 - p)) (CHORD-phi)
    expert_share: Optional[float] = None  # expert rows / all rows of a step; sets the SFT batch size (None: train.sft_batch_size)

    def __post_init__(self) -> None:
        for k in ("mu_peak", "mu_valley"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise ValueError(f"key 'loss.chord.{k}' must be in [0, 1], got {getattr(self, k)}")
        for k in ("mu_warmup_steps", "mu_decay_steps"):
            if getattr(self, k) < 0:
                raise ValueError(f"key 'loss.chord.{k}' must be >= 0, got {getattr(self, k)}")
        if self.expert_share is not None and not 0.0 < self.expert_share < 1.0:
            raise ValueError(f"key 'loss.chord.expert_share' must be in (0, 1) or null, got {self.expert_share}")


@dataclass
class DPOConfig:
    beta: float = 0.1


@dataclass
class KTOConfig:
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0


@dataclass
class LossConfig:
    alpha: float = 0.5  # eq. (2): weight of the A-SFT part
    lambda_adv: float = 0.01
    sft_target: Literal["teacher", "ground_truth"] = "teacher"
    mask_think_prefix: bool = True
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    # how the discriminator reaches the GRPO update (paper Table 4): "loss" a separate term lambda_adv * L_ADV
    # (the method); "reward_raw" / "reward_coef" its raw score / coefficient added to the verifiable reward
    # (times adv_reward_scale) before advantages, with no adversarial loss term on that slice.
    adv_signal: Literal["loss", "reward_raw", "reward_coef"] = "loss"
    adv_reward_scale: float = 1.0
    chord: ChordConfig = field(default_factory=ChordConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    kto: KTOConfig = field(default_factory=KTOConfig)


@dataclass
class RewardConfig:
    """The GRPO reward: the IFEval verifier and/or functions with TRL's signature (`uniapl.rewards`)."""

    mode: Literal["strict", "loose"] = "strict"
    partial: bool = False  # fraction of instructions followed instead of all-or-nothing
    verifier: Literal["ifeval", "none"] = "ifeval"  # "none": only `functions` reward
    functions: list[str] = field(default_factory=list)  # "pkg.module:function" or "file.py:function"
    weights: Optional[list[float]] = None  # one per reward, the verifier first when on (None: all 1.0)

    def __post_init__(self) -> None:
        from uniapl.rewards.functions import load_function

        for i, spec in enumerate(self.functions):  # importable and callable now, not at the first GRPO step
            try:
                load_function(spec)
            except ValueError as e:
                raise ValueError(f"key 'reward.functions[{i}]': {e}") from None
        n = len(self.functions) + (self.verifier == "ifeval")
        if n == 0:
            raise ValueError("key 'reward.verifier': 'none' leaves no reward; name reward.functions too")
        if self.weights is not None and len(self.weights) != n:
            raise ValueError(f"key 'reward.weights': {len(self.weights)} weights for {n} rewards "
                             f"({'ifeval + ' if self.verifier == 'ifeval' else ''}{len(self.functions)} function(s))")


@dataclass
class VerifiersConfig:
    # autoif:code isolation: "kernel" (bubblewrap namespaces + seccomp; refuses where the machine cannot)
    # or "unsafe" (opt-in: model-written code runs without kernel isolation, loud warning); docs/verifiers.md
    sandbox: Literal["kernel", "unsafe"] = "kernel"  # applied by pipeline.run_training (sandbox.configure)


@dataclass
class GeneralEvalConfig:
    """lm-evaluation-harness tasks on the final model (`uniapl eval general`); off while `tasks` is empty.

    The metrics land in the final stage's eval.after (and summary.json's) as general/<task>/<metric>.
    """

    tasks: list[str] = field(default_factory=list)  # lm-eval task/group names, e.g. [mmlu, gsm8k]
    include_path: Optional[str] = None  # folder of extra YAML tasks (e.g. configs/lm_eval_tasks)
    limit: Optional[int] = None  # documents per task
    batch_size: int = 8
    num_fewshot: Optional[int] = None
    apply_chat_template: bool = False
    builtin_tasks: bool = True  # False: only tasks under include_path (skips indexing lm-eval's own)
    confirm_run_unsafe_code: bool = False  # humaneval / mbpp run model-written code, unsandboxed

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"key 'eval.general.limit' must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"key 'eval.general.batch_size' must be >= 1, got {self.batch_size}")


@dataclass
class EvalConfig:
    enabled: bool = True
    max_new_tokens: int = 64
    batch_size: int = 64
    limit: Optional[int] = None
    every: int = 0  # evaluate every N steps during training (0: only before/after)
    before: bool = True  # evaluate the starting model too (eval.before in summary.json)
    save_responses: bool = True  # write the final evaluation's responses to eval_responses.jsonl
    general: GeneralEvalConfig = field(default_factory=GeneralEvalConfig)


@dataclass
class LoggingConfig:
    progress: bool = True
    report_to: list[str] = field(default_factory=list)  # accelerate trackers: tensorboard, wandb, ...
    project: str = "uniapl"


@dataclass
class StageConfig:
    name: str = ""
    algorithm: Optional[str] = None
    overrides: dict[str, Any] = field(default_factory=dict)
    # first stage only: reuse its result from the stage cache when an identical stage (config, start model,
    # uniapl source, library versions) ran before (uniapl.training.stage_cache; $UNIAPL_CACHE_DIR)
    cache: bool = False


@dataclass
class Config:
    algorithm: str = "unified"
    seed: int = 0
    output_dir: str = "runs/default"
    resume: bool = False  # continue the run in output_dir from its last checkpoint
    overwrite: bool = False  # replace the results of an earlier run in output_dir (else such a dir is refused)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    verifiers: VerifiersConfig = field(default_factory=VerifiersConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    stages: list[StageConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        from uniapl.algorithms import ALGORITHMS

        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"key 'algorithm': unknown algorithm {self.algorithm!r}; allowed: {', '.join(ALGORITHMS)}")
        if self.resume and self.overwrite:
            raise ConfigError("keys 'resume' and 'overwrite': choose one (resume continues the run, overwrite replaces it)")


def _line_map(text: str) -> dict[str, int]:
    """dotted key -> 1-based line of that key in a YAML document."""
    lines: dict[str, int] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}.{k.value}" if prefix else str(k.value)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                key = f"{prefix}[{i}]"
                lines[key] = v.start_mark.line + 1
                walk(v, key)

    try:
        walk(yaml.compose(text), "")
    except yaml.YAMLError:
        pass
    return lines


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"command line: override {item!r} must look like key=value (e.g. train.steps=50)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"command line: override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_raw(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict, Any]:
    """YAML file + overrides -> (merged dict, where(key) function for error messages)."""
    data: dict = {}
    lines: dict[str, int] = {}
    fname = str(path) if path else "<defaults>"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        text = p.read_text()
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of config keys")
        data = loaded
        lines = _line_map(text)
    cli_keys: set[str] = set()
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(data, key, value)
        cli_keys.add(key)

    def where(key: str) -> str:
        if key in cli_keys:
            return "command line"
        if key in lines:
            return f"{fname}:{lines[key]}"
        # a parent key's line is still useful
        parts = key.split(".")
        while parts:
            parts.pop()
            k = ".".join(parts)
            if k in cli_keys:
                return "command line"
            if k in lines:
                return f"{fname}:{lines[k]}"
        return fname

    return data, where


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load and validate a config. Raises ConfigError naming the key, its origin and what is allowed."""
    data, where = load_raw(path, overrides)
    try:
        cfg = from_dict(Config, data, where=where)
    except ConfigError:
        raise
    for i, stage in enumerate(cfg.stages):  # validate every stage now, not hours later
        stage_config(cfg, i, where=where)
    return cfg


def stage_config(cfg: Config, index: int, where: Any = None) -> Config:
    """The full config of stage `index`: base config + the stage's algorithm and overrides."""
    stage = cfg.stages[index]
    base = to_dict(cfg)
    base.pop("stages")
    if stage.algorithm is not None:
        base["algorithm"] = stage.algorithm
    merged = deep_merge(base, copy.deepcopy(stage.overrides))
    prefix_where = (lambda key: f"stage {index} ({stage.name or index}) overrides") if where is None else (
        lambda key: f"{where(f'stages[{index}]')} (stage {stage.name or index})"
    )
    if "stages" in merged:
        raise ConfigError(f"{prefix_where('')}: a stage cannot define stages")
    return from_dict(Config, merged, where=prefix_where)


def stage_configs(cfg: Config) -> list[tuple[str, Config]]:
    """[(stage name, full config)], one entry for a single-stage config."""
    if not cfg.stages:
        return [(cfg.algorithm, cfg)]
    out = []
    names = set()
    for i, stage in enumerate(cfg.stages):
        name = stage.name or f"{i}-{stage.algorithm or cfg.algorithm}"
        if name in names:
            raise ConfigError(f"stages: duplicate stage name {name!r}")
        names.add(name)
        if stage.cache and i > 0:
            raise ConfigError(f"key 'stages.{i}.cache': only the first stage can be cached (a later stage starts "
                              f"from the run's own earlier stage)")
        out.append((name, stage_config(cfg, i)))
    return out


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
