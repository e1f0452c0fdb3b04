import textwrap

import pytest

from uniapl.config import load_config, stage_configs
from uniapl.infra.schema import ConfigError


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_quickstart_loads_and_overrides_apply():
    cfg = load_config("configs/quickstart.yaml", ["train.steps=7", "loss.lambda_adv=1e-3", "output_dir=/tmp/x"])
    assert cfg.train.steps == 7 and cfg.loss.lambda_adv == pytest.approx(1e-3) and cfg.output_dir == "/tmp/x"
    names = [n for n, _ in stage_configs(cfg)]
    assert names == ["warmup", "unified"]
    warm = stage_configs(cfg)[0][1]
    assert warm.algorithm == "sft" and warm.data.train.path == "synthetic:warmup" and warm.train.steps != 7


def test_unknown_key_names_key_line_and_allowed(tmp_path):
    p = write(tmp_path, """
        algorithm: grpo
        train:
          stpes: 3
    """)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "train.stpes" in msg and f"{p}:4" in msg and "steps" in msg


def test_ill_typed_value_names_key_and_expected_type(tmp_path):
    p = write(tmp_path, "train:\n  steps: many\n")
    with pytest.raises(ConfigError, match=r"train\.steps.*expected an integer"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"command line.*loss\.alpha.*expected a number"):
        load_config(None, ["loss.alpha=abc"])
    with pytest.raises(ConfigError, match=r"loss\.grpo\.aggregation.*allowed values"):
        load_config(None, ["loss.grpo.aggregation=mean"])
    with pytest.raises(ConfigError, match=r"unknown algorithm 'ppo'"):
        load_config(None, ["algorithm=ppo"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.steps"])


def test_bad_stage_override_is_caught_at_load(tmp_path):
    p = write(tmp_path, """
        stages:
          - name: a
            algorithm: sft
            overrides: {train.stepz: 3}
    """)
    with pytest.raises(ConfigError, match="train.stepz"):
        load_config(p)


def test_stage_override_from_command_line():
    cfg = load_config("configs/quickstart.yaml", ["stages.0.overrides.train.steps=5"])
    assert stage_configs(cfg)[0][1].train.steps == 5


def test_yaml_float_without_dot_and_bool_strictness():
    cfg = load_config(None, ["train.learning_rate=1e-5"])
    assert cfg.train.learning_rate == pytest.approx(1e-5)
    with pytest.raises(ConfigError, match="true or false"):
        load_config(None, ["resume=1"])


@pytest.mark.parametrize("path", sorted(__import__("glob").glob("configs/**/*.yaml", recursive=True)))
def test_every_shipped_config_validates(path):
    if "/experiments/" in path:
        pytest.skip("experiment configs have their own schema")
    if "/accelerate/" in path:
        pytest.skip("accelerate launcher configs (accelerate's schema)")
    if "/lm_eval_tasks/" in path:
        pytest.skip("lm-eval task files (tests/core/test_eval_general.py runs them)")
    load_config(path)


def test_kwargs_as_json_string(tmp_path):
    import json

    from uniapl.data.loaders import read_jsonl

    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"prompt": "x", "instruction_id_list": ["punctuation:no_comma"], "kwargs": "[{}]"}) + "\n")
    assert read_jsonl(p)[0].kwargs == [{}]
