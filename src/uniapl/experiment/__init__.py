"""The paper's full comparison as one command: `uniapl experiment CONFIG [key=value ...]`.

    from uniapl.experiment import load_experiment, run_experiment
    exp, base = load_experiment("configs/experiments/laptop_smoke.yaml", ["output_dir=runs/smoke"])
    report = run_experiment(exp, base)

See `uniapl.experiment.config` for the config, `uniapl.experiment.runner` for the output directory.
"""

from uniapl.experiment.config import ExperimentConfig, MethodConfig, StageSpec, SweepAxis, expand_runs, load_experiment
from uniapl.experiment.runner import run_experiment

__all__ = ["ExperimentConfig", "MethodConfig", "StageSpec", "SweepAxis", "expand_runs", "load_experiment",
           "run_experiment"]
