import os
import tempfile

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the stage cache (stages[0].cache, on in the quickstart) never touches ~/.cache; each test gets its own below
os.environ["UNIAPL_CACHE_DIR"] = tempfile.mkdtemp(prefix="uniapl-test-cache-")

TINY = [
    "model.embedded.hidden_size=32",
    "model.embedded.intermediate_size=64",
    "model.embedded.num_hidden_layers=2",
    "model.embedded.num_attention_heads=2",
    "model.embedded.num_key_value_heads=1",
    "model.embedded.head_dim=16",
    "model.embedded.vocab_size=400",
    "data.synthetic.n_train=64",
    "data.synthetic.n_eval=8",
    "data.synthetic.n_warmup=64",
    "data.synthetic.check_language=false",
    "train.steps=2",
    "train.sft_batch_size=4",
    "train.pref_batch_size=2",
    "train.learning_rate=1e-3",
    "rollout.num_generations=2",
    "rollout.max_new_tokens=8",
    "eval.max_new_tokens=8",
    "logging.progress=false",
]


@pytest.fixture
def tiny_overrides(tmp_path):
    """Overrides that shrink the quickstart to a seconds-long run writing into tmp_path."""
    return TINY + [f"output_dir={tmp_path / 'run'}"]


@pytest.fixture(autouse=True)
def _own_stage_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIAPL_CACHE_DIR", str(tmp_path / "uniapl-cache"))
