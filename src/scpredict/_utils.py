"""Small helpers shared across namespaces (no torch, no scanpy at import time)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp_sparse
from anndata import AnnData

__all__ = ["get_array", "to_dense", "record_provenance", "jsonable", "check_keys"]


def get_array(adata: AnnData, *, layer: str | None = None):
    """Return ``adata.X`` or ``adata.layers[layer]`` (``layer="raw"`` means ``adata.raw.X``).

    Raises a ``KeyError`` naming the missing layer and the layers that exist.
    """
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is None; pass `layer=` naming the layer that holds the expression.")
        return adata.X
    if layer == "raw":
        if adata.raw is None:
            raise KeyError("layer='raw' was requested but adata.raw is None.")
        if adata.raw.n_vars != adata.n_vars or not np.array_equal(adata.raw.var_names, adata.var_names):
            raw = adata.raw.to_adata()[:, adata.var_names]
            return raw.X
        return adata.raw.X
    if layer not in adata.layers:
        raise KeyError(
            f"layer {layer!r} is not in adata.layers (available: {list(adata.layers.keys())}); "
            "pass layer=None to use adata.X."
        )
    return adata.layers[layer]


def to_dense(x) -> np.ndarray:
    """Dense float32 numpy view of a numpy/sparse/backed matrix."""
    if sp_sparse.issparse(x):
        x = x.toarray()
    elif hasattr(x, "to_memory"):
        x = x.to_memory()
        if sp_sparse.issparse(x):
            x = x.toarray()
    return np.asarray(x, dtype=np.float32)


def check_keys(
    adata: AnnData, *, obs: list[str] | tuple[str, ...] = (), obsm: list[str] | tuple[str, ...] = ()
) -> None:
    """Raise a ``KeyError`` naming every missing ``obs``/``obsm`` key and what exists."""
    for key in obs:
        if key not in adata.obs.columns:
            raise KeyError(
                f"adata.obs[{key!r}] does not exist (obs columns: {list(adata.obs.columns)[:20]})."
            )
        col = adata.obs[key]
        if col.isna().any():
            n = int(col.isna().sum())
            raise ValueError(f"adata.obs[{key!r}] has {n} missing values; fill or drop those cells first.")
    for key in obsm:
        if key not in adata.obsm:
            raise KeyError(f"adata.obsm[{key!r}] does not exist (obsm keys: {list(adata.obsm.keys())}).")


def jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, tuples, paths and mappings into JSON-serialisable values."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def record_provenance(adata: AnnData, key_added: str, params: Mapping[str, Any], **extra: Any) -> None:
    """Write ``adata.uns[key_added]`` = ``{"params": ..., **extra}`` with the package version.

    ``None`` values are stored as the string ``"None"`` so that the AnnData stays writable to h5ad.
    """
    from . import __version__

    def _h5(v):
        v = jsonable(v)
        if v is None:
            return "None"
        if isinstance(v, dict):
            return {k: _h5(x) for k, x in v.items()}
        if isinstance(v, list):
            if any(isinstance(x, (dict, list)) or x is None for x in v):
                return json.dumps(v)
            return v
        return v

    entry = {"params": _h5(dict(params)), "version": __version__}
    for k, v in extra.items():
        entry[k] = v if isinstance(v, (np.ndarray,)) else _h5(v)
    adata.uns[key_added] = entry
