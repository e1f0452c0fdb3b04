"""`uniapl convert gguf`: a GGUF file written here (gguf.GGUFWriter, llama.cpp's layout) becomes a HF folder
whose model computes the same logits as the model the GGUF was written from, and whose tokenizer encodes
the same ids."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from uniapl.cli import main
from uniapl.models.convert import convert_gguf
from uniapl.models.loading import build_embedded_tokenizer

gguf = pytest.importorskip("gguf")

TEXTS = ["the quick brown fox jumps over the lazy dog", "write a short poem about the sea", "hello world"] * 20


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    # llama.cpp stores q/k rows interleaved for its rotary kernel (convert_hf_to_gguf.py); transformers undoes it
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path):
    tok = build_embedded_tokenizer(TEXTS, vocab_size=300)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
                      rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=None,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_block_count(2)
    w.add_feed_forward_length(96)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(16)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = tok.backend_tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    special = set(tok.all_special_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_chat_template(tok.chat_template)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    sd = model.state_dict()
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"].numpy())
    for i in range(2):
        for hf, gg in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                t = _permute(t, 4)
            elif gg == "attn_k":
                t = _permute(t, 2)
            w.add_tensor(f"blk.{i}.{gg}.weight", np.ascontiguousarray(t.numpy()))
    w.add_tensor("output_norm.weight", sd["model.norm.weight"].numpy())
    w.add_tensor("output.weight", sd["lm_head.weight"].numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model, tok


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    src = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    model, tok = write_tiny_gguf(src)
    return src, model, tok


def test_convert_gguf_round_trip(tmp_path, tiny_gguf):
    src, model, tok = tiny_gguf
    out = convert_gguf(src, tmp_path / "hf")
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    got = AutoModelForCausalLM.from_pretrained(out).eval()
    got_tok = AutoTokenizer.from_pretrained(out)
    text = "the quick brown fox writes a poem"
    assert got_tok(text)["input_ids"] == tok(text)["input_ids"]
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(got(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4)


def test_convert_cli_refuses_to_overwrite_and_bad_inputs(tmp_path, capsys, tiny_gguf):
    src = tiny_gguf[0]
    out = tmp_path / "hf"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["convert", "gguf", str(src), "--output", str(out)]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1
    assert main(["convert", "gguf", str(tmp_path / "missing.gguf"), "--output", str(tmp_path / "o")]) == 2
    (tmp_path / "x.gguf").write_text("not gguf")
    assert main(["convert", "gguf", str(tmp_path / "x.gguf"), "--output", str(tmp_path / "o")]) == 2
    assert "not a GGUF file" in capsys.readouterr().err and not (tmp_path / "o").exists()
    empty = tmp_path / "empty"
    empty.mkdir()  # an existing EMPTY folder is fine
    assert main(["convert", "gguf", str(src), "--output", str(empty)]) == 0
    assert (empty / "model.safetensors").is_file()
