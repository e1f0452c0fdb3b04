"""The ``discriminator:`` section of a uniapl YAML config.

Plain dataclasses (int/float/str/bool/Optional/Literal/list/dict/nested dataclasses only) so the config
loader can build them from YAML and apply ``discriminator.a.b=v`` overrides.

Example::

    discriminator:
      name: polar_server          # lexical | embedding | polar | polar_server | learned | <your own>
      transform: algorithm1       # algorithm1 | 2p-1 | tanh | <your own>
      reference: teacher          # teacher | ground_truth (paper Table 6)
      server: {url: "http://127.0.0.1:30000", backend: lmdeploy}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional


@dataclass
class PolarConfig:
    """POLAR input encoding and truncation (see ``uniapl.discriminators.polar``)."""

    wrapper: Literal["sft", "pretrain"] = "sft"
    max_length: int = 16384  # whole encoded input, in tokens
    max_response_length: int = 4096  # reference and candidate are each capped at this many tokens
    response_cut_side: Literal["right", "left"] = "right"  # right: keep the first tokens; left: the last


@dataclass
class ServerConfig:
    """A served POLAR (or any reward model speaking the same protocol)."""

    url: Optional[str] = None  # e.g. "http://127.0.0.1:30000" (a bare "host:port" is accepted)
    backend: Literal["lmdeploy", "vllm", "sglang"] = "lmdeploy"
    model: Optional[str] = None  # "model" field of the request; defaults to the model path's last part
    timeout_s: float = 60.0  # per request
    max_retries: int = 3  # retries after the first attempt
    backoff_s: float = 0.5  # first wait; doubles after each failure
    max_backoff_s: float = 8.0
    max_total_s: float = 120.0  # all attempts of one request together (timeouts and waits), then an error
    check_timeout_s: float = 10.0  # the check before any work (one tiny request, retried within this); 0: none
    api_key_env: Optional[str] = None  # name of an environment variable holding a bearer token


@dataclass
class LearnedConfig:
    """The online-trained teacher-vs-student classifier (``name: learned``)."""

    model: Literal["hashed_bow", "hf"] = "hashed_bow"  # hf: a local AutoModelForSequenceClassification at model_path
    use_prompt: bool = False  # also feed the prompt to the classifier
    num_buckets: int = 65536  # hashed_bow: feature-hash size
    embed_dim: int = 64
    hidden_size: int = 64
    max_chars: int = 4000  # texts are cut to this many characters before featurising (hashed_bow)
    max_tokens: int = 512  # hf: texts are truncated to this many tokens
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-2
    weight_decay: float = 0.0
    updates_per_step: int = 1  # passes over each policy step's teacher/student batch (the update ratio)
    update_every: int = 1  # update only every k-th policy step
    minibatch_size: int = 64
    label_smoothing: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    sync_across_ranks: bool = True  # under torch.distributed, every rank trains on all ranks' answers (same weights)


@dataclass
class DiscriminatorConfig:
    """Which discriminator scores (prompt, reference, candidate) and how its score becomes a coefficient."""

    name: str = "lexical"  # a name registered with register_discriminator
    transform: str = "algorithm1"  # a name registered with register_transform
    reference: Literal["teacher", "ground_truth"] = "teacher"
    batch_size: int = 32
    # offline similarity scorers (lexical, embedding): r = -similarity_offset - similarity_scale * (1 - s)
    similarity_scale: Optional[float] = None  # None: the scorer's own default (documented per scorer)
    similarity_offset: float = 0.5
    cache_size: int = 4096  # reference encodings kept (LRU), per scorer
    # local models (polar, embedding, learned with model=hf)
    model_path: Optional[str] = None
    tokenizer_path: Optional[str] = None  # defaults to model_path
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    trust_remote_code: bool = True
    polar: PolarConfig = field(default_factory=PolarConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    learned: LearnedConfig = field(default_factory=LearnedConfig)
    options: dict[str, Any] = field(default_factory=dict)  # free-form, for user-registered scorers
