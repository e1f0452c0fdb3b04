"""sweep.png (Figures 5/6): drawn only for a swept key with 3 or more numeric values."""

import matplotlib.image

from uniapl.analysis import plots
from uniapl.analysis.report import Group


def _group(method, sweep, mean):
    g = Group(run_id=method + str(sweep), method=method, label=method, sweep=sweep)
    g.values = {"prompt_level_strict_acc": (mean, 0.02)}
    return g


def test_sweep_plot_needs_three_numeric_values(tmp_path):
    two = [_group("a_grpo", {"loss.lambda_adv": v}, 0.3) for v in (0.1, 0.001)] + [_group("grpo", {}, 0.3)]
    assert plots.plot_sweep(tmp_path / "sweep.png", two) == []
    assert not (tmp_path / "sweep.png").exists()
    words = [_group("chord", {"loss.chord.schedule": v}, 0.3) for v in ("a", "b", "c")]
    assert plots.plot_sweep(tmp_path / "sweep.png", words) == []


def test_sweep_plot_draws_each_swept_key(tmp_path):
    groups = [_group("a_grpo", {"loss.lambda_adv": v}, 0.3 + i / 100) for i, v in enumerate((0.1, 0.01, 1e-3, 1e-4))]
    groups += [_group("unified", {"loss.lambda_adv": v}, 0.35) for v in (0.1, 0.01, 1e-3)]
    groups += [_group("grpo", {}, 0.39), _group("sft", {"train.learning_rate": 1e-3}, 0.37)]
    assert plots.plot_sweep(tmp_path / "sweep.png", groups) == ["sweep.png"]
    h, w = matplotlib.image.imread(tmp_path / "sweep.png").shape[:2]
    assert w > h > 100  # one panel: train.learning_rate has a single value and is not a sweep axis
