"""Fidelity of generated cells: kNN real-vs-generated accuracy and Pearson correlation of means.

Distances between the two populations (energy distance, MMD) are in :mod:`scpredict.metrics._distribution`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["knn_real_vs_generated", "pearson_of_means"]


def _pair(real: ArrayLike, generated: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(real.toarray() if hasattr(real, "toarray") else real, dtype=np.float64)
    b = np.asarray(generated.toarray() if hasattr(generated, "toarray") else generated, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"real and generated must be (n_cells, n_features) alike, got {a.shape} and {b.shape}."
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("real and generated must be finite (found NaN or inf).")
    return a, b


def knn_real_vs_generated(
    real: ArrayLike,
    generated: ArrayLike,
    *,
    k: int = 5,
    n_pcs: int | None = 30,
    n_folds: int = 5,
    seed: int = 0,
) -> float:
    """Cross-validated accuracy of a kNN classifier telling real from generated cells.

    The two samples are subsampled to the same size, optionally projected on principal components fitted on
    the pooled cells, and a ``k``-nearest-neighbour classifier is scored by stratified ``n_folds``-fold
    cross-validation. 0.5 means indistinguishable; 1.0 means perfectly separable (the real-vs-generated
    check of scDiffusion, Luo et al., Bioinformatics 2024).

    Parameters
    ----------
    real, generated
        Cells × genes (or any common feature space).
    k
        Neighbours of the classifier.
    n_pcs
        Principal components fitted on the pooled cells (``None``: the raw features).
    n_folds
        Cross-validation folds.
    seed
        Seed of the subsampling and the folds.

    Returns
    -------
    Mean held-out accuracy in ``[0, 1]``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> round(knn_real_vs_generated(rng.normal(size=(200, 5)), rng.normal(size=(200, 5)) + 10, n_pcs=None), 2)
    1.0
    """
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier

    a, b = _pair(real, generated)
    n = min(len(a), len(b))
    if n < max(2 * n_folds, k + 1):
        raise ValueError(
            f"need at least {max(2 * n_folds, k + 1)} cells in each sample, got {len(a)} and {len(b)}."
        )
    rng = np.random.default_rng(seed)
    a = a[rng.choice(len(a), n, replace=False)]
    b = b[rng.choice(len(b), n, replace=False)]
    if n_pcs is not None:  # PCA of the pooled cells (fitted on the real ones only, PCs overfit their noise)
        pooled = np.vstack([a, b])
        mean = pooled.mean(0)
        n_comp = int(min(n_pcs, 2 * n - 1, a.shape[1]))
        _, _, vt = np.linalg.svd(pooled - mean, full_matrices=False)
        a, b = (a - mean) @ vt[:n_comp].T, (b - mean) @ vt[:n_comp].T
    x = np.vstack([a, b])
    y = np.r_[np.zeros(n), np.ones(n)]
    accs = []
    for tr, te in StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x, y):
        clf = KNeighborsClassifier(n_neighbors=min(k, len(tr))).fit(x[tr], y[tr])
        accs.append(float((clf.predict(x[te]) == y[te]).mean()))
    return float(np.mean(accs))


def pearson_of_means(real: ArrayLike, generated: ArrayLike) -> float:
    """Pearson correlation between the per-gene means of real and generated cells.

    Parameters
    ----------
    real, generated
        Cells × genes.

    Returns
    -------
    Correlation in ``[-1, 1]`` (NaN when a mean profile is constant).

    Examples
    --------
    >>> round(pearson_of_means([[0.0, 1.0, 2.0]], [[0.0, 2.0, 4.0]]), 3)
    1.0
    """
    a, b = _pair(real, generated)
    ma, mb = a.mean(0), b.mean(0)
    ma, mb = ma - ma.mean(), mb - mb.mean()
    den = np.sqrt((ma**2).sum() * (mb**2).sum())
    return float((ma * mb).sum() / den) if den > 0 else float("nan")
