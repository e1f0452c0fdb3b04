"""A local Hugging Face model directory with a Qwen3-style chat template (think block) end to end."""

import json

import pytest

from uniapl.data.chat import encode_prompt, encode_target
from uniapl.data.records import Record
from uniapl.models.loading import build_embedded_model, build_embedded_tokenizer

QWEN3_LIKE = (
    "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
THINK = "<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def local_model(tmp_path_factory):
    from uniapl.config import EmbeddedModelConfig

    texts = ["Write in lowercase please.", "hello world this is fine", "<think>", "</think>", "P.S. more text"] * 50
    tok = build_embedded_tokenizer(texts, 300)
    tok.chat_template = QWEN3_LIKE
    model = build_embedded_model(tok, EmbeddedModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                          num_attention_heads=2, num_key_value_heads=1, head_dim=16),
                                 seed=0)
    d = tmp_path_factory.mktemp("hfmodel")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d, tok


def test_prompt_ends_with_empty_think_block_and_is_masked(local_model):
    _, tok = local_model
    rec = Record(prompt="Write in lowercase please.")
    p = encode_prompt(tok, rec, enable_thinking=False)
    assert tok.decode(p).endswith("<|im_start|>assistant\n" + THINK)
    # the response is the completion; the think block stays in the (masked) prompt
    prompt_ids, comp = encode_target(tok, p, "hello world", eos_id=tok.eos_token_id, think_prefix=THINK)
    assert tok.decode(comp) == "hello world<|im_end|>"
    # with thinking on, the prompt has no think block; a response carrying it has it moved into the prompt
    p2 = encode_prompt(tok, rec, enable_thinking=True)
    assert not tok.decode(p2).endswith(THINK)
    prompt2, comp2 = encode_target(tok, p2, THINK + "hello world", eos_id=tok.eos_token_id, think_prefix=THINK)
    assert tok.decode(prompt2).endswith(THINK) and tok.decode(comp2) == "hello world<|im_end|>"
    _, comp3 = encode_target(tok, p2, THINK + "hello world", eos_id=tok.eos_token_id, think_prefix=THINK,
                             mask_think_prefix=False)
    assert tok.decode(comp3).startswith("<think>")


def test_train_local_model_dir_on_jsonl(local_model, tmp_path):
    from uniapl.config import load_config
    from uniapl.training.run import run_training

    d, _ = local_model
    data = tmp_path / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": "Write in lowercase please."}],
             "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}],
             "ground_truth": "hello world this is fine", "teacher": "hello world"}] * 4
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [f"model.name_or_path={d}", f"data.train.path={data}", f"data.eval.path={data}",
                             "algorithm=unified", "train.steps=1", "train.sft_batch_size=2", "train.pref_batch_size=1",
                             "rollout.num_generations=2", "rollout.max_new_tokens=4", "eval.max_new_tokens=4",
                             "logging.progress=false", f"output_dir={tmp_path / 'out'}"])
    s = run_training(cfg)
    assert s["steps"] == 1 and s["eval"]["after"]["num_prompts"] == 4
