"""LoRA through PEFT: adapters trained, the adapter-disabled policy as reference, adapters in checkpoints
(exact resume) and final/, merged weights for engines and final/merged/."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from uniapl.config import load_config
from uniapl.infra.schema import ConfigError
from uniapl.models.loading import eos_token_ids
from uniapl.models.loading import build_policy
from uniapl.models.lora import merged_state_dict, policy_module
from uniapl.rollout import SamplingParams, build_engine
from uniapl.training.run import policy_for_stage, run_training
from uniapl.training.trainer import Trainer
from uniapl.training.validation import stage_records

LORA = ["model.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj], merge_final: true}"]


def test_lora_config_is_validated(tiny_overrides):
    for bad, key in (("{r: 0}", "model.lora.r"), ("{dropout: 1.5}", "model.lora.dropout"),
                     ("{target_modules: []}", "model.lora.target_modules")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, tiny_overrides + [f"model.lora={bad}"])


def test_lora_trains_adapters_saves_them_and_a_merged_model(tiny_overrides):
    cfg = load_config(None, tiny_overrides + LORA + ["algorithm=unified", "train.learning_rate=5e-2"])
    s = run_training(cfg)
    # q_proj 32 -> 2 heads x 16, v_proj 32 -> 1 x 16; r = 4; 2 layers: 2 * 4 * ((32 + 32) + (32 + 16))
    assert s["trainable_parameters"] == 896 and s["total_parameters"] > 896 * 10
    final = Path(cfg.output_dir) / "final"
    assert (final / "adapter_config.json").is_file() and not (final / "model.safetensors").exists()
    adapters = load_file(str(final / "adapter_model.safetensors"))
    merged = load_file(str(final / "merged" / "model.safetensors"))
    base, _ = build_policy(cfg, None)
    base_sd = base.state_dict()
    name = "model.layers.1.self_attn.q_proj"
    a = adapters[f"base_model.model.{name}.lora_A.weight"]
    b = adapters[f"base_model.model.{name}.lora_B.weight"]
    assert b.abs().max() > 0  # the adapters moved
    torch.testing.assert_close(merged[f"{name}.weight"], base_sd[f"{name}.weight"] + (8 / 4) * b @ a)
    torch.testing.assert_close(merged["model.layers.0.mlp.up_proj.weight"], base_sd["model.layers.0.mlp.up_proj.weight"])
    assert s["final_checkpoint"].endswith("final/merged")


def test_reference_is_the_adapter_disabled_policy_and_engines_see_the_adapters(tiny_overrides, tmp_path):
    cfg = load_config(None, tiny_overrides + LORA + ["algorithm=grpo", "eval.enabled=false"])
    sft, pref, _ = stage_records(cfg)
    peft_model, tok = policy_for_stage(cfg, None, None)
    eos = eos_token_ids(peft_model, tok)
    t = Trainer(cfg, Accelerator(cpu=True), peft_model, tok, sft_records=sft, pref_records=pref, stage_dir=tmp_path,
                eos_ids=eos)
    assert t.ref_model is None and t.batches.has_reference  # no second copy
    with torch.no_grad():
        for n, p in t.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # as if trained
    base, _ = build_policy(cfg, None)
    ids = torch.tensor([tok("hello world", add_special_tokens=False)["input_ids"]])
    with torch.no_grad(), t.reference() as ref:
        ref_logits = ref(ids).logits
    with torch.no_grad():
        torch.testing.assert_close(ref_logits, base(ids).logits)
        assert not torch.allclose(t.model(ids).logits, ref_logits, atol=1e-3)  # adapters back on after the block
        # merged weights (what a vLLM engine receives) compute the adapted model
        base.load_state_dict(merged_state_dict(t.model))
        torch.testing.assert_close(base(ids).logits, t.model(ids).logits, atol=1e-5, rtol=1e-5)
    # the built-in engine samples from the adapted policy: greedy samples equal the merged model's
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    prompts = [ids[0].tolist()]
    got = build_engine("hf", model=t.model, eos_token_ids=eos, pad_token_id=tok.pad_token_id).generate(prompts, params)
    want = build_engine("hf", model=base, eos_token_ids=eos, pad_token_id=tok.pad_token_id).generate(prompts, params)
    assert torch.equal(got.completion_ids, want.completion_ids)


def test_lora_resume_is_exact(tiny_overrides, tmp_path):
    base = tiny_overrides + LORA + ["algorithm=unified", "train.steps=4", "train.save_every=2", "train.keep_checkpoints=5",
                                    "train.learning_rate=5e-2", "eval.enabled=false"]
    run_training(load_config(None, base + [f"output_dir={tmp_path / 'full'}"]))
    ck = tmp_path / "full" / "checkpoints" / "step-000002"
    assert (ck / "adapter_model.safetensors").is_file() and not (ck / "model.safetensors").exists()
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part)
    for p in ("checkpoints/step-000004", "final"):
        shutil.rmtree(part / p)
    for f in ("stage_summary.json", "summary.json"):
        (part / f).unlink()
    (part / "metrics.jsonl").write_text("\n".join((part / "metrics.jsonl").read_text().splitlines()[:2]) + "\n")
    s = run_training(load_config(None, base + [f"output_dir={part}", "resume=true"]))
    assert s["steps"] == 4
    a = load_file(str(tmp_path / "full" / "final" / "merged" / "model.safetensors"))
    b = load_file(str(part / "final" / "merged" / "model.safetensors"))
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < 1e-6, k
    rows = [json.loads(l) for l in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
