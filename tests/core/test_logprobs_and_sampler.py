"""The rollout engine and the chunked log-prob path against naive computations."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from uniapl.models.logprobs import ChunkedHeadLogprobs, _shared_prompt_hidden, PolicyLogprobs, completion_logprobs, selective_log_softmax
from uniapl.rollout import EngineOptions, SamplingParams, build_engine
from uniapl.rollout.engine import KVCacheEngine, generate
from uniapl.rollout.sampling import next_tokens
from uniapl.rollout.steppers import HFDynamicStepper, StaticKVStepper, make_stepper, static_kv_unsupported

V = 97
EOS = 96


def _qwen3(**kw):
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=128, tie_word_embeddings=True, **kw)
    return Qwen3ForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model():
    return _qwen3()


def naive_logprobs(model, ids, attn, t, temperature=1.0):
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, -t - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, ids[:, -t:, None]).squeeze(-1)


def naive_entropy(model, ids, attn, t, temperature=1.0):
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, -t - 1 : -1].float() / temperature
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


def _batch(seed=1, rows=3, width=12):
    torch.manual_seed(seed)
    ids = torch.randint(0, V, (rows, width))
    attn = torch.ones_like(ids)
    attn[0, :3] = 0  # left padding
    return ids, attn


# ------------------------------------------------------------------------------------------------ log-probs
def test_selective_log_softmax_and_entropy_match_naive():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 50)
    idx = torch.randint(0, 50, (3, 7))
    logp = torch.log_softmax(logits, -1)
    ref = logp.gather(-1, idx[..., None]).squeeze(-1)
    assert torch.allclose(selective_log_softmax(logits, idx, chunk_rows=4), ref, atol=1e-5)
    lp, ent = selective_log_softmax(logits, idx, chunk_rows=4, return_entropy=True)
    assert torch.allclose(lp, ref, atol=1e-5) and torch.allclose(ent, -(logp.exp() * logp).sum(-1), atol=1e-5)


@pytest.mark.parametrize("chunk_rows", [4, None])
def test_completion_logprobs_and_entropies_equal_naive_with_grad(model, chunk_rows):
    ids, attn = _batch()
    lp, ent = completion_logprobs(model, ids, attn, 5, temperature=0.7, chunk_rows=chunk_rows, return_entropy=True)
    assert torch.allclose(lp, naive_logprobs(model, ids, attn, 5, 0.7), atol=1e-5)
    assert torch.allclose(ent, naive_entropy(model, ids, attn, 5, 0.7), atol=1e-5)
    assert torch.allclose(completion_logprobs(model, ids, attn, 5, temperature=0.7, chunk_rows=chunk_rows), lp)
    # gradients through the checkpointed chunks equal the naive gradients, for log-probs and entropies
    w = torch.randn(3, 5)

    def grads(fn):
        model.zero_grad()
        with torch.enable_grad():
            fn().backward()
        g = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        return g

    for fast, slow in [
        (lambda: (completion_logprobs(model, ids, attn, 5, temperature=0.7, chunk_rows=chunk_rows) * w).sum(),
         lambda: (naive_logprobs(model, ids, attn, 5, 0.7) * w).sum()),
        (lambda: (completion_logprobs(model, ids, attn, 5, temperature=0.7, chunk_rows=chunk_rows,
                                      return_entropy=True)[1] * w).sum(),
         lambda: (naive_entropy(model, ids, attn, 5, 0.7) * w).sum()),
    ]:
        g_fast, g_slow = grads(fast), grads(slow)
        assert g_fast.keys() == g_slow.keys()
        for n in g_fast:
            assert torch.allclose(g_fast[n], g_slow[n], atol=1e-5), n


@pytest.mark.parametrize("use", ["logp", "entropy", "both"])
def test_chunked_head_function_gradients_equal_autograd(use):
    torch.manual_seed(0)
    h = torch.randn(13, 8, requires_grad=True)
    w = torch.randn(V, 8, requires_grad=True)
    b = torch.randn(V, requires_grad=True)
    y = torch.randint(0, V, (13,))
    g1, g2 = torch.randn(13), torch.randn(13)

    def objective(lp, ent):
        return {"logp": (lp * g1).sum(), "entropy": (ent * g2).sum(), "both": (lp * g1 + ent * g2).sum()}[use]

    lp, ent = ChunkedHeadLogprobs.apply(h, w, b, y, 1 / 0.7, 4, True)
    fast = torch.autograd.grad(objective(lp, ent), (h, w, b))
    z = torch.nn.functional.linear(h, w, b) / 0.7
    logp = torch.log_softmax(z, -1)
    ref_lp, ref_ent = logp.gather(-1, y[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)
    assert torch.allclose(lp, ref_lp, atol=1e-5) and torch.allclose(ent, ref_ent, atol=1e-5)
    slow = torch.autograd.grad(objective(ref_lp, ref_ent), (h, w, b))
    for a, c in zip(fast, slow):
        assert torch.allclose(a, c, atol=1e-5)


def test_policy_logprobs_module_keeps_its_call_signature(model):
    ids, attn = _batch()
    pol = PolicyLogprobs(model)
    lp = pol(ids, attn, 5, 1.0)
    lp2, ent = pol(ids, attn, 5, 1.0, return_entropy=True)
    assert lp.shape == (3, 5) and lp.dtype == torch.float32 and torch.equal(lp, lp2) and ent.shape == (3, 5)


# ------------------------------------------------------------------------------------------------ engine
def test_static_kv_cache_is_used_for_qwen3_and_dynamic_otherwise(model):
    assert static_kv_unsupported(model, 64) is None
    assert isinstance(make_stepper(model, 64, 8), StaticKVStepper)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=16, n_layer=1, n_head=2, n_positions=64))
    assert static_kv_unsupported(gpt2, 64) is not None
    assert isinstance(make_stepper(gpt2, 64, 8), HFDynamicStepper)
    with pytest.raises(ValueError):
        make_stepper(gpt2, 64, 8, "static")
    eng = build_engine("hf", model=model, eos_token_ids=[EOS], pad_token_id=0)
    assert isinstance(eng, KVCacheEngine)


@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_greedy_engine_matches_hf_generate(model, cache):
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16, 17]]
    out = generate(model, prompts, SamplingParams(max_new_tokens=10, temperature=0.0), eos_token_ids=[EOS],
                 pad_token_id=0, options=EngineOptions(cache=cache))
    for i, p in enumerate(prompts):
        ref = model.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False, eos_token_id=EOS, pad_token_id=0)
        n = int(out.completion_mask[i].sum())
        assert out.completion_ids[i, :n].tolist() == ref[0, len(p):].tolist()


@pytest.mark.parametrize("make", [
    lambda: LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=128)),
    lambda: Qwen2ForCausalLM(Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)),
    lambda: GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=16, n_layer=2, n_head=2, n_positions=64)),
], ids=["llama", "qwen2", "gpt2-dynamic-fallback"])
def test_other_architectures_greedy_match_hf_generate(make):
    torch.manual_seed(0)
    m = make().eval()
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    out = generate(m, prompts, SamplingParams(max_new_tokens=8, temperature=0.0), eos_token_ids=[EOS], pad_token_id=0)
    for i, p in enumerate(prompts):
        ref = m.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False, eos_token_id=EOS, pad_token_id=0)
        n = int(out.completion_mask[i].sum())
        assert out.completion_ids[i, :n].tolist() == ref[0, len(p):].tolist()[:n]


@pytest.mark.parametrize("cache", ["static", "dynamic"])
@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (20, 0.9)])
def test_sampled_logprobs_equal_teacher_forced(model, cache, top_k, top_p):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    eng = build_engine("hf", model=model, eos_token_ids=[EOS], pad_token_id=0, options=EngineOptions(cache=cache))
    params = SamplingParams(max_new_tokens=9, temperature=0.9, top_k=top_k, top_p=top_p, num_samples=3, seed=3)
    out = eng.generate(prompts, params)
    assert out.completion_ids.shape[0] == 6 and out.prompt_ids.shape[0] == 6
    assert torch.equal(out.prompt_ids[0], out.prompt_ids[2]) and not torch.equal(out.prompt_ids[0], out.prompt_ids[3])
    ids, attn = out.sequences()
    ref = naive_logprobs(model, ids, attn, out.completion_ids.shape[1], temperature=0.9)
    m = out.completion_mask.bool()
    assert torch.allclose(out.logprobs[m], ref[m], atol=1e-4)
    # same seed, same samples
    assert torch.equal(eng.generate(prompts, params).completion_ids, out.completion_ids)
    # outputs are ordinary tensors (usable in autograd), not inference-mode tensors
    assert not out.completion_ids.is_inference() and not out.logprobs.is_inference()


def test_static_cache_engine_equals_dynamic_cache_engine(model):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9], [1, 2, 3]]
    for params in (SamplingParams(max_new_tokens=12, temperature=0.0),
                   SamplingParams(max_new_tokens=12, temperature=1.0, num_samples=2, seed=7)):
        a = generate(model, prompts, params, eos_token_ids=[EOS], pad_token_id=0, options=EngineOptions(cache="static"))
        b = generate(model, prompts, params, eos_token_ids=[EOS], pad_token_id=0, options=EngineOptions(cache="dynamic"))
        assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.completion_mask, b.completion_mask)
        assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_eos_stops_rows_and_masks_after_with_and_without_compaction(model, monkeypatch):
    eos = list(range(60, 97))  # many end tokens: rows finish at different steps
    prompts = [[i, i + 1, i + 2] for i in range(1, 9)]
    params = SamplingParams(max_new_tokens=16, temperature=1.0, num_samples=2, seed=11)
    selected = []
    select = StaticKVStepper.select
    monkeypatch.setattr(StaticKVStepper, "select", lambda self, rows: (selected.append(len(rows)), select(self, rows)))
    runs = {}
    for name, opts in {"compact": EngineOptions(compact_fraction=0.1),
                       "no_compact": EngineOptions(compact_fraction=0.0),
                       "no_dedup": EngineOptions(dedup_prompts=False, compact_fraction=0.0),
                       "dynamic": EngineOptions(cache="dynamic", compact_fraction=0.5),
                       "sync_every_5": EngineOptions(check_every=5, compact_fraction=0.1)}.items():
        runs[name] = generate(model, prompts, params, eos_token_ids=eos, pad_token_id=0, options=opts)
    # "compact" prefilled 8 distinct prompts, repeated them to 16 rows, then dropped finished rows at least once
    assert selected[0] == 16 and any(k < 16 for k in selected[1:])
    ref = runs["no_compact"]
    lengths = ref.completion_mask.sum(-1)
    assert lengths.min() < lengths.max()  # the rows really finished at different steps
    for i in range(ref.completion_ids.shape[0]):
        n = int(lengths[i])
        row = ref.completion_ids[i].tolist()
        first_eos = next((j for j, t in enumerate(row) if t in eos), None)
        # the completion runs up to and including the first EOS (or to the token limit), then padding
        assert n == (first_eos + 1 if first_eos is not None else params.max_new_tokens)
        assert all(t == 0 for t in row[n:]) and torch.all(ref.logprobs[i, n:] == 0)
        assert ref.completion_mask[i, :n].all() and not ref.completion_mask[i, n:].any()
    for name, out in runs.items():
        assert torch.equal(out.completion_ids, ref.completion_ids), name
        assert torch.equal(out.completion_mask, ref.completion_mask), name
        assert torch.allclose(out.logprobs, ref.logprobs, atol=1e-5), name


def test_all_rows_ending_stops_the_loop(model):
    eos_model = _qwen3()
    with torch.no_grad():
        eos_model.model.norm.weight.zero_()  # hidden -> 0: all logits 0; argmax is token 0
    out = generate(eos_model, [[1, 2], [3, 4, 5]], SamplingParams(max_new_tokens=5, temperature=0.0), eos_token_ids=[0],
                 pad_token_id=0)
    assert out.completion_ids.shape[1] == 1 and out.completion_mask.tolist() == [[1], [1]]


def test_top_p_and_top_k_restrict_support(model):
    out = generate(model, [[3, 4, 5]], SamplingParams(max_new_tokens=4, temperature=1.0, top_k=1, num_samples=4, seed=0),
                 eos_token_ids=[EOS], pad_token_id=0)
    # top_k = 1 is greedy: all samples identical
    assert all(torch.equal(out.completion_ids[0], out.completion_ids[i]) for i in range(4))
    out_p = generate(model, [[3, 4, 5]], SamplingParams(max_new_tokens=4, temperature=1.0, top_p=1e-6, num_samples=4, seed=0),
                   eos_token_ids=[EOS], pad_token_id=0)
    assert all(torch.equal(out_p.completion_ids[0], out_p.completion_ids[i]) for i in range(4))


def test_inverse_cdf_sampling_follows_the_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 1.0, 2.0, -30.0, float("-inf")]]).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    tok, lp = next_tokens(logits.clone(), temperature=1.0, uniforms=torch.rand(20000, generator=g))
    freq = torch.bincount(tok, minlength=5).float() / 20000
    probs = torch.softmax(logits[0], -1)
    assert torch.allclose(freq, probs, atol=0.015) and freq[4] == 0
    assert torch.allclose(lp, probs.log()[tok], atol=1e-6)
    # extreme uniforms never pick a zero-probability token
    tok, _ = next_tokens(logits[:2].clone(), temperature=1.0, uniforms=torch.tensor([0.0, 1.0 - 2**-24]))
    assert tok[0] in (2, 3) and tok[1] == 0


def test_engine_restores_threads_and_training_mode(model):
    threads = torch.get_num_threads()
    model.train()
    try:
        generate(model, [[1, 2, 3]], SamplingParams(max_new_tokens=3, temperature=1.0, seed=0), eos_token_ids=[EOS],
               pad_token_id=0)
        assert model.training and torch.get_num_threads() == threads
    finally:
        model.eval()


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_shared_prompt_forward_equals_full_forward(arch):
    """GRPO groups repeat their prompt: the prompt runs once, values and gradients are unchanged."""
    if arch == "qwen3":
        m = _qwen3()
    else:
        torch.manual_seed(0)
        m = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))
    m.train()
    torch.manual_seed(2)
    prompts = torch.randint(1, V, (3, 6))
    pmask = torch.ones_like(prompts)
    pmask[0, :2] = 0  # left padding
    pmask[2, :4] = 0
    g, t = 3, 5
    ids = torch.cat([prompts.repeat_interleave(g, 0), torch.randint(1, V, (3 * g, t))], 1)
    attn = torch.cat([pmask.repeat_interleave(g, 0), torch.ones(3 * g, t, dtype=torch.long)], 1)
    attn[4, -2:] = 0  # a right-padded completion
    w = torch.randn(3 * g, t) * attn[:, -t:]
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    assert _shared_prompt_hidden(m, m.get_decoder(), ids, attn, pos, t) is not None  # the shared path runs
    assert _shared_prompt_hidden(m, m.get_decoder(), ids[::g], attn[::g], pos[::g], t) is None  # nothing repeats
    results = {}
    for share in (True, False):
        m.zero_grad()
        lp, ent = completion_logprobs(m, ids, attn, t, temperature=0.8, return_entropy=True, share_prompts=share)
        ((lp + 0.1 * ent) * w).sum().backward()
        results[share] = (lp.detach(), ent.detach(), {n: p.grad.clone() for n, p in m.named_parameters()})
    mask = attn[:, -t:].bool()
    (lp_s, ent_s, g_s), (lp_f, ent_f, g_f) = results[True], results[False]
    assert torch.allclose(lp_s[mask], lp_f[mask], atol=1e-5) and torch.allclose(ent_s[mask], ent_f[mask], atol=1e-5)
    for n in g_f:
        assert torch.allclose(g_s[n], g_f[n], atol=1e-5, rtol=1e-4), n
    m.zero_grad()
