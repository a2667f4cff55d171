"""Pseudobulk means and differences to control."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp_sparse
from anndata import AnnData

from .._utils import check_keys, get_array

__all__ = ["pseudobulk", "delta_to_control"]


def _group_means(x, codes: np.ndarray, n_groups: int, *, func: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """Mean (or sum) of the rows of ``x`` per group code, computed with one sparse product."""
    n = x.shape[0]
    ind = sp_sparse.csr_matrix((np.ones(n, dtype=np.float64), (codes, np.arange(n))), shape=(n_groups, n))
    counts = np.asarray(ind.sum(1)).ravel()
    sums = ind @ x
    sums = sums.toarray() if sp_sparse.issparse(sums) else np.asarray(sums)
    if func == "sum":
        return sums, counts
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None], counts


def pseudobulk(
    adata: AnnData,
    *,
    groupby: str | Sequence[str],
    layer: str | None = None,
    func: str = "mean",
    min_cells: int = 1,
) -> AnnData:
    """Aggregate cells into one profile per group (mean or sum of ``layer``).

    Parameters
    ----------
    adata
        Cells; not modified.
    groupby
        One or more ``obs`` columns; each unique combination is a group.
    layer
        Layer to aggregate (``None`` = ``X``).
    func
        ``"mean"`` or ``"sum"``.
    min_cells
        Drop groups with fewer cells.

    Returns
    -------
    AnnData with one row per group: ``obs`` holds the ``groupby`` columns and ``n_cells``; ``var`` as the input.

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_perturbation(n_cells=200, n_genes=30)
    >>> pb = sp.pp.pseudobulk(adata, groupby="perturbation")
    >>> pb.n_obs == adata.obs["perturbation"].nunique()
    True
    """
    keys = [groupby] if isinstance(groupby, str) else list(groupby)
    check_keys(adata, obs=keys)
    if func not in {"mean", "sum"}:
        raise ValueError(f"func must be 'mean' or 'sum', got {func!r}")
    x = get_array(adata, layer=layer)
    frame = adata.obs[keys].astype(str)
    grp = pd.MultiIndex.from_frame(frame) if len(keys) > 1 else pd.Index(frame[keys[0]])
    codes, uniques = pd.factorize(grp, sort=True)
    means, counts = _group_means(x, codes, len(uniques), func=func)
    keep = counts >= min_cells
    if len(keys) > 1:
        obs = pd.DataFrame(list(uniques), columns=keys)
    else:
        obs = pd.DataFrame({keys[0]: list(uniques)})
    obs["n_cells"] = counts.astype(int)
    obs.index = ["|".join(map(str, r)) for r in obs[keys].itertuples(index=False)]
    out = AnnData(X=means[keep].astype(np.float32), obs=obs[keep], var=adata.var.copy())
    for k in keys:
        out.obs[k] = pd.Categorical(out.obs[k])
    return out


def delta_to_control(
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control: str = "control",
    covariate_key: str | None = None,
    layer: str | None = None,
    min_cells: int = 1,
) -> AnnData:
    """Mean expression change of every perturbation against the control cells of the same covariate.

    Δ(p, c) = mean(X | perturbation = p, covariate = c) − mean(X | control, covariate = c), on ``layer``
    (use log-normalized data).

    Parameters
    ----------
    adata
        Cells; not modified.
    perturbation_key
        ``obs`` column of perturbation labels.
    control
        Control label.
    covariate_key
        Optional ``obs`` column (cell line, cell type); controls are matched within it.
    layer
        Layer (``None`` = ``X``).
    min_cells
        Drop perturbation groups with fewer cells.

    Returns
    -------
    AnnData with one row per (perturbation[, covariate]) excluding controls: ``X`` = Δ, ``layers['mean']`` =
    perturbed mean, ``layers['control_mean']``, ``obs`` = perturbation, covariate, ``n_cells``.

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_perturbation(n_cells=300, n_genes=30)
    >>> d = sp.pp.delta_to_control(adata)
    >>> "control" in set(d.obs["perturbation"])
    False
    """
    keys = [perturbation_key] + ([covariate_key] if covariate_key else [])
    pb = pseudobulk(adata, groupby=keys, layer=layer)
    is_ctrl = pb.obs[perturbation_key].astype(str) == control
    if not is_ctrl.any():
        raise ValueError(f"no control cells ({control!r}) in adata.obs[{perturbation_key!r}].")
    ctrl = pb[is_ctrl.to_numpy()]
    ctrl_means = {
        (str(r[covariate_key]) if covariate_key else None): ctrl.X[i]
        for i, (_, r) in enumerate(ctrl.obs.iterrows())
    }
    pert = pb[(~is_ctrl).to_numpy() & (pb.obs["n_cells"].to_numpy() >= min_cells)].copy()
    cov = pert.obs[covariate_key].astype(str).tolist() if covariate_key else [None] * pert.n_obs
    missing = sorted({c for c in cov if c not in ctrl_means})
    if missing:
        raise ValueError(
            f"no control cells for {covariate_key}={missing[:5]}; every covariate value needs its own controls."
        )
    cm = np.stack([ctrl_means[c] for c in cov]) if pert.n_obs else np.zeros((0, adata.n_vars), np.float32)
    mean = np.asarray(pert.X)
    out = AnnData(X=(mean - cm).astype(np.float32), obs=pert.obs.copy(), var=adata.var.copy())
    out.layers["mean"] = mean.astype(np.float32)
    out.layers["control_mean"] = cm.astype(np.float32)
    return out
