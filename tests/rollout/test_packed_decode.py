"""oneDNN-packed decode weights (`rollout.builtin.prepack`): same products, same samples, live weights."""

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from uniapl.config import ConfigError, load_config
from uniapl.models.logprobs import completion_logprobs
from uniapl.rollout import EngineOptions, SamplingParams
from uniapl.rollout.engine import PREPACK_MIN_TOKENS, SMALL_DECODE_FLOPS, generate, prepack_rows
from uniapl.rollout.packed_linear import PackedLinear, maybe_packed, prepack_supported
from uniapl.rollout.steppers import StaticKVStepper

pytestmark = pytest.mark.skipif(not prepack_supported(torch.zeros(1)), reason="this PyTorch has no oneDNN")

V, EOS = 97, 96


def _llama(bias: bool = False):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, attention_bias=bias, mlp_bias=bias)
    return LlamaForCausalLM(cfg).eval()


def _qwen3():
    torch.manual_seed(1)
    cfg = Qwen3Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=128, tie_word_embeddings=True)
    return Qwen3ForCausalLM(cfg).eval()


@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_equals_f_linear_for_any_rows(bias):
    torch.manual_seed(0)
    lin = torch.nn.Linear(40, 24, bias=bias)
    packed = PackedLinear(lin, rows=8)
    with torch.inference_mode():
        for rows in (8, 3, 1, 17):  # the hint and other row counts (finished rows leave the batch)
            x = torch.randn(rows, 40)
            assert torch.allclose(packed(x), F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
        x3 = torch.randn(2, 5, 40)
        assert packed(x3).shape == (2, 5, 24)
        assert torch.allclose(packed(x3), lin(x3), rtol=1e-5, atol=1e-5)
    # the pack is a copy: changing the module afterwards does not change the packed product
    with torch.no_grad():
        before = packed(x3)
        lin.weight.mul_(2.0)
        assert torch.allclose(packed(x3), before) and not torch.allclose(lin(x3), before, atol=1e-3)


def test_maybe_packed_keeps_what_it_cannot_pack():
    lin = torch.nn.Linear(8, 8)
    assert isinstance(maybe_packed(lin, 4), PackedLinear)
    assert maybe_packed(lin, 0) is lin
    half = torch.nn.Linear(8, 8).to(torch.bfloat16)
    assert maybe_packed(half, 4) is half  # float32 only
    other = torch.nn.Identity()
    assert maybe_packed(other, 4) is other


@pytest.mark.parametrize("make", [_llama, lambda: _llama(bias=True), _qwen3], ids=["llama", "llama-bias", "qwen3"])
def test_packed_decode_logits_equal_the_modules(make):
    model = make()
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        plain, packed = StaticKVStepper(model, 6), StaticKVStepper(model, 6, prepack_rows=2)
        assert isinstance(packed.head_proj, PackedLinear) and isinstance(packed.proj[0].down, PackedLinear)
        assert plain.head_proj is model.lm_head  # unpacked: the modules themselves
        a, b = plain.prefill(ids, mask, pos), packed.prefill(ids, mask, pos)
        nxt, p = a.argmax(-1), mask.sum(-1)
        for _ in range(5):
            a, b = plain.decode(nxt, p), packed.decode(nxt, p)
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
            nxt, p = a.argmax(-1), p + 1


def test_packed_engine_samples_match_trainer_and_unpacked_engine():
    model = _llama()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]
    params = SamplingParams(max_new_tokens=12, temperature=1.0, num_samples=3, seed=5)
    opts = dict(eos_token_ids=[EOS], pad_token_id=0)
    packed = generate(model, prompts, params, **opts, options=EngineOptions(prepack=True))
    plain = generate(model, prompts, params, **opts, options=EngineOptions(prepack=False))
    # one uniform per row and step: products equal to ~1e-6 pick the same tokens
    assert torch.equal(packed.completion_ids, plain.completion_ids)
    ids, attn = packed.sequences()
    with torch.no_grad():
        ref = completion_logprobs(model, ids, attn, packed.completion_ids.shape[1], temperature=1.0)
    m = packed.completion_mask.bool()
    assert torch.allclose(packed.logprobs[m], ref[m], atol=1e-4)  # why rollout correction stays off for "hf"


def test_packed_engine_samples_from_the_weights_of_each_call():
    model = _llama()
    prompts = [[1, 2, 3], [4, 5]]
    params = SamplingParams(max_new_tokens=10, temperature=0.0)
    packed = EngineOptions(prepack=True)
    first = generate(model, prompts, params, eos_token_ids=[EOS], pad_token_id=0, options=packed)
    with torch.no_grad():  # an optimizer-like in-place update of every weight
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    second = generate(model, prompts, params, eos_token_ids=[EOS], pad_token_id=0, options=packed)
    plain = generate(model, prompts, params, eos_token_ids=[EOS], pad_token_id=0, options=EngineOptions(prepack=False))
    assert not torch.equal(first.completion_ids, second.completion_ids)
    assert torch.equal(second.completion_ids, plain.completion_ids)


def test_prepack_auto_rule():
    model = _llama()
    numel = sum(p.numel() for p in model.parameters())
    big_rows = int(SMALL_DECODE_FLOPS / (2 * numel)) + 1  # a decode forward of >= SMALL_DECODE_FLOPS
    auto, on, off = EngineOptions(), EngineOptions(prepack=True), EngineOptions(prepack=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert prepack_rows(model, big_rows, 64, auto) == big_rows
        assert prepack_rows(model, big_rows - 2, 64, auto) == 0  # a small decode forward
        assert prepack_rows(model, big_rows, PREPACK_MIN_TOKENS - 1, auto) == 0  # too few tokens to pay
        assert prepack_rows(model, big_rows, 64, off) == 0
        assert prepack_rows(model, 3, 2, on) == 3
        torch.set_num_threads(1)
        assert prepack_rows(model, big_rows, 64, auto) == 0  # one thread: measured no faster
    finally:
        torch.set_num_threads(threads)


def test_prepack_key_is_validated(tmp_path):
    assert load_config(None, ["rollout.builtin.prepack=false"]).rollout.builtin.prepack is False
    with pytest.raises((ConfigError, ValueError), match="prepack"):
        load_config(None, ["rollout.builtin.prepack=sometimes"])
