"""Qwen3 non-thinking mode: one think block, masked, on every path; truncated targets end without EOS."""

import pytest
import torch

from tests.core.test_hf_model_and_chat import QWEN3_LIKE, THINK
from uniapl.data.chat import encode_prompt, encode_target, strip_think
from uniapl.data.records import Record
from uniapl.evaluation.ifeval import decode_completions
from uniapl.models.loading import build_embedded_tokenizer


@pytest.fixture(scope="module")
def tok():
    texts = ["Write in lowercase please.", "hello world this is fine", "<think>", "</think>", "P.S. more text"] * 50
    t = build_embedded_tokenizer(texts, 300)
    t.chat_template = QWEN3_LIKE
    return t


@pytest.mark.parametrize("mask", [True, False])
def test_response_with_think_prefix_gets_one_masked_block(tok, mask):
    p = encode_prompt(tok, Record(prompt="Write in lowercase please."), enable_thinking=False)
    prompt, comp = encode_target(tok, p, THINK + "hello world", eos_id=tok.eos_token_id, think_prefix=THINK,
                                 mask_think_prefix=mask)
    full = tok.decode(prompt + comp)
    assert full.count("<think>") == 1 and full.count("</think>") == 1, full
    assert tok.decode(prompt).endswith("assistant\n" + THINK)  # the block is in the masked prompt
    assert tok.decode(comp) == "hello world<|im_end|>"


def test_truncated_target_ends_without_eos(tok):
    p = encode_prompt(tok, Record(prompt="Write in lowercase please."), enable_thinking=False)
    words = tok("hello world this is fine", add_special_tokens=False)["input_ids"]
    n = len(words)
    _, cut = encode_target(tok, p, "hello world this is fine", eos_id=tok.eos_token_id, max_tokens=n - 1)
    assert cut == words[: n - 1] and tok.eos_token_id not in cut
    _, fits = encode_target(tok, p, "hello world this is fine", eos_id=tok.eos_token_id, max_tokens=n + 1)
    assert fits == words + [tok.eos_token_id]
    # EOS is part of the answer: an answer that fills the budget exactly loses its EOS, not a word
    _, exact = encode_target(tok, p, "hello world this is fine", eos_id=tok.eos_token_id, max_tokens=n)
    assert exact == words


def test_strip_think_and_decoded_completions(tok):
    assert strip_think(THINK + "hello") == "hello"
    assert strip_think("<think>\nsome reasoning\n</think>\n\nanswer <think>x</think> end") == "answer end"
    assert strip_think("no block") == "no block"
    # what verifiers and discriminators see of a rollout: the answer, without a think block it emitted
    ids = tok(THINK + "hello world", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    texts = decode_completions(tok, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), [tok.eos_token_id])
    assert texts == ["hello world"]
