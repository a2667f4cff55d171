"""Plotting: functions take ``ax=``, return the Axes or Figure, and never call ``show()``."""

from ._classify import classifier_comparison, confusion_matrix, embedding
from ._contributions import context_contributions
from ._diffusion import design_progress, real_vs_generated
from ._drugs import imbalance
from ._history import training_history
from ._perturbation import metric_comparison, perturbation_scatter

__all__ = [
    "classifier_comparison",
    "confusion_matrix",
    "embedding",
    "context_contributions",
    "training_history",
    "metric_comparison",
    "perturbation_scatter",
    "imbalance",
    "design_progress",
    "real_vs_generated",
]
