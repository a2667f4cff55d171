"""Test helpers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp_sparse
from anndata import AnnData


def _dense(x):
    return x.toarray() if sp_sparse.issparse(x) else np.asarray(x)


def assert_adata_equal(a: AnnData, b: AnnData) -> None:
    """Assert two AnnData objects hold the same X, layers, obs, var, obsm, varm and uns keys."""
    assert a.shape == b.shape
    np.testing.assert_array_equal(_dense(a.X), _dense(b.X))
    assert list(a.layers.keys()) == list(b.layers.keys())
    for k in a.layers:
        np.testing.assert_array_equal(_dense(a.layers[k]), _dense(b.layers[k]))
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    assert list(a.obsm.keys()) == list(b.obsm.keys())
    for k in a.obsm:
        np.testing.assert_array_equal(np.asarray(a.obsm[k]), np.asarray(b.obsm[k]))
    assert list(a.varm.keys()) == list(b.varm.keys())
    assert sorted(a.uns.keys()) == sorted(b.uns.keys())
    assert (a.raw is None) == (b.raw is None)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Single-threaded torch while a test module runs: on a shared 2-core machine small torch ops are many times
    slower with two threads (spin contention). Import it into a test module to apply it there."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
