"""Out-of-core data (backed h5ad, zarr, chunks, parquet), the rank-aware loader, resuming, import cost."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp_sparse

import scpredict as sp
from scpredict.data import CellLoader, open_cells, source_of


@pytest.fixture
def cells(tmp_path):
    """400 cells × 30 genes (log1p, sparse), saved as h5ad; with labels and a numeric column."""
    adata = sp.datasets.synthetic_celltypes(n_cells=400, n_genes=30)
    adata.X = sp_sparse.csr_matrix(adata.layers.pop("log1p"), dtype=np.float32)
    adata.obs["depth"] = np.arange(adata.n_obs, dtype=float)
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    return adata, path


def _all_rows(loader):
    xs, depth = [], []
    for b in loader:
        xs.append(b["X"].numpy())
        depth.append(b["depth"].numpy().ravel())
    return np.concatenate(xs), np.concatenate(depth).astype(int)


# ---------------------------------------------------------------- sources
@pytest.mark.parametrize("kind", ["h5ad", "zarr", "chunks", "parquet", "anndata"])
def test_sources_read_the_same_rows(cells, tmp_path, kind):
    adata, path = cells
    if kind == "h5ad":
        src = path
    elif kind == "zarr":
        src = tmp_path / "cells.zarr"
        adata.write_zarr(src)
    elif kind == "chunks":
        src = tmp_path / "chunks"
        sp.data.write_chunks(adata, src, chunk_size=64)
    elif kind == "parquet":
        src = tmp_path / "cells.parquet"
        sp.data.write_parquet_cells(adata, src, row_group_size=50)
    else:
        src = adata
    s = open_cells(src, block_size=70)
    assert (s.n_obs, s.n_vars) == adata.shape
    assert list(s.var_names) == list(adata.var_names)
    bounds = s.block_bounds()
    assert bounds[0] == 0 and bounds[-1] == adata.n_obs
    got = sp_sparse.vstack([s.read_block(b) for b in range(len(bounds) - 1)])
    assert got.dtype == np.float32 and sp_sparse.issparse(got)
    np.testing.assert_allclose(got.toarray(), adata.X.toarray(), rtol=1e-6)
    np.testing.assert_allclose(s.read_rows(33, 171).toarray(), adata.X[33:171].toarray(), rtol=1e-6)
    assert list(s.obs.index) == list(adata.obs_names)
    assert list(s.obs["cell_type"].astype(str)) == list(adata.obs["cell_type"].astype(str))


def test_read_lazy_keeps_expression_on_disk_and_subsets_map_rows(cells):
    adata, path = cells
    lazy = sp.data.read_lazy(path)
    assert not sp_sparse.issparse(lazy.X)  # anndata's on-disk sparse dataset, not a loaded matrix
    src, rows = source_of(lazy)
    assert rows is None and src.kind == "h5ad"
    sub = lazy[[5, 3, 300]]
    src, rows = source_of(sub)
    assert rows.tolist() == [5, 3, 300]
    backed = ad.read_h5ad(path, backed="r")
    assert source_of(backed)[1] is None
    assert source_of(adata) is None  # in memory: not streamed


# ---------------------------------------------------------------- loader
def test_loader_shards_are_disjoint_equal_and_cover_every_cell(cells):
    adata, path = cells
    src = open_cells(path, block_size=32)
    idx = np.arange(0, 397)  # 397 cells: not a multiple of 2 nor of the batch size
    depth = adata.obs["depth"].to_numpy()
    kw = dict(indices=idx, columns={"depth": depth}, batch_size=16, shuffle=True, mix_blocks=2, seed=3)
    seen = []
    for rank in (0, 1):
        loader = CellLoader(src, rank=rank, world_size=2, **kw)
        x, d = _all_rows(loader)
        np.testing.assert_allclose(x, adata.X.toarray()[d], rtol=1e-6)  # every row read is the right cell
        assert len(loader) == -(-199 // 16) and len(d) == 199  # padded to the same length on both ranks
        seen.append(d)
    allc = np.concatenate(seen)
    assert set(allc) == set(idx)  # every cell is seen
    assert len(allc) - len(set(allc)) == 1  # one padding repeat
    one = CellLoader(src, world_size=1, rank=0, **kw)
    e0 = _all_rows(one)[1]
    e1 = _all_rows(one)[1]
    assert sorted(e0) == sorted(e1) == list(idx) and not np.array_equal(e0, e1)  # reshuffled per epoch


def test_loader_in_order_aligns_genes_by_name(cells):
    adata, path = cells
    src = open_cells(path, block_size=50)
    genes = list(adata.var_names[::-1][:25]) + ["not_a_gene"]
    loader = CellLoader(src, var_names=genes, batch_size=64, shuffle=False, world_size=1, rank=0)
    x = np.concatenate([b["X"].numpy() for b in loader])
    want = adata[:, genes[:-1]].X.toarray()
    np.testing.assert_allclose(x[:, :-1], want, rtol=1e-6)
    assert (x[:, -1] == 0).all()


def test_loader_workers_give_the_same_batches(cells):
    adata, path = cells
    src = open_cells(path, block_size=40)
    depth = adata.obs["depth"].to_numpy()
    kw = dict(columns={"depth": depth}, batch_size=32, shuffle=True, seed=1, world_size=1, rank=0)
    a = [b["depth"].numpy().ravel() for b in CellLoader(src, num_workers=0, **kw)]
    b = [b["depth"].numpy().ravel() for b in CellLoader(src, num_workers=2, **kw)]
    assert sorted(map(tuple, a)) == sorted(map(tuple, b))


# ---------------------------------------------------------------- models
def test_models_train_from_disk_and_predict_like_in_memory(cells, tmp_path):
    adata, path = cells
    lazy = sp.data.read_lazy(path, block_size=64)
    sp.models.LinearClassifier.setup_anndata(lazy, labels_key="cell_type", scale="log1p")
    model = sp.models.LinearClassifier(lazy)
    model.train(max_epochs=2, batch_size=32, logger=None, enable_checkpointing=False)
    assert len(model.history["validation_loss"]) == 2
    p_disk = model.get_probabilities(lazy)
    p_mem = model.get_probabilities(adata)
    # in memory the classifier folds its batch norm into the weights (one sparse matmul): float32 rounding
    np.testing.assert_allclose(p_disk, p_mem, atol=1e-5)
    model.predict(lazy[100:160], key_added="lin")  # a subset streams only its rows
    # chunk directory and CellDataModule give the same training data
    sp.data.write_chunks(adata, tmp_path / "ch", chunk_size=100)
    dm = sp.data.CellDataModule(tmp_path / "ch", mix_blocks=2)
    model2 = sp.models.LinearClassifier(lazy)
    model2.train(max_epochs=1, batch_size=32, data=dm, logger=None, enable_checkpointing=False)
    assert model2.train_params_["n_train"] == 360


def test_streaming_wrong_genes_or_labels_fail_clearly(cells, tmp_path):
    adata, path = cells
    sp.models.LinearClassifier.setup_anndata(adata, labels_key="cell_type", scale="log1p")
    model = sp.models.LinearClassifier(adata)
    other = adata.copy()
    other.var_names = [f"x{i}" for i in range(other.n_vars)]
    other.write_h5ad(tmp_path / "other.h5ad")
    with pytest.raises(ValueError, match="gene"):
        model.train(max_epochs=1, data=tmp_path / "other.h5ad", logger=None)


class _Boom(Exception):
    pass


def test_interrupted_training_resumes_from_last_checkpoint(cells, tmp_path):
    import lightning.pytorch as pl

    adata, path = cells

    class Crash(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 2 and batch_idx == 3:
                raise _Boom("simulated node failure")

    lazy = sp.data.read_lazy(path, block_size=64)
    sp.models.LinearClassifier.setup_anndata(lazy, labels_key="cell_type", scale="log1p")
    model = sp.models.LinearClassifier(lazy)
    root = tmp_path / "run"
    with pytest.raises(_Boom):
        model.train(
            max_epochs=4, batch_size=32, default_root_dir=root, callbacks=[Crash()], early_stopping=False
        )
    last = list(root.rglob("last.ckpt"))
    assert len(last) == 1
    import torch

    state = torch.load(last[0], map_location="cpu", weights_only=False)
    assert state["epoch"] == 1  # the last completed epoch (0-based) before the crash in epoch 2
    resumed = sp.models.LinearClassifier(lazy)
    resumed.train(
        max_epochs=4, batch_size=32, default_root_dir=root, ckpt_path=str(last[0]), early_stopping=False
    )
    assert resumed.trainer_.current_epoch == 4
    assert resumed.history["train_loss"].index.tolist() == [2, 3]  # only the epochs that were left
    assert resumed.is_trained_


def test_distributed_inference_is_inactive_without_a_process_group(cells):
    from scpredict.data._datamodule import inference_shard

    with sp.data.distributed_inference():
        assert inference_shard(100) == (None, None)
    assert inference_shard(100) == (None, None)


_WORKER = """
import sys
import numpy as np
import torch.distributed as dist
import scpredict as sp

