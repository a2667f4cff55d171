"""Gene alignment by name."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp_sparse

__all__ = ["GeneAlignment", "align_genes", "align_matrix"]


@dataclass(frozen=True)
class GeneAlignment:
    """Where each reference gene sits in a query.

    Attributes
    ----------
    indexer
        For each reference gene, its column in the query, or -1 when missing.
    missing
        Reference genes absent from the query.
    """

    indexer: np.ndarray
    missing: list[str]
    n_reference: int

    @property
    def identity(self) -> bool:
        """The query holds exactly the reference genes, in the same order."""
        return not self.missing and np.array_equal(self.indexer, np.arange(self.n_reference))

    @property
    def frac_missing(self) -> float:
        return len(self.missing) / max(1, self.n_reference)


def align_genes(
    query_genes: Sequence[str] | pd.Index,
    reference_genes: Sequence[str] | pd.Index,
    *,
    max_missing: float = 0.1,
    what: str = "the model",
) -> GeneAlignment:
    """Match a query's genes to a reference gene list by name.

    Parameters
    ----------
    query_genes
        ``adata.var_names`` of the new data (must be unique).
    reference_genes
        The ordered gene list the model was trained on.
    max_missing
        Largest fraction of reference genes that may be absent from the query; they are filled with zeros.
        Above it, a ``ValueError`` lists examples.
    what
        Name used in messages.

    Returns
    -------
    The alignment; a ``UserWarning`` reports missing genes that will be zero-filled.
    """
    query = pd.Index(query_genes)
    ref = pd.Index(reference_genes)
    if not query.is_unique:
        dups = query[query.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"adata.var_names are not unique (e.g. {dups}); call `adata.var_names_make_unique()` first."
        )
    indexer = query.get_indexer(ref)
    missing_mask = indexer < 0
    n_missing = int(missing_mask.sum())
    if n_missing == len(ref):
        raise ValueError(
            f"None of the {len(ref)} genes of {what} are in adata.var_names (model genes e.g. "
            f"{ref[:5].tolist()}, data genes e.g. {query[:5].tolist()}). Check that both use the same gene "
            "identifiers (symbols vs Ensembl ids)."
        )
    missing = ref[missing_mask].tolist()
    frac = n_missing / len(ref)
    if frac > max_missing:
        raise ValueError(
            f"{n_missing} of {len(ref)} genes of {what} ({frac:.1%}) are missing from adata.var_names, more than "
            f"max_missing={max_missing:.0%}; e.g. {missing[:10]}. Use data measured on the same genes, or raise "
            "max_missing to fill them with zeros."
        )
    if n_missing:
        warnings.warn(
            f"{n_missing} of {len(ref)} genes of {what} are missing from the data and are filled with zeros "
            f"(e.g. {missing[:10]}).",
            UserWarning,
            stacklevel=3,
        )
    return GeneAlignment(indexer=indexer, missing=missing, n_reference=len(ref))


def align_matrix(x, alignment: GeneAlignment):
    """Reorder the columns of ``x`` (dense or sparse) to the reference order, zero-filling missing genes.

    Returns ``x`` itself when the alignment is the identity (no copy).
    """
    if alignment.identity:
        return x
    idx = alignment.indexer
    present = idx >= 0
    n = x.shape[0]
    if sp_sparse.issparse(x):
        x = sp_sparse.csr_matrix(x)
        # append one all-zero column and point missing genes at it
        padded = sp_sparse.hstack([x, sp_sparse.csr_matrix((n, 1), dtype=x.dtype)], format="csr")
        cols = np.where(present, idx, x.shape[1])
        return padded[:, cols]
    x = np.asarray(x)
    out = np.zeros((n, len(idx)), dtype=x.dtype)
    out[:, present] = x[:, idx[present]]
    return out
