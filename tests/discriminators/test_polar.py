"""POLAR: input encoding against hand-written strings, truncation, and the local model path."""

import pytest
import torch

from uniapl.discriminators import DiscriminatorConfig, PolarConfig, build_discriminator
from uniapl.discriminators.polar import PolarEncoder, PolarScorer, extract_scores, format_input, truncate_ids


def test_format_sft_strings():
    assert format_input("What is 1+1?", "2", "It is 2.") == "What is 1+1?\n2<|reward|>What is 1+1?\nIt is 2.[UNUSED_TOKEN_130]"


def test_format_pretrain_strings():
    got = format_input("What is 1+1?", "2", "It is 2.", wrapper="pretrain")
    assert got == "What is 1+1?2<|reward|>What is 1+1?It is 2.[UNUSED_TOKEN_130]"


def test_format_chat_messages():
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of China?"}]
    reference = [{"role": "assistant", "content": "Beijing."}]
    got = format_input(prompt, reference, "Shanghai.")
    assert got == "Be brief.\nCapital of China?\nBeijing.<|reward|>Be brief.\nCapital of China?\nShanghai.[UNUSED_TOKEN_130]"
    two_turns = [{"role": "assistant", "content": "Beijing."}, {"role": "assistant", "content": "Sure."}]
    assert format_input("Q", "R", two_turns) == "Q\nR<|reward|>Q\nBeijing.\nSure.[UNUSED_TOKEN_130]"


def test_format_empty_parts_keep_newlines():
    # POLAR's check `len(r) == ""` is never true: the sft wrapper always inserts the newline
    assert format_input("Q", "", "A") == "Q\n<|reward|>Q\nA[UNUSED_TOKEN_130]"
    assert format_input("", "R", "") == "\nR<|reward|>\n[UNUSED_TOKEN_130]"
    with pytest.raises(ValueError):
        format_input("Q", "R", "A", wrapper="chat")


def test_truncate_ids_by_hand():
    ref, out = list(range(100, 105)), list(range(200, 202))
    p, r, o = truncate_ids(list(range(10)), ref, out, max_length=20, max_response_length=3)
    assert r == [100, 101, 102] and o == [200, 201]
    assert p == [5, 6, 7, 8, 9]  # budget (20 - 4 - 3 - 2) // 2 = 5, last tokens kept
    _, r, _ = truncate_ids([], ref, out, max_length=20, max_response_length=3, response_cut_side="left")
    assert r == [102, 103, 104]
    p, _, _ = truncate_ids(list(range(10)), ref, out, max_length=9, max_response_length=3)
    assert p == []  # budget (9 - 4 - 5) // 2 = 0
    p, r, o = truncate_ids([1, 2], [3], [4], max_length=100, max_response_length=10)
    assert (p, r, o) == ([1, 2], [3], [4])
    with pytest.raises(ValueError):
        truncate_ids([], [], [], response_cut_side="middle")


def test_encoder_truncates_like_polar(byte_tokenizer):
    # byte tokenizer: text of n ASCII chars = BOS + n tokens
    enc = PolarEncoder(byte_tokenizer, PolarConfig(max_length=20, max_response_length=4))
    # ref "abcdef" -> 7 ids -> first 4 = BOS a b c -> "abc"; out "xyz" -> 4 ids; prompt 11 ids, budget (20-4-8)//2 = 4
    assert enc.encode("0123456789", "abcdef", "xyz") == "6789\nabc<|reward|>6789\nxyz[UNUSED_TOKEN_130]"
    left = PolarEncoder(byte_tokenizer, PolarConfig(max_length=20, max_response_length=4, response_cut_side="left"))
    assert left.encode("0123456789", "abcdef", "xyz") == "6789\ncdef<|reward|>6789\nxyz[UNUSED_TOKEN_130]"
    # nothing to cut: the text is unchanged
    big = PolarEncoder(byte_tokenizer)
    assert big.encode("Q?", "ref", "out") == format_input("Q?", "ref", "out")
    # per-prompt and per-reference encodings are cached
    for _ in range(3):
        big.encode("Q?", "ref", "another")
    assert big._ids.hits >= 4


def test_encoder_without_tokenizer_formats_only():
    assert PolarEncoder(None).encode("Q", "R", "A") == format_input("Q", "R", "A")


def test_extract_scores_shapes():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert extract_scores(torch.tensor([[1.0], [2.0]]), mask).tolist() == [1.0, 2.0]
    per_token = torch.tensor([[1.0, 2.0, 9.0], [4.0, 5.0, 6.0]])
    assert extract_scores(per_token, mask).tolist() == [2.0, 6.0]  # last real token
    assert extract_scores({"logits": per_token.unsqueeze(-1)}, mask).tolist() == [2.0, 6.0]
    with pytest.raises(ValueError):
        extract_scores(torch.zeros(2, 3, 4), mask)


@pytest.mark.parametrize("kind", ["plain", "remote"])
def test_local_polar_scores_batched_like_single(tiny_scorer_dirs, kind):
    cfg = DiscriminatorConfig(name="polar", model_path=tiny_scorer_dirs[kind], batch_size=3, device="cpu")
    disc = build_discriminator(cfg)
    expected_cls = "LlamaForSequenceClassification" if kind == "plain" else "TinyPolarRewardModel"
    assert type(disc.scorer.model).__name__ == expected_cls
    cands = ["short", "a much longer candidate answer here", "mid length", "x", "yet another one, medium"]
    prompts = [[{"role": "user", "content": "Say something."}]] * 5
    coef, raw, metrics = disc.coefficients(prompts, cands, teachers=["a reference"] * 5, ground_truths=[None] * 5)
    assert raw.dtype == torch.float32 and raw.shape == (5,) and torch.isfinite(raw).all()
    single = torch.cat([disc.scorer.score(prompts[:1], ["a reference"], [c]) for c in cands])
    assert torch.allclose(raw, single, atol=1e-5)  # right padding does not change a score
    assert len(set(raw.tolist())) > 1


def test_local_polar_dtype_and_remote_code_flag(tiny_scorer_dirs):
    scorer = PolarScorer(DiscriminatorConfig(name="polar", model_path=tiny_scorer_dirs["plain"], dtype="bfloat16"))
    assert next(scorer.model.parameters()).dtype == torch.bfloat16
    assert scorer.score(["q"], ["r"], ["c"]).dtype == torch.float32
    with pytest.raises(ValueError, match="trust_remote_code"):
        PolarScorer(DiscriminatorConfig(name="polar", model_path=tiny_scorer_dirs["remote"], trust_remote_code=False))
    with pytest.raises(ValueError, match="model_path"):
        PolarScorer(DiscriminatorConfig(name="polar"))
