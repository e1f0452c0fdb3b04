"""The paper's analyses of trained runs: statistics over seeds, response lengths (Fig. 3), log-likelihood
gaps to the teacher (Fig. 4), training curves, and the comparison table (`uniapl.analysis.report`)."""

from uniapl.analysis.stats import gaussian_kde, mean_ci95, t975, wasserstein_1d

__all__ = ["gaussian_kde", "mean_ci95", "t975", "wasserstein_1d"]
