"""Preprocessing: input checks, perturbation annotation, splits, pseudobulk."""

from ._check import InputScaleError, check_input
from ._drugs import drug_deltas, drug_features, filter_pairs, split_pairs, tanimoto_similarity
from ._genes import annotate_gene_positions, pathway_features
from ._perturbation import parse_targets, perturbation_index
from ._pseudobulk import delta_to_control, pseudobulk
from ._split import split_cells, split_combinations, split_covariate, split_perturbations

__all__ = [
    "drug_deltas",
    "drug_features",
    "filter_pairs",
    "split_pairs",
    "tanimoto_similarity",
    "annotate_gene_positions",
    "pathway_features",
    "InputScaleError",
    "check_input",
    "delta_to_control",
    "parse_targets",
    "perturbation_index",
    "pseudobulk",
    "split_cells",
    "split_combinations",
    "split_covariate",
    "split_perturbations",
]
