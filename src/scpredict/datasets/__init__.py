"""Synthetic datasets with known ground truth, and loaders for public datasets by local path."""

from ._public import (
    cellbench_lung,
    gene_positions,
    kang18,
    l1000_a375,
    mouse_bladder,
    norman19,
    ranked_signatures,
    sciplex3_smiles,
)
from ._synthetic import synthetic_celltypes, synthetic_contexts, synthetic_perturbation

__all__ = [
    "cellbench_lung",
    "gene_positions",
    "kang18",
    "l1000_a375",
    "mouse_bladder",
    "norman19",
    "ranked_signatures",
    "sciplex3_smiles",
    "synthetic_celltypes",
    "synthetic_contexts",
    "synthetic_perturbation",
]
