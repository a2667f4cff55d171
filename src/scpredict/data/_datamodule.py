"""One data interface for every model: in-memory AnnData, backed h5ad, zarr, chunk directories, parquet.

:class:`CellDataModule` names where the cells are and how they are streamed; ``model.train(data=...)`` and
every ``predict`` of a torch model accept it (or a path, or an AnnData from :func:`~scpredict.data.read_lazy`,
or a backed AnnData). :class:`~scpredict.models.BaseModel` turns it into a :class:`StreamPrepared` (metadata
encoded in memory, expression left on disk) whose loaders are :class:`~scpredict.data.CellLoader` objects,
rank-aware under Lightning DDP.

:func:`distributed_inference` makes ``predict`` of a model run across the ranks of a ``torch.distributed``
process group (each rank computes a contiguous shard, the outputs are gathered back in cell order on every
rank).

No torch at import time.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp_sparse

from ._backed import SOURCE_UNS_KEY, CellLoader, CellSource, distributed_rank_world, open_cells, source_of

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["CellDataModule", "StreamPrepared", "distributed_inference", "prepare_stream"]

_SCALE_CHECK_ROWS = 2048
_LOADER_KEYS = ("mix_blocks", "num_workers", "prefetch_factor", "pad_shards")


class CellDataModule:
    """Where a model's cells are and how they are streamed: the one data interface of every model.

    Parameters
    ----------
    data
        An AnnData (in memory or backed), an AnnData from :func:`~scpredict.data.read_lazy`, an ``.h5ad``
        path, a ``.zarr`` store, a chunk directory (:func:`~scpredict.data.write_chunks`), parquet cells
        (:func:`~scpredict.data.write_parquet_cells`, Tahoe-100M's layout) or a
        :class:`~scpredict.data.CellSource`.
    layer
        Layer holding the expression; default: the layer the model was set up with.
    block_size
        Rows read from disk at once (stores without natural blocks); chunk files and parquet row groups are
        used as they are.
    mix_blocks
        Blocks whose cells are shuffled together in training (randomness vs. memory, about
        ``(mix_blocks + 1) × block_size`` cells held per process).
    num_workers, prefetch_factor
        Background processes that read blocks while the model trains (0: in the main process).
    pad_shards
        Under DDP, give every rank the same number of cells (repeating a few), as DDP needs equal batch
        counts; ``False`` drops the remainder instead.
    **source_kwargs
        Passed to :func:`~scpredict.data.open_cells` (e.g. ``var_names=`` for parquet without gene names).

    Examples
    --------
    >>> dm = sp.data.CellDataModule("atlas.h5ad", block_size=8192, num_workers=2)  # doctest: +SKIP
    >>> sp.models.LinearClassifier.setup_anndata(dm.to_adata(), labels_key="cell_type")  # doctest: +SKIP
    >>> model = sp.models.LinearClassifier(dm.to_adata())  # doctest: +SKIP
    >>> model.train(data=dm, strategy="ddp", devices=4, num_nodes=2)  # doctest: +SKIP
    """

    def __init__(
        self,
        data: Any,
        *,
        layer: str | None = None,
        block_size: int = 4096,
        mix_blocks: int = 4,
        num_workers: int = 0,
        prefetch_factor: int | None = 2,
        pad_shards: bool = True,
        **source_kwargs: Any,
    ) -> None:
        self.data = data
        self.layer = layer
        self.block_size = int(block_size)
        self.mix_blocks = int(mix_blocks)
        self.num_workers = int(num_workers)
        self.prefetch_factor = prefetch_factor
        self.pad_shards = bool(pad_shards)
        self.source_kwargs = dict(source_kwargs)
        self._adata: AnnData | None = None

    def source(self, layer: str | None = None) -> tuple[CellSource, np.ndarray | None]:
        """The store and the rows of it this module covers (see :func:`~scpredict.data.source_of`)."""
        from anndata import AnnData

        layer = self.layer if self.layer is not None else layer
        if isinstance(self.data, AnnData):
            found = source_of(self.data, layer=layer)
            if found is not None:
                return found
        return open_cells(self.data, layer=layer, block_size=self.block_size, **self.source_kwargs), None

    def to_adata(self) -> AnnData:
        """An AnnData with the cells' metadata (expression stays on disk) to ``setup_anndata`` a model on.

        The same object is returned on every call.
        """
        from anndata import AnnData

        if self._adata is None:
            if isinstance(self.data, AnnData):
                self._adata = self.data
            else:
                self._adata = open_cells(
                    self.data, layer=self.layer, block_size=self.block_size, **self.source_kwargs
                ).to_adata()
                self._adata.uns[SOURCE_UNS_KEY] = dict(self._adata.uns[SOURCE_UNS_KEY]) | {
                    "loader": self.loader_kwargs()
                }
        return self._adata

    def loader_kwargs(self) -> dict[str, Any]:
        return {
            "mix_blocks": self.mix_blocks,
            "num_workers": self.num_workers,
            "prefetch_factor": self.prefetch_factor,
            "pad_shards": self.pad_shards,
        }

    def __repr__(self) -> str:
        what = type(self.data).__name__ if not isinstance(self.data, (str, bytes)) else repr(self.data)
        return f"CellDataModule({what}, block_size={self.block_size}, num_workers={self.num_workers})"


@dataclass
class StreamPrepared:
    """A model's view of streamed data: metadata encoded in memory, expression read from disk per batch.

    Duck-types :class:`~scpredict.models._base.PreparedData` (``adata``, ``manager``, ``source``,
    ``n_obs``): ``adata`` holds the encoded ``obs`` columns and ``obsm`` inputs keyed by registry key and an
    all-zero sparse placeholder ``X``; expression comes only from :meth:`loader`.

    Attributes
    ----------
    adata
        Internal AnnData (encoded ``obs``/``obsm``; placeholder ``X``).
    source
        The user's AnnData (or the metadata AnnData of a path), not modified.
    cells
        The :class:`~scpredict.data.CellSource` read.
    rows
        Row in ``cells`` of each prepared cell (``None`` = identity).
    var_names
        The model's genes (blocks are aligned to them by name).
    loader_kwargs
        Settings of the :class:`~scpredict.data.CellLoader` (blocks mixed, workers, padding).
    seed
        Seed of the epoch permutations.
    """

    adata: Any
    source: Any
    cells: CellSource
    rows: np.ndarray | None
    var_names: list[str]
    loader_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    manager: Any = None
    is_stream: bool = True

    @property
    def n_obs(self) -> int:
        return int(self.adata.n_obs)

    def columns(self) -> dict[str, np.ndarray]:
        """Registry key → per-cell array (codes / numbers / matrices) handed to the batches."""
        cols: dict[str, np.ndarray] = {}
        for k in self.adata.obs.columns:
            cols[str(k)] = self.adata.obs[k].to_numpy(dtype=np.float32)
        for k, v in self.adata.obsm.items():
            cols[str(k)] = np.asarray(v, dtype=np.float32)
        return cols

    def loader(
        self,
        indices: np.ndarray | None = None,
        *,
        batch_size: int = 256,
        shuffle: bool = False,
        drop_last: bool = False,
        **kwargs: Any,
    ) -> CellLoader:
        """A :class:`~scpredict.data.CellLoader` over ``indices`` (positions in this prepared data)."""
        opts = dict(self.loader_kwargs) | kwargs
        return CellLoader(
            self.cells,
            rows=self.rows,
            indices=indices,
            columns=self.columns(),
            var_names=self.var_names,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            seed=self.seed,
            **opts,
        )


def _check_scale_sample(model: Any, cells: CellSource, rows: np.ndarray | None) -> None:
    """Check the declared scale on the first rows (reading everything would defeat streaming)."""
    from anndata import AnnData

    from ..pp._check import check_input

    n = min(_SCALE_CHECK_ROWS, cells.n_obs if rows is None else len(rows))
    if n == 0:
        return
    if rows is None:
        x = cells.read_rows(0, n)
    else:
        sel = np.sort(rows[:n])
        lo, hi = int(sel[0]), int(sel[-1]) + 1
        x = cells.read_rows(lo, hi)[sel - lo] if hi - lo <= 8 * _SCALE_CHECK_ROWS else cells.read_rows(0, n)
    sample = AnnData(X=x, var=pd.DataFrame(index=cells.var_names.copy()))
    check_input(sample, layer=None, scale=model.setup_.scale, name=type(model).__name__)


def prepare_stream(
    model: Any, data: Any, *, keys: Sequence[str] | None = None, check_scale: bool = True
) -> StreamPrepared | None:
    """What :meth:`BaseModel._prepare` returns for out-of-core data; ``None`` for in-memory AnnData.

    Parameters
    ----------
    model
        A torch :class:`~scpredict.models.BaseModel`.
    data
        Backed / lazy AnnData, a path, a :class:`~scpredict.data.CellSource` or a :class:`CellDataModule`.
    keys
        Registry keys needed (default all registered).
    check_scale
        Check the declared scale on the first rows.
    """
    from anndata import AnnData

    from .._settings import settings
    from ._alignment import align_genes

    rec = model.setup_
    dm = data if isinstance(data, CellDataModule) else None
    if dm is not None:
        cells, rows = dm.source(layer=rec.layer)
        meta = dm.to_adata()
        opts = dm.loader_kwargs()
    else:
        found = source_of(data, layer=rec.layer)
        if found is None:
            return None
        cells, rows = found
        meta = data if isinstance(data, AnnData) else cells.to_adata()
        desc = meta.uns.get(SOURCE_UNS_KEY, {}) if isinstance(meta, AnnData) else {}
        opts = {k: v for k, v in dict(desc.get("loader", {})).items() if k in _LOADER_KEYS}
    if rows is not None and len(rows) != meta.n_obs:
        rows = None if len(rows) == cells.n_obs else rows
    align_genes(
        cells.var_names,
        model.var_names_,
        max_missing=model._max_missing_genes,
        what=f"this {type(model).__name__}",
    )
    if check_scale:
        _check_scale_sample(model, cells, rows)
    wanted = set(rec.categorical) | set(rec.continuous) | set(rec.obsm) if keys is None else set(keys)
    codes = model._encode_categories(meta, [k for k in rec.categorical if k in wanted])
    obs = pd.DataFrame(index=meta.obs_names.copy())
    for k, c in codes.items():
        obs[k] = c
    from .._utils import check_keys

    for k, col in rec.continuous.items():
        if k in wanted:
            check_keys(meta, obs=[col])
            obs[k] = meta.obs[col].to_numpy(dtype=np.float32)
    obsm = {}
    for k, key in rec.obsm.items():
        if k in wanted:
            obsm[k] = model._checked_obsm(meta, k, key)  # the same checks as the in-memory path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        internal = AnnData(
            X=sp_sparse.csr_matrix((meta.n_obs, model.n_vars), dtype=np.float32),
            obs=obs,
            var=pd.DataFrame(index=pd.Index(model.var_names_)),
            obsm=obsm,
        )
    return StreamPrepared(
        adata=internal,
        source=meta,
        cells=cells,
        rows=rows,
        var_names=list(model.var_names_),
        loader_kwargs=opts,
        seed=int(settings.seed),
    )


# --------------------------------------------------------------------------------------------- inference
_DISTRIBUTED = {"on": False}


@contextlib.contextmanager
def distributed_inference() -> Iterator[None]:
    """Run model inference across the ranks of the current ``torch.distributed`` process group.

    Inside the block, every forward pass over cells of a torch model (``predict``, ``get_*``) is split into
    ``world_size`` contiguous shards; each rank computes its own and the outputs are gathered so that every
    rank gets all cells, in cell order. Every rank must enter the block and make the same calls (they are
    collective); without a process group (or with one rank) it changes nothing.

    Examples
    --------
    >>> model.train(strategy="ddp", devices=2)  # doctest: +SKIP
    >>> with sp.data.distributed_inference():  # doctest: +SKIP
    ...     model.predict(adata, key_added="pred")
    """
    old = _DISTRIBUTED["on"]
    _DISTRIBUTED["on"] = True
    try:
        yield
    finally:
        _DISTRIBUTED["on"] = old


def inference_shard(n_obs: int) -> tuple[np.ndarray | None, Callable[[Any], Any] | None]:
    """``(indices, gather)`` of this rank inside :func:`distributed_inference`, else ``(None, None)``.

    ``gather`` takes this rank's stacked outputs (array or dict of arrays) and returns all ranks' outputs
    concatenated in cell order.
    """
    if not _DISTRIBUTED["on"]:
        return None, None
    rank, world = distributed_rank_world()
    if world <= 1:
        return None, None
    bounds = np.linspace(0, n_obs, world + 1).round().astype(np.int64)
    indices = np.arange(bounds[rank], bounds[rank + 1], dtype=np.int64)

    def gather(out: Any) -> Any:
        if isinstance(out, dict):
            return {k: _gather_array(v, bounds) for k, v in out.items()}
        return _gather_array(out, bounds)

    return indices, gather


def _gather_array(x: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    import torch
    import torch.distributed as dist

    sizes = np.diff(bounds)
    m = int(sizes.max())
    t = torch.from_numpy(np.ascontiguousarray(x))
    pad = torch.zeros((m, *t.shape[1:]), dtype=t.dtype)
    pad[: t.shape[0]] = t
    if dist.get_backend() == "nccl":  # NCCL gathers CUDA tensors only
        pad = pad.to(torch.device("cuda", torch.cuda.current_device()))
    parts = [torch.empty_like(pad) for _ in range(len(sizes))]
    dist.all_gather(parts, pad)
    return torch.cat([p[: int(s)].cpu() for p, s in zip(parts, sizes, strict=True)]).numpy()
