"""Every key the package derives from a user's ``key_added`` or writes by default, in one place."""

from __future__ import annotations

__all__ = [
    "SETUP_UNS_KEY",
    "PERTURBATION_IDX_KEY",
    "SPLIT_KEY",
    "confidence_key",
    "proba_key",
    "contribution_key",
]

#: ``adata.uns`` entry where ``setup_anndata`` records its (JSON) arguments, per model class.
SETUP_UNS_KEY = "_scpredict"
#: ``adata.obs`` column written by :func:`scpredict.pp.perturbation_index`.
PERTURBATION_IDX_KEY = "perturbation_idx"
#: default ``adata.obs`` column written by the split helpers.
SPLIT_KEY = "split"


def confidence_key(key_added: str) -> str:
    """``obs`` column holding the confidence of a classifier's prediction."""
    return f"{key_added}_confidence"


def proba_key(key_added: str) -> str:
    """``obsm`` entry holding a classifier's class probabilities."""
    return f"{key_added}_proba"


def contribution_key(key_added: str, field: str) -> str:
    """``obsm`` entry holding one metadata field's additive contribution (ContextCycleAE.contributions)."""
    return f"{key_added}_{field}"
