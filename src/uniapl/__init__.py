"""uniapl: Unified Adversarial Preference Learning (SFT + GRPO + adversarial discriminator in one stage)."""

__version__ = "0.1.0"
