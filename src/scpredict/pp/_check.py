"""The input contract: declared scale, checked once, in one place."""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp_sparse
from anndata import AnnData

from .._utils import get_array

__all__ = ["check_input", "InputScaleError", "Scale"]

Scale = Literal["counts", "log1p", "any"]

_MAX_CHECK = 1_000_000  # entries inspected for integer-ness / range on very large matrices


class InputScaleError(ValueError):
    """The data in a layer does not have the scale a model or function declared."""


def _values(x) -> np.ndarray:
    """Stored values of a dense/sparse/backed matrix (all of them for NaN checks, bounded for big backed data)."""
    if sp_sparse.issparse(x):
        return np.asarray(x.data)
    if hasattr(x, "to_memory") or type(x).__name__ in {"CSRDataset", "CSCDataset", "Dataset"}:
        # backed (h5py / anndata sparse dataset): inspect the first rows only
        n = x.shape[0]
        rows = max(1, min(n, _MAX_CHECK // max(1, x.shape[1])))
        part = x[:rows]
        return _values(part)
    return np.asarray(x).ravel()


def check_input(
    adata: AnnData,
    *,
    layer: str | None = None,
    scale: Scale = "any",
    name: str | None = None,
) -> dict:
    """Check that the expression in ``layer`` is finite, non-negative and on the declared ``scale``.

    Parameters
    ----------
    adata
        The data; never modified.
    layer
        Layer to check; ``None`` is ``adata.X``; ``"raw"`` is ``adata.raw.X``.
    scale
        ``"counts"``: non-negative integers (raw UMI/read counts).
        ``"log1p"``: log-normalized values (e.g. ``sc.pp.normalize_total`` then ``sc.pp.log1p``);
        rejected when the values look like raw counts (all integers with a large maximum).
        ``"any"``: only finiteness is checked (negative values allowed, e.g. z-scores or log2 ratios).
    name
        What the caller calls this input, used in messages (e.g. ``"BiMambaPredictor (head='probabilistic')"``).

    Returns
    -------
    A summary dict: ``max``, ``min``, ``frac_non_integer``, ``layer``, ``scale``.

    Raises
    ------
    InputScaleError
        Saying which layer, what was seen (NaN/inf count, minimum, maximum, fraction of non-integer values)
        and what to pass instead.

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_perturbation(n_cells=100, n_genes=20, kind="counts")
    >>> sp.pp.check_input(adata, scale="counts")["scale"]
    'counts'
    """
    where = (
        f"adata.layers[{layer!r}]"
        if layer not in (None, "raw")
        else ("adata.X" if layer is None else "adata.raw.X")
    )
    who = f"{name}: " if name else ""
    x = get_array(adata, layer=layer)
    v = _values(x)
    if v.size == 0:
        summary = {"max": 0.0, "min": 0.0, "frac_non_integer": 0.0, "layer": layer, "scale": scale}
        return summary
    if not np.issubdtype(v.dtype, np.number):
        raise InputScaleError(f"{who}{where} has non-numeric dtype {v.dtype}.")
    finite = np.isfinite(v)
    if not finite.all():
        n_nan = int(np.isnan(v).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise InputScaleError(
            f"{who}{where} contains {n_nan} NaN and {n_inf} infinite values; remove or impute them "
            "(e.g. drop genes/cells with `adata[:, ~np.isnan(X).any(0)]`) before using this model."
        )
    # a random subset (drawn with replacement: O(sample), unlike a permutation of every stored value)
    sample = v if v.size <= _MAX_CHECK else v[np.random.default_rng(0).integers(0, v.size, _MAX_CHECK)]
    vmax = float(v.max())
    vmin = float(v.min())
    frac_nonint = float(np.mean(np.abs(sample - np.round(sample)) > 1e-6)) if sample.size else 0.0
    summary = {"max": vmax, "min": vmin, "frac_non_integer": frac_nonint, "layer": layer, "scale": scale}
    if scale == "any":
        return summary
    if vmin < 0:
        raise InputScaleError(
            f"{who}{where} has negative values (min {vmin:.3g}) but {scale!r} data were declared. "
            "Pass non-negative expression (raw counts or log1p-normalized), not scaled/centred data "
            "(sc.pp.scale output is not accepted)."
        )
    if scale == "counts" and frac_nonint > 0:
        raise InputScaleError(
            f"{who}{where} was declared as raw counts but {frac_nonint:.1%} of its values are not integers "
            f"(max {vmax:.3g}); this looks log-normalized. Pass the raw count layer instead, e.g. "
            "layer='counts' (keep one with `adata.layers['counts'] = adata.X.copy()` before normalizing) "
            "or layer='raw' for adata.raw.X."
        )
    if scale == "log1p" and frac_nonint == 0 and vmax > 30:
        raise InputScaleError(
            f"{who}{where} was declared log-normalized but all values are integers with max {vmax:.3g}; "
            "this looks like raw counts. Normalize first (`sc.pp.normalize_total(adata, target_sum=1e4)`, "
            "`sc.pp.log1p(adata)`) or pass a log-normalized layer."
        )
    if scale == "log1p" and vmax > 50:
        raise InputScaleError(
            f"{who}{where} was declared log-normalized but its maximum is {vmax:.3g} (log1p data rarely "
            "exceed ~15). Pass log1p-normalized expression (`sc.pp.normalize_total` then `sc.pp.log1p`)."
        )
    return summary
