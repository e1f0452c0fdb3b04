"""docs/contributing.md's worked example, run as written: a new objective term and two paradigms defined
entirely outside the package (no file of uniapl touched) train end to end."""

import json
import math
import re
from pathlib import Path

import pytest

from uniapl.algorithms import ALGORITHMS
from uniapl.config import load_config
from uniapl.objective import TERMS
from uniapl.training.run import run_training

DOC = Path(__file__).resolve().parents[2] / "docs" / "contributing.md"


@pytest.fixture
def example():
    text = DOC.read_text(encoding="utf-8")
    code = re.search(r"<!-- example:begin -->\s*```python\n(.*?)```\s*<!-- example:end -->", text, re.S).group(1)
    namespace: dict = {"__name__": "contributing_example"}
    exec(compile(code, str(DOC), "exec"), namespace)
    yield namespace
    for registry, key in ((TERMS, "best_of_group"), (ALGORITHMS, "raft"), (ALGORITHMS, "a_raft")):
        registry.pop(key, None)


@pytest.mark.parametrize("algorithm", ["raft", "a_raft"])
def test_the_worked_example_trains(example, tiny_overrides, algorithm):
    cfg = load_config(None, tiny_overrides + [f"algorithm={algorithm}", "train.steps=3", "rollout.num_generations=4",
                                              "reward.partial=true", "eval.enabled=false"])
    run_training(cfg)
    rows = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert math.isfinite(r["loss/best_of_group"]) and 0 <= r["best_of_group/rows"] <= 2 * 4
        # no best rows: no loss; best rows: a positive NLL, which is the whole objective without the adversarial term
        assert (r["loss/best_of_group"] > 0) == (r["best_of_group/rows"] > 0)
        if algorithm == "raft":
            assert r["loss/total"] == pytest.approx(r["loss/best_of_group"], abs=2e-6)
        else:
            assert "loss/pref_adv" in r and "adv/coef_mean" in r


def test_the_example_is_validated_like_a_built_in_term(example, tiny_overrides, tmp_path):
    data = tmp_path / "no_instructions.jsonl"
    data.write_text(json.dumps({"prompt": "Say hi."}) + "\n")
    cfg = load_config(None, tiny_overrides + ["algorithm=raft", f"data.train.path={data}", "eval.enabled=false"])
    with pytest.raises(Exception, match="instruction_id_list"):
        run_training(cfg)
    assert not Path(cfg.output_dir).exists()  # refused before anything was written