model_dir, path, out = sys.argv[1:4]
dist.init_process_group("gloo")
model = sp.models.LinearClassifier.load(model_dir)
lazy = sp.data.read_lazy(path, block_size=50)
with sp.data.distributed_inference():
    p = model.get_probabilities(lazy)
np.save(out + "_" + str(dist.get_rank()) + ".npy", p)
dist.destroy_process_group()
"""


def test_distributed_inference_returns_cells_in_order(cells, tmp_path):
    import os
    import socket

    adata, path = cells
    sp.models.LinearClassifier.setup_anndata(adata, labels_key="cell_type", scale="log1p")
    model = sp.models.LinearClassifier(adata)
    model.train(max_epochs=1, logger=None, enable_checkpointing=False)
    model.save(tmp_path / "m")
    want = model.get_probabilities(adata)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    out = str(tmp_path / "p")
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [sys.executable, str(script), str(tmp_path / "m"), str(path), out]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    for p in procs:
        log, _ = p.communicate(timeout=300)
        assert p.returncode == 0, log[-2000:]
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(f"{out}_{rank}.npy"), want, atol=1e-6)


# ---------------------------------------------------------------- import cost
_IMPORT = (
    "import time, sys; import anndata; t = time.process_time(); import scpredict; "
    "print(time.process_time() - t, *(m in sys.modules for m in ('torch', 'lightning', 'scvi', 'scanpy')))"
)


def _import_runs(n: int = 3) -> list[list[str]]:
    out = []
    for _ in range(n):
        res = subprocess.run([sys.executable, "-c", _IMPORT], capture_output=True, text=True, check=True)
        out.append(res.stdout.split())
    return out


def test_import_loads_no_torch_lightning_scvi_or_scanpy():
    for run in _import_runs(2):
        assert run[1:] == ["False"] * 4, run


def test_import_adds_under_half_a_second():
    # CPU time, not wall time: the shared test machine is heavily oversubscribed
    runs = [float(r[0]) for r in _import_runs(3)]
    assert min(runs) < 0.5, runs
