"""Chunked expression on disk: write_chunks and the two-level ChunkedDataset loader."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp_sparse

import scpredict as sp

N_OBS, N_VARS = 530, 25


@pytest.fixture
def adata() -> ad.AnnData:
    rng = np.random.default_rng(0)
    x = sp_sparse.random(N_OBS, N_VARS, density=0.3, format="csr", random_state=1, dtype=np.float32)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(rng.choice(["T", "B", "NK"], N_OBS), categories=["B", "NK", "T"]),
            "row": np.arange(N_OBS),
        },
        index=[f"cell{i}" for i in range(N_OBS)],
    )
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(N_VARS)]))


def _epoch(ds):
    idx, xs, rows = [], [], []
    for batch in ds:
        idx.append(batch.index)
        xs.append(batch.X.numpy())
        rows.append(batch.obs["row"].to_numpy())
        assert batch.X.shape[0] <= ds.batch_size
    return np.concatenate(idx), np.concatenate(xs), np.concatenate(rows)


@pytest.mark.parametrize("metadata_format", ["parquet", "csv"])
def test_round_trip_every_cell_once_per_epoch(adata, tmp_path, metadata_format):
    sp.data.write_chunks(adata, tmp_path / "c", chunk_size=100, metadata_format=metadata_format)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert [c["n_obs"] for c in manifest["chunks"]] == [100] * 5 + [30]
    assert (tmp_path / "c" / f"chunk_00000.obs.{metadata_format}").is_file()
    ds = sp.data.ChunkedDataset(tmp_path / "c", batch_size=32, seed=3)
    assert ds.n_obs == N_OBS and list(ds.var_names) == list(adata.var_names)
    dense = adata.X.toarray()
    orders = []
    for _ in range(2):
        idx, x, rows = _epoch(ds)
        assert len(idx) == N_OBS
        assert np.array_equal(np.sort(idx), np.arange(N_OBS))  # every cell exactly once
        np.testing.assert_array_equal(x, dense[idx])  # expression aligned with the cell
        np.testing.assert_array_equal(rows, idx)  # metadata aligned with the cell
        orders.append(idx)
    assert not np.array_equal(orders[0], orders[1])  # reshuffled between epochs
    assert len(ds) == sum(int(np.ceil(n / 32)) for n in [100] * 5 + [30])
    obs = ds.read_obs()
    assert list(obs["cell_type"].cat.categories) == ["B", "NK", "T"]
    assert list(obs.index) == list(adata.obs_names)


def test_chunk_order_is_shuffled_and_cells_stay_within_chunk(adata, tmp_path):
    sp.data.write_chunks(adata, tmp_path / "c", chunk_size=100)
    ds = sp.data.ChunkedDataset(tmp_path / "c", batch_size=50, seed=0)
    seen_chunks = []
    for batch in ds:
        chunk = np.unique(batch.index // 100)
        assert len(chunk) == 1  # the inner loader batches within one chunk
        if not seen_chunks or seen_chunks[-1] != chunk[0]:
            seen_chunks.append(int(chunk[0]))
    assert sorted(seen_chunks) == list(range(6))
    assert seen_chunks != list(range(6))


def test_prefetching_workers_give_the_same_epoch(adata, tmp_path):
    sp.data.write_chunks(adata, tmp_path / "c", chunk_size=100)
    plain = sp.data.ChunkedDataset(tmp_path / "c", batch_size=40, seed=5)
    workers = sp.data.ChunkedDataset(tmp_path / "c", batch_size=40, seed=5, num_workers=2, prefetch_factor=2)
    a, xa, _ = _epoch(plain)
    b, xb, _ = _epoch(workers)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(xa, xb)


def test_no_shuffle_is_in_order_and_drop_last(adata, tmp_path):
    sp.data.write_chunks(adata, tmp_path / "c", chunk_size=100)
    ds = sp.data.ChunkedDataset(tmp_path / "c", batch_size=40, shuffle=False)
    idx, _, _ = _epoch(ds)
    np.testing.assert_array_equal(idx, np.arange(N_OBS))
    dl = sp.data.ChunkedDataset(tmp_path / "c", batch_size=40, drop_last=True)
    idx, _, _ = _epoch(dl)
    assert len(idx) == len(dl) * 40 == 5 * 80


def test_h5ad_and_backed_sources(adata, tmp_path):
    path = tmp_path / "a.h5ad"
    adata.write_h5ad(path)
    ds = sp.data.ChunkedDataset(path, batch_size=64, chunk_size=128, num_workers=1)
    idx, x, rows = _epoch(ds)
    assert np.array_equal(np.sort(idx), np.arange(N_OBS))
    np.testing.assert_array_equal(x, adata.X.toarray()[idx])
    np.testing.assert_array_equal(rows, idx)
    # a backed AnnData can be written to chunks without loading it
    backed = ad.read_h5ad(path, backed="r")
    sp.data.write_chunks(backed, tmp_path / "c", chunk_size=200, obs_keys=["cell_type"])
    ds2 = sp.data.ChunkedDataset(tmp_path / "c", shuffle=False)
    assert ds2.obs_columns == ["cell_type"]
    np.testing.assert_array_equal(np.concatenate([b.X.numpy() for b in ds2]), adata.X.toarray())
    template = ds2.obs_adata()
    assert template.shape == adata.shape and template.X.nnz == 0


def test_pickled_metadata_needs_trust(adata, tmp_path):
    folder = tmp_path / "seed"
    folder.mkdir()
    for i, start in enumerate(range(0, N_OBS, 300)):
        sp_sparse.save_npz(folder / f"part{i}.npz", adata.X[start : start + 300])
        adata.obs.iloc[start : start + 300].to_pickle(folder / f"part{i}.pkl")
    with pytest.raises(ValueError, match="trust=True"):
        sp.data.ChunkedDataset(folder)
    ds = sp.data.ChunkedDataset(folder, trust=True, var_names=list(adata.var_names))
    idx, x, rows = _epoch(ds)
    assert np.array_equal(np.sort(idx), np.arange(N_OBS))
    np.testing.assert_array_equal(rows, idx)


def test_writer_errors(adata, tmp_path):
    with pytest.raises(KeyError, match="nope"):
        sp.data.write_chunks(adata, tmp_path / "a", obs_keys=["nope"])
    sp.data.write_chunks(adata, tmp_path / "b", chunk_size=300)
    with pytest.raises(FileExistsError):
        sp.data.write_chunks(adata, tmp_path / "b", chunk_size=300)
    sp.data.write_chunks(adata, tmp_path / "b", chunk_size=1000, overwrite=True)
    assert sp.data.ChunkedDataset(tmp_path / "b").n_chunks == 1
    with pytest.raises(KeyError, match="missing_col"):
        sp.data.ChunkedDataset(tmp_path / "b", obs_keys=["missing_col"])
    with pytest.raises(FileNotFoundError):
        sp.data.ChunkedDataset(tmp_path / "does_not_exist")
