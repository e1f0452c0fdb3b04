"""model.gradient_checkpointing: activations are recomputed in the update (training mode); rollouts and
reference scoring run in eval mode, without checkpointing."""

import pytest
from accelerate import Accelerator

from uniapl.config import load_config
from uniapl.models.loading import eos_token_ids
from uniapl.models.loading import build_policy
from uniapl.training.trainer import Trainer
from uniapl.training.validation import stage_records


def _update_calls(tiny_overrides, tmp_path, ckpt, with_jobs=False):
    """(layer calls, MLP calls) of the first decoder layer during one update."""
    cfg = load_config(None, tiny_overrides + ["algorithm=grpo", "eval.enabled=false", "loss.grpo.beta=0",
                                              f"model.gradient_checkpointing={str(ckpt).lower()}"])
    sft, pref, _ = stage_records(cfg)
    model, tok = build_policy(cfg, None)
    t = Trainer(cfg, Accelerator(cpu=True), model, tok, sft_records=sft, pref_records=pref, stage_dir=tmp_path,
                eos_ids=eos_token_ids(model, tok))
    calls = []  # (phase, training mode) of every call of the first decoder layer
    mlp = []  # calls of its MLP: inside the checkpointed forward, so run again when the backward recomputes it
    phase = ["build"]
    layer = t.model.model.layers[0]
    layer.register_forward_pre_hook(lambda m, a, kw: calls.append((phase[0], m.training)), with_kwargs=True)
    layer.mlp.register_forward_pre_hook(lambda m, a: mlp.append(m.training))
    batch = t.batches.build(0, {})
    assert mlp and not any(mlp) and not any(training for _, training in calls)  # rollouts: eval mode
    calls.clear()
    mlp.clear()
    phase[0] = "update"
    t.update(batch.groups, {})
    assert calls and all(training for _, training in calls) and all(mlp)
    assert not t.model.training  # back to eval mode for the next step's rollouts
    micro_batches = sum(len(g.micro_batches) for g in batch.groups)
    return (calls, mlp, micro_batches) if with_jobs else (calls, mlp)


def test_checkpointing_recomputes_layers_in_the_update_only(tiny_overrides, tmp_path):
    plain_calls, plain_mlp = _update_calls(tiny_overrides, tmp_path / "plain", False)
    assert len(plain_mlp) == len(plain_calls)  # no recomputation
    calls, ckpt_mlp, jobs = _update_calls(tiny_overrides, tmp_path / "ckpt", True, with_jobs=True)
    # with checkpointing the policy runs one decoder forward per job (the shared-prompt split is off), and the
    # backward recomputes it: two MLP calls per job (whether the layer's own hooks fire again in the
    # recomputation depends on the transformers version, so count on the MLP)
    assert len(ckpt_mlp) == 2 * jobs
