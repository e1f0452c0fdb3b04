"""The engine and the log-prob path on a CUDA device (skipped without one): the same checks as on the CPU."""

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from uniapl.models.logprobs import completion_logprobs
from uniapl.rollout import EngineOptions, SamplingParams
from uniapl.rollout.engine import generate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
V = 97


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=128, tie_word_embeddings=True)
    return Qwen3ForCausalLM(cfg).eval().cuda()


def _naive(model, ids, attn, t, temperature=1.0):
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, -t - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, ids[:, -t:, None]).squeeze(-1)


def test_cuda_greedy_matches_hf_generate_and_static_equals_dynamic(model):
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15]]
    params = SamplingParams(max_new_tokens=10, temperature=0.0)
    out = {c: generate(model, prompts, params, eos_token_ids=[96], pad_token_id=0, options=EngineOptions(cache=c))
           for c in ("static", "dynamic")}
    assert torch.equal(out["static"].completion_ids, out["dynamic"].completion_ids)
    for i, p in enumerate(prompts):
        ref = model.generate(torch.tensor([p], device="cuda"), max_new_tokens=10, do_sample=False, eos_token_id=96,
                             pad_token_id=0)
        n = int(out["static"].completion_mask[i].sum())
        assert out["static"].completion_ids[i, :n].tolist() == ref[0, len(p):].tolist()


def test_cuda_sampled_logprobs_equal_teacher_forced(model):
    params = SamplingParams(max_new_tokens=12, temperature=0.9, num_samples=3, seed=3)
    out = generate(model, [[1, 2, 3], [4, 5, 6, 7, 8]], params, eos_token_ids=list(range(80, 97)), pad_token_id=0)
    assert out.completion_ids.is_cuda
    ids, attn = out.sequences()
    ref = _naive(model, ids, attn, out.completion_ids.shape[1], 0.9)
    m = out.completion_mask.bool()
    assert torch.allclose(out.logprobs[m], ref[m], atol=1e-4)
    again = generate(model, [[1, 2, 3], [4, 5, 6, 7, 8]], params, eos_token_ids=list(range(80, 97)), pad_token_id=0)
    assert torch.equal(again.completion_ids, out.completion_ids)


@pytest.mark.parametrize("chunk_rows", [4, None])
def test_cuda_chunked_logprobs_equal_naive_with_grad(model, chunk_rows):
    torch.manual_seed(1)
    g, t = 3, 6
    prompts = torch.randint(1, V, (2, 5), device="cuda")
    ids = torch.cat([prompts.repeat_interleave(g, 0), torch.randint(1, V, (2 * g, t), device="cuda")], 1)
    attn = torch.ones_like(ids)
    attn[:g, :2] = 0
    w = torch.randn(2 * g, t, device="cuda")
    model.train()
    try:
        grads = {}
        for name, fn in (("fast", lambda: completion_logprobs(model, ids, attn, t, temperature=0.7, chunk_rows=chunk_rows)),
                         ("naive", lambda: _naive(model, ids, attn, t, 0.7))):
            model.zero_grad()
            lp = fn()
            (lp * w).sum().backward()
            grads[name] = (lp.detach(), [p.grad.clone() for p in model.parameters()])
        assert torch.allclose(grads["fast"][0], grads["naive"][0], atol=1e-5)
        for a, b in zip(grads["fast"][1], grads["naive"][1]):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    finally:
        model.zero_grad()
        model.eval()
