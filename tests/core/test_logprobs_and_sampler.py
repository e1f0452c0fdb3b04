"""The rollout engine and the chunked log-prob path against naive computations."""

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from uniapl.logprobs import completion_logprobs, selective_log_softmax
from uniapl.rollout import SamplingParams, build_engine
from uniapl.rollout.hf_sampler import sample


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16, max_position_embeddings=128, tie_word_embeddings=True)
    return Qwen3ForCausalLM(cfg).eval()


def naive_logprobs(model, ids, attn, t, temperature=1.0):
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, -t - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, ids[:, -t:, None]).squeeze(-1)


def test_selective_log_softmax_matches_naive():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 50)
    idx = torch.randint(0, 50, (3, 7))
    ref = torch.log_softmax(logits, -1).gather(-1, idx[..., None]).squeeze(-1)
    assert torch.allclose(selective_log_softmax(logits, idx, chunk_rows=4), ref, atol=1e-5)


def test_completion_logprobs_chunked_equals_naive_with_grad(model):
    torch.manual_seed(1)
    ids = torch.randint(0, 97, (3, 12))
    attn = torch.ones_like(ids)
    attn[0, :3] = 0  # left padding
    fast = completion_logprobs(model, ids, attn, 5, temperature=0.7, chunk_rows=4)
    ref = naive_logprobs(model, ids, attn, 5, temperature=0.7)
    assert torch.allclose(fast, ref, atol=1e-5)
    # gradients through the checkpointed chunks equal the naive gradients
    model.zero_grad()
    with torch.enable_grad():
        completion_logprobs(model, ids, attn, 5, chunk_rows=4).sum().backward()
    g_fast = model.model.embed_tokens.weight.grad.clone()
    model.zero_grad()
    with torch.enable_grad():
        naive_logprobs(model, ids, attn, 5).sum().backward()
    assert torch.allclose(g_fast, model.model.embed_tokens.weight.grad, atol=1e-5)
    model.zero_grad()


def test_greedy_sampler_matches_hf_generate(model):
    prompts = [[5, 6, 7, 8], [9, 10]]
    out = sample(model, prompts, SamplingParams(max_new_tokens=6, temperature=0.0), eos_token_ids=[96], pad_token_id=0)
    for i, p in enumerate(prompts):
        ref = model.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False, eos_token_id=96, pad_token_id=0)
        n = int(out.completion_mask[i].sum())
        assert out.completion_ids[i, :n].tolist() == ref[0, len(p):].tolist()[:n]


def test_sampler_logprobs_equal_teacher_forced_and_groups(model):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    eng = build_engine("hf", model=model, eos_token_ids=[96], pad_token_id=0)
    out = eng.generate(prompts, SamplingParams(max_new_tokens=7, temperature=0.9, num_samples=3, seed=3))
    assert out.completion_ids.shape[0] == 6 and out.prompt_ids.shape[0] == 6
    assert torch.equal(out.prompt_ids[0], out.prompt_ids[2]) and not torch.equal(out.prompt_ids[0], out.prompt_ids[3])
    ids, attn = out.sequences()
    ref = naive_logprobs(model, ids, attn, out.completion_ids.shape[1], temperature=0.9)
    m = out.completion_mask.bool()
    assert torch.allclose(out.logprobs[m], ref[m], atol=1e-4)
    # same seed, same samples; another seed, other samples
    again = eng.generate(prompts, SamplingParams(max_new_tokens=7, temperature=0.9, num_samples=3, seed=3))
    assert torch.equal(again.completion_ids, out.completion_ids)


def test_sampler_stops_at_eos_and_masks_after(model):
    eos_model = Qwen3ForCausalLM(model.config).eval()
    eos_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        eos_model.model.norm.weight.zero_()  # hidden -> 0: logits all 0; then lm_head bias-free -> uniform
    out = sample(eos_model, [[1, 2]], SamplingParams(max_new_tokens=5, temperature=0.0), eos_token_ids=[0],
                 pad_token_id=0)
    # uniform logits: argmax is token 0 = EOS at the first step; completion is just EOS
    assert out.completion_ids.shape[1] == 1 and out.completion_mask.tolist() == [[1]]


def test_top_p_and_top_k_restrict_support(model):
    out = sample(model, [[3, 4, 5]] * 1, SamplingParams(max_new_tokens=4, temperature=1.0, top_k=1, num_samples=4, seed=0),
                 eos_token_ids=[96], pad_token_id=0)
    # top_k = 1 is greedy: all samples identical
    assert all(torch.equal(out.completion_ids[0], out.completion_ids[i]) for i in range(4))
    out_p = sample(model, [[3, 4, 5]], SamplingParams(max_new_tokens=4, temperature=1.0, top_p=1e-6, num_samples=4, seed=0),
                   eos_token_ids=[96], pad_token_id=0)
    assert all(torch.equal(out_p.completion_ids[0], out_p.completion_ids[i]) for i in range(4))
