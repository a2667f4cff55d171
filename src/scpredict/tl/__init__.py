"""Tools: evaluation, comparison and analysis functions."""

from ._cell_eval import to_cell_eval
from ._evaluate import benchmark_perturbation_models, evaluate_perturbations
from ._retrieval import connectivity, imbalance

__all__ = [
    "benchmark_perturbation_models",
    "evaluate_perturbations",
    "to_cell_eval",
    "connectivity",
    "imbalance",
]
