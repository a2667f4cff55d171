"""Metrics: pure numpy/scipy functions (regression, perturbation, classification, retrieval, distribution)."""

from ._classification import (
    accuracy,
    classification_report,
    confusion_matrix,
    expected_calibration_error,
    hierarchical_predictions,
    macro_f1,
    per_class_f1,
    weighted_f1,
)
from ._distribution import energy_distance, mmd
from ._generation import knn_real_vs_generated, pearson_of_means
from ._perturbation import (
    DEResult,
    des,
    direction_de20,
    l2_top1000,
    mse_de20,
    pds,
    pearson_delta,
    pearson_delta_de20,
    r2_mean_de,
    vcc_score,
    wilcoxon_de,
)
from ._regression import mae, mse, pearson, r2_mean, r2_scgen
from ._retrieval import map_at_k, mrr, ndcg_at_k, precision_at_k, recall_at_k, retrieval_summary

__all__ = [
    "accuracy",
    "classification_report",
    "confusion_matrix",
    "expected_calibration_error",
    "hierarchical_predictions",
    "macro_f1",
    "per_class_f1",
    "weighted_f1",
    "DEResult",
    "des",
    "direction_de20",
    "energy_distance",
    "knn_real_vs_generated",
    "l2_top1000",
    "mae",
    "mmd",
    "mse",
    "mse_de20",
    "pds",
    "pearson",
    "pearson_delta",
    "pearson_delta_de20",
    "pearson_of_means",
    "r2_mean",
    "r2_mean_de",
    "r2_scgen",
    "vcc_score",
    "wilcoxon_de",
    "map_at_k",
    "mrr",
    "ndcg_at_k",
    "precision_at_k",
    "recall_at_k",
    "retrieval_summary",
]
