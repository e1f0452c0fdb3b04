"""uniapl: Unified Adversarial Preference Learning (SFT + GRPO + adversarial discriminator in one stage).

The package by role (docs/contributing.md has the map and how to add a term or a paradigm):

    algorithms    each paradigm as data: (objective term, weight) per slice, and the weighting between slices
    objective/    the terms of the objective, one file each (sft, adversarial, grpo, dpo, kto)
    losses/       pure loss functions (shapes and equations in their docstrings)
    rollout/      sampling engines;  rewards/  reward functions;  verifiers/  IFEval checkers, the sandbox
    discriminators/  D(x, y_teacher, y_student) and Algorithm 1
    data/         records, loaders, chat templates, the synthetic task, DPO/KTO pairs
    models/       the policy: loading, LoRA, chosen-token log-probs, GGUF conversion
    training/     a step's batch, the update and the loop, checkpoints, stages (`run_training`)
    evaluation/   held-out IFEval, lm-evaluation-harness
    experiment/, analysis/   `uniapl experiment`, statistics and figures
    config, cli, infra/      the run config, the command line, infrastructure (errors, atomic writes ...)
"""

__version__ = "0.1.0"
