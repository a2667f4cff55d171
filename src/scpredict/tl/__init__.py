"""Tools: evaluation, comparison and analysis functions."""

from ._cell_eval import to_cell_eval
from ._classify import compare_classifiers, repeated_comparison
from ._evaluate import benchmark_perturbation_models, evaluate_perturbations
from ._regulators import rank_regulators
from ._retrieval import connectivity, imbalance

__all__ = [
    "compare_classifiers",
    "repeated_comparison",
    "benchmark_perturbation_models",
    "evaluate_perturbations",
    "to_cell_eval",
    "rank_regulators",
    "connectivity",
    "imbalance",
]
