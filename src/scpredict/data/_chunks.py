"""Chunked expression on disk and the two-level loader that reads it.

A chunk directory (the format of the context-conditioned cycle autoencoder seed) holds

* ``chunk_00000.npz``, ``chunk_00001.npz``, ...: sparse CSR expression, one file per chunk of cells
  (:func:`scipy.sparse.save_npz`);
* ``chunk_00000.obs.parquet`` (or ``.csv``): the per-cell metadata aligned with the rows of that chunk;
* ``manifest.json``: gene names, chunk sizes, metadata columns and their categories.

:class:`ChunkedDataset` reads it with two nested PyTorch DataLoaders: an **outer** loader (batch size 1) that
only loads chunks from disk, in background worker processes with ``prefetch_factor`` chunks queued per worker,
and an **inner** loader that shuffles and batches the cells of one chunk. The chunk order is reshuffled every
epoch. The same loader reads an ``.h5ad`` file as contiguous row ranges. Chunks the seed wrote as pickled DataFrames (``.pkl``) are read only with ``trust=True``, since
unpickling runs arbitrary code.

torch is imported only when a :class:`ChunkedDataset` is iterated.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp_sparse

from .._utils import get_array

if TYPE_CHECKING:
    import torch
    from anndata import AnnData

__all__ = ["ChunkBatch", "ChunkedDataset", "write_chunks"]

MANIFEST = "manifest.json"
_FORMAT = "scpredict-chunks"


class ChunkBatch(NamedTuple):
    """One minibatch from :class:`ChunkedDataset`.

    Attributes
    ----------
    X
        Expression, ``float32`` tensor ``(batch, n_vars)`` (dense) or a scipy CSR matrix (``dense=False``).
    obs
        Metadata rows of these cells (index = obs names).
    index
        Position of each cell in the whole dataset (``int64`` array).
    """

    X: Any
    obs: pd.DataFrame
    index: np.ndarray


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:  # pragma: no cover - pyarrow is a test dependency
        msg = (
            "Parquet metadata needs pyarrow: pip install 'scpredict[parquet]', or use metadata_format='csv'."
        )
        raise ImportError(msg) from None


def _clean_obs(obs: pd.DataFrame) -> pd.DataFrame:
    """Columns that round-trip through parquet and CSV: categorical/str/numeric/bool."""
    out = pd.DataFrame(index=obs.index.astype(str))
    for col in obs.columns:
        s = obs[col]
        if isinstance(s.dtype, pd.CategoricalDtype):
            out[str(col)] = s.astype(str).to_numpy()
        elif pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            out[str(col)] = s.to_numpy()
        else:
            out[str(col)] = s.astype(str).to_numpy()
    return out


def write_chunks(
    adata: AnnData,
    directory: str | Path,
    *,
    chunk_size: int = 10_000,
    layer: str | None = None,
    obs_keys: Sequence[str] | None = None,
    metadata_format: Literal["parquet", "csv"] = "parquet",
    overwrite: bool = False,
) -> None:
    """Write an AnnData as a chunk directory (sparse CSR ``.npz`` chunks + aligned per-cell metadata).

    Works on in-memory and backed (``sc.read_h5ad(..., backed="r")``) AnnData; a backed file is read one
    chunk at a time.

    Parameters
    ----------
    adata
        Cells × genes.
    directory
        Folder to create (must not exist or be empty unless ``overwrite``).
    chunk_size
        Cells per chunk. Each chunk is loaded whole into memory by the reader, so choose it for RAM.
    layer
        Expression layer; ``None`` uses ``adata.X``.
    obs_keys
        Metadata columns to store; ``None`` stores every ``adata.obs`` column.
    metadata_format
        ``"parquet"`` (needs pyarrow) or ``"csv"``.
    overwrite
        Replace the chunk files of an existing chunk directory.

    Returns
    -------
    None. Writes into ``directory``:

    `chunk_{i:05d}.npz` : CSR matrix (cells of chunk ``i``, n_vars), float32
    `chunk_{i:05d}.obs.parquet` or `.obs.csv` : metadata rows of those cells
    `manifest.json` : ``var_names``, per-chunk file names and sizes, metadata columns and categories

    Examples
    --------
    >>> import tempfile, scpredict as sp
    >>> adata = sp.datasets.synthetic_counterfactual(n_obs=300, n_vars=50)  # doctest: +SKIP
    >>> sp.data.write_chunks(adata, tempfile.mkdtemp() + "/chunks", chunk_size=100)  # doctest: +SKIP
    """
    if chunk_size < 1:
        msg = f"chunk_size must be >= 1, got {chunk_size}."
        raise ValueError(msg)
    if metadata_format not in ("parquet", "csv"):
        msg = f"metadata_format must be 'parquet' or 'csv', got {metadata_format!r}."
        raise ValueError(msg)
    if metadata_format == "parquet":
        _require_pyarrow()
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        msg = f"{directory} exists and is not empty; pass overwrite=True to replace its chunks."
        raise FileExistsError(msg)
    directory.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for p in directory.glob("chunk_*"):
            p.unlink()
    keys = list(adata.obs.columns) if obs_keys is None else list(obs_keys)
    missing = [k for k in keys if k not in adata.obs.columns]
    if missing:
        msg = f"obs_keys {missing} are not in adata.obs (columns: {list(adata.obs.columns)[:20]})."
        raise KeyError(msg)
    obs = _clean_obs(adata.obs[keys])
    categories = {
        str(k): [str(c) for c in adata.obs[k].cat.categories]
        for k in keys
        if isinstance(adata.obs[k].dtype, pd.CategoricalDtype)
    }
    x = get_array(adata, layer=layer)
    chunks = []
    for i, start in enumerate(range(0, adata.n_obs, chunk_size)):
        stop = min(start + chunk_size, adata.n_obs)
        block = x[start:stop]
        if hasattr(block, "to_memory"):
            block = block.to_memory()
        block = sp_sparse.csr_matrix(block, dtype=np.float32)
        block.sort_indices()
        name = f"chunk_{i:05d}"
        sp_sparse.save_npz(directory / f"{name}.npz", block, compressed=False)
        part = obs.iloc[start:stop]
        obs_file = f"{name}.obs.{metadata_format}"
        if metadata_format == "parquet":
            part.to_parquet(directory / obs_file)
        else:
            part.to_csv(directory / obs_file)
        chunks.append({"x": f"{name}.npz", "obs": obs_file, "n_obs": stop - start})
    manifest = {
        "format": _FORMAT,
        "version": 1,
        "n_obs": int(adata.n_obs),
        "n_vars": int(adata.n_vars),
        "var_names": [str(v) for v in adata.var_names],
        "layer": layer,
        "obs_columns": list(obs.columns),
        "categories": categories,
        "chunks": chunks,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest))


def _read_obs(path: Path, *, trust: bool) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        _require_pyarrow()
        return pd.read_parquet(path)
    if suffix == ".csv":
        return pd.read_csv(path, index_col=0)
    if suffix in (".pkl", ".pickle"):
        if not trust:
            msg = (
                f"{path} is a pickle; unpickling runs arbitrary code, so it is read only with trust=True. "
                "Convert it with write_chunks (parquet or CSV) to avoid this."
            )
            raise ValueError(msg)
        obj = pd.read_pickle(path)  # noqa: S301 - explicit opt-in above
        if not isinstance(obj, pd.DataFrame):
            obj = pd.DataFrame(obj)
        return obj
    msg = f"unknown metadata file type {path.name!r}; expected .parquet, .csv or (with trust=True) .pkl."
    raise ValueError(msg)


class _ChunkFiles:
    """Map-style dataset over chunk files: item ``i`` = (CSR, obs, global offset) of chunk ``i``."""

    def __init__(
        self,
        x_files: list[Path],
        obs_files: list[Path],
        offsets: np.ndarray,
        *,
        obs_keys: list[str] | None,
        categories: dict[str, list[str]],
        trust: bool,
    ) -> None:
        self.x_files = x_files
        self.obs_files = obs_files
        self.offsets = offsets
        self.obs_keys = obs_keys
        self.categories = categories
        self.trust = trust

    def __len__(self) -> int:
        return len(self.x_files)

    def __getitem__(self, i: int) -> tuple[sp_sparse.csr_matrix, pd.DataFrame, int]:
        x = sp_sparse.load_npz(self.x_files[i]).tocsr()
        obs = _read_obs(self.obs_files[i], trust=self.trust)
        if x.shape[0] != len(obs):
            msg = f"chunk {self.x_files[i].name} has {x.shape[0]} rows but its metadata has {len(obs)}."
            raise ValueError(msg)
        if self.obs_keys is not None:
            obs = obs[self.obs_keys]
        for col, cats in self.categories.items():
            if col in obs.columns:
                obs[col] = pd.Categorical(obs[col].astype(str), categories=cats)
        obs.index = obs.index.astype(str)
        return x, obs, int(self.offsets[i])


def _h5ad_manifest(path: Path, *, chunk_size: int, layer: str | None) -> tuple[dict, pd.DataFrame]:
    """Manifest-like description of an ``.h5ad`` read as contiguous row ranges, and its ``obs``."""
    import h5py
    from anndata.io import read_elem

    if chunk_size < 1:
        msg = f"chunk_size must be >= 1, got {chunk_size}."
        raise ValueError(msg)
    with h5py.File(path, "r") as f:
        obs = read_elem(f["obs"])
        var = read_elem(f["var"])
        if layer is None:
            elem = f["X"]
        elif "layers" in f and layer in f["layers"]:
            elem = f["layers"][layer]
        else:
            avail = list(f["layers"].keys()) if "layers" in f else []
            msg = f"layer {layer!r} is not in {path.name} (layers: {avail})."
            raise KeyError(msg)
        shape = tuple(elem.attrs["shape"]) if isinstance(elem, h5py.Group) else elem.shape
        if isinstance(elem, h5py.Group) and elem.attrs.get("encoding-type") != "csr_matrix":
            msg = f"{path.name}: expression is stored as {elem.attrs.get('encoding-type')}; rows of CSR or dense are read."
            raise ValueError(msg)
    n = int(shape[0])
    starts = list(range(0, n, chunk_size))
    chunks = [
        {"x": f"rows {s}:{min(s + chunk_size, n)}", "obs": "obs", "n_obs": min(s + chunk_size, n) - s}
        for s in starts
    ]
    categories = {
        str(c): [str(v) for v in obs[c].cat.categories]
        for c in obs.columns
        if isinstance(obs[c].dtype, pd.CategoricalDtype)
    }
    obs.index = obs.index.astype(str)
    manifest = {
        "format": _FORMAT,
        "version": 1,
        "n_obs": n,
        "n_vars": int(shape[1]),
        "var_names": [str(v) for v in var.index],
        "obs_columns": [str(c) for c in obs.columns],
        "categories": categories,
        "chunks": chunks,
    }
    return manifest, obs


class _H5adChunks:
    """Map-style dataset over contiguous row ranges of an ``.h5ad`` (X or a layer), opened once per process."""

    def __init__(
        self, path: Path, layer: str | None, *, offsets: np.ndarray, sizes: np.ndarray, obs: pd.DataFrame
    ) -> None:
        self.path = path
        self.layer = layer
        self.offsets = offsets
        self.sizes = sizes
        self.obs = obs
        self._handle: tuple[int, Any, Any] | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handle"] = None  # h5py handles do not cross process boundaries
        return state

    def _elem(self) -> Any:
        import os

        import h5py
        from anndata.io import sparse_dataset

        if self._handle is None or self._handle[0] != os.getpid():
            f = h5py.File(self.path, "r")
            elem = f["X"] if self.layer is None else f["layers"][self.layer]
            if isinstance(elem, h5py.Group):
                elem = sparse_dataset(elem)
            self._handle = (os.getpid(), f, elem)
        return self._handle[2]

    def __getitem__(self, i: int) -> tuple[sp_sparse.csr_matrix, pd.DataFrame, int]:
        start = int(self.offsets[i])
        stop = start + int(self.sizes[i])
        block = self._elem()[start:stop]
        x = sp_sparse.csr_matrix(block, dtype=np.float32)
        return x, self.obs.iloc[start:stop], start


def _unwrap(batch: list) -> Any:
    """Collate for a batch-size-1 loader: hand the single item through unchanged."""
    return batch[0]


def _identity(batch: Any) -> Any:
    return batch


class _ChunkCells:
    """Inner map-style dataset over one loaded chunk whose rows are permuted once (the within-chunk shuffle).

    Item = a run of consecutive positions of the permuted chunk -> ChunkBatch; slicing a CSR matrix and a
    DataFrame by a contiguous range is much cheaper than fancy-indexing them for every minibatch.
    """

    def __init__(
        self, x: sp_sparse.csr_matrix, obs: pd.DataFrame, offset: int, *, perm: np.ndarray | None, dense: bool
    ) -> None:
        if perm is not None:
            x = x[perm]
            obs = obs.iloc[perm]
        self.x = x
        self.obs = obs
        self.index = (
            np.arange(x.shape[0], dtype=np.int64) if perm is None else perm.astype(np.int64)
        ) + offset
        self.dense = dense

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, rows: list[int]) -> ChunkBatch:
        import torch

        start, stop = int(rows[0]), int(rows[-1]) + 1
        block = self.x[start:stop]
        xb = torch.from_numpy(block.toarray().astype(np.float32, copy=False)) if self.dense else block
        return ChunkBatch(xb, self.obs.iloc[start:stop], self.index[start:stop])


class ChunkedDataset:
    """Iterate minibatches of cells from a chunk directory through a two-level loader.

    The outer :class:`torch.utils.data.DataLoader` (batch size 1) only loads ``(expression, metadata)`` chunks
    from disk; with ``num_workers > 0`` it does so in background processes, keeping ``prefetch_factor`` chunks
    per worker queued while the model consumes the current one. The inner DataLoader shuffles the cells of the
    chunk in memory and cuts them into minibatches. Chunk order is reshuffled every epoch (every call to
    ``iter``), reproducibly from ``seed``.

    The same loader reads an ``.h5ad`` file without loading it: its rows are cut into contiguous ranges of
    ``chunk_size`` cells (read with h5py, so a backed file never comes into memory whole) that play the part
    of the chunk files.

    Parameters
    ----------
    directory
        A folder written by :func:`write_chunks` (or the seed's ``<name>.npz`` + metadata pairs), or an
        ``.h5ad`` file.
    batch_size
        Cells per minibatch (the last batch of each chunk may be smaller unless ``drop_last``).
    shuffle
        Shuffle chunk order and cells within each chunk.
    num_workers
        Background processes of the outer (chunk) loader; 0 loads chunks in the main process (no prefetch).
    prefetch_factor
        Chunks loaded ahead per worker (only with ``num_workers > 0``).
    obs_keys
        Metadata columns to load; ``None`` loads all.
    drop_last
        Drop the incomplete last minibatch of each chunk.
    dense
        Yield dense float32 tensors (default) or scipy CSR minibatches.
    seed
        Seed of the shuffles; ``None`` uses ``sp.settings.seed``.
    trust
        Allow pickled metadata files (``.pkl``), which can run arbitrary code when read.
    var_names
        Gene names for a directory without ``manifest.json`` (the seed's layout: ``<name>.npz`` beside
        ``<name>.pkl`` / ``.parquet`` / ``.csv``); default ``"0", "1", ...``.
    chunk_size
        Rows per chunk when reading an ``.h5ad`` file.
    layer
        Layer to read from an ``.h5ad`` file (``None`` = ``X``).

    Examples
    --------
    >>> ds = sp.data.ChunkedDataset("chunks/", batch_size=256, num_workers=1, prefetch_factor=2)  # doctest: +SKIP
    >>> for batch in ds:  # doctest: +SKIP
    ...     batch.X.shape, batch.obs["cell_type"], batch.index
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        batch_size: int = 128,
        shuffle: bool = True,
        num_workers: int = 0,
        prefetch_factor: int | None = 2,
        obs_keys: Sequence[str] | None = None,
        drop_last: bool = False,
        dense: bool = True,
        seed: int | None = None,
        trust: bool = False,
        var_names: Sequence[str] | None = None,
        chunk_size: int = 10_000,
        layer: str | None = None,
    ) -> None:
        self.directory = Path(directory)
        if batch_size < 1:
            msg = f"batch_size must be >= 1, got {batch_size}."
            raise ValueError(msg)
        h5ad = self.directory.is_file() and self.directory.suffix == ".h5ad"
        if h5ad:
            manifest, obs = _h5ad_manifest(self.directory, chunk_size=chunk_size, layer=layer)
        else:
            if layer is not None:
                msg = "layer= applies to .h5ad sources; a chunk directory stores one expression matrix."
                raise ValueError(msg)
            manifest_path = self.directory / MANIFEST
            if manifest_path.is_file():
                manifest = json.loads(manifest_path.read_text())
                if manifest.get("format") != _FORMAT:
                    msg = f"{manifest_path} is not a scpredict chunk manifest (format={manifest.get('format')!r})."
                    raise ValueError(msg)
            elif self.directory.is_dir():
                manifest = _discover(self.directory, var_names=var_names, trust=trust)
            else:
                msg = f"{self.directory} is neither a chunk directory nor an .h5ad file."
                raise FileNotFoundError(msg)
        self.manifest = manifest
        self.var_names = pd.Index(manifest["var_names"])
        self.obs_columns = list(manifest["obs_columns"])
        if obs_keys is not None:
            missing = [k for k in obs_keys if k not in self.obs_columns]
            if missing:
                msg = f"obs_keys {missing} are not in the chunk metadata (columns: {self.obs_columns})."
                raise KeyError(msg)
        self.obs_keys = None if obs_keys is None else list(obs_keys)
        self.categories: dict[str, list[str]] = dict(manifest.get("categories", {}))
        self.chunk_sizes = np.array([c["n_obs"] for c in manifest["chunks"]], dtype=np.int64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.num_workers = int(num_workers)
        self.prefetch_factor = prefetch_factor
        self.drop_last = drop_last
        self.dense = dense
        self.seed = seed
        self.trust = trust
        self.epoch = 0
        offsets = np.concatenate([[0], np.cumsum(self.chunk_sizes)[:-1]]).astype(np.int64)
        if h5ad:
            self._files = _H5adChunks(
                self.directory,
                layer,
                offsets=offsets,
                sizes=self.chunk_sizes,
                obs=obs if obs_keys is None else obs[obs_keys],
            )
        else:
            self._files = _ChunkFiles(
                [self.directory / c["x"] for c in manifest["chunks"]],
                [self.directory / c["obs"] for c in manifest["chunks"]],
                offsets,
                obs_keys=self.obs_keys,
                categories=self.categories,
                trust=trust,
            )

    # -- shape -----------------------------------------------------------------------------------------
    @property
    def n_obs(self) -> int:
        """Number of cells."""
        return int(self.chunk_sizes.sum())

    @property
    def n_vars(self) -> int:
        """Number of genes."""
        return len(self.var_names)

    @property
    def n_chunks(self) -> int:
        """Number of chunk files."""
        return len(self.chunk_sizes)

    def __len__(self) -> int:
        """Minibatches per epoch."""
        if self.drop_last:
            return int((self.chunk_sizes // self.batch_size).sum())
        return int(np.ceil(self.chunk_sizes / self.batch_size).sum())

    def __repr__(self) -> str:
        return (
            f"ChunkedDataset({str(self.directory)!r}, n_obs={self.n_obs}, n_vars={self.n_vars}, "
            f"n_chunks={self.n_chunks}, batch_size={self.batch_size}, num_workers={self.num_workers})"
        )

    def read_obs(self) -> pd.DataFrame:
        """All metadata rows, in dataset order (reads only the metadata files)."""
        if isinstance(self._files, _H5adChunks):
            return self._files.obs.copy()
        parts = [_read_obs(p, trust=self.trust)[self.obs_keys or slice(None)] for p in self._files.obs_files]
        obs = pd.concat(parts, axis=0)
        for col, cats in self.categories.items():
            if col in obs.columns:
                obs[col] = pd.Categorical(obs[col].astype(str), categories=cats)
        obs.index = obs.index.astype(str)
        return obs

    def obs_adata(self) -> AnnData:
        """An AnnData with this dataset's ``obs`` and ``var_names`` and an all-zero sparse ``X``.

        It holds no expression (a few bytes per cell), which is enough to ``setup_anndata`` and build a model
        whose training then streams from this dataset (e.g. ``ContextCycleAE.train(data=dataset)``).
        """
        from anndata import AnnData

        obs = self.read_obs()
        x = sp_sparse.csr_matrix((len(obs), self.n_vars), dtype=np.float32)
        return AnnData(X=x, obs=obs, var=pd.DataFrame(index=self.var_names.copy()))

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose shuffles the next ``iter`` uses (it then counts up by itself)."""
        self.epoch = int(epoch)

    # -- iteration -------------------------------------------------------------------------------------
    def _seed(self) -> int:
        if self.seed is not None:
            return int(self.seed)
        from .._settings import settings

        return int(settings.seed)

    def chunk_loader(self, order: Sequence[int] | None = None) -> torch.utils.data.DataLoader:
        """The outer loader: yields ``(csr, obs, offset)`` per chunk, in ``order``."""
        from torch.utils.data import DataLoader

        order = list(range(self.n_chunks)) if order is None else [int(i) for i in order]
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0:
            kwargs["prefetch_factor"] = self.prefetch_factor
            kwargs["multiprocessing_context"] = "fork" if _can_fork() else None
        return DataLoader(
            self._files,
            batch_size=1,
            sampler=order,
            num_workers=self.num_workers,
            collate_fn=_unwrap,
            **kwargs,
        )

    def __iter__(self) -> Iterator[ChunkBatch]:
        import torch
        from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

        seed = self._seed() + 1_000_003 * self.epoch
        self.epoch += 1
        rng = np.random.default_rng(seed)
        order = rng.permutation(self.n_chunks) if self.shuffle else np.arange(self.n_chunks)
        gen = torch.Generator().manual_seed(seed)
        for x, obs, offset in self.chunk_loader(order):
            perm = torch.randperm(x.shape[0], generator=gen).numpy() if self.shuffle else None
            cells = _ChunkCells(x, obs, offset, perm=perm, dense=self.dense)
            inner = DataLoader(
                cells,
                sampler=BatchSampler(SequentialSampler(cells), self.batch_size, drop_last=self.drop_last),
                batch_size=None,
                collate_fn=_identity,
            )
            yield from inner


_OBS_SUFFIXES = (".obs.parquet", ".obs.csv", ".obs.pkl", ".parquet", ".csv", ".pkl", ".pickle")


def _discover(directory: Path, *, var_names: Sequence[str] | None, trust: bool) -> dict:
    """Build a manifest for a folder of ``<name>.npz`` + ``<name>[.obs].{parquet,csv,pkl}`` pairs."""
    x_files = sorted(directory.glob("*.npz"))
    if not x_files:
        msg = f"{directory} has neither {MANIFEST} nor .npz chunk files."
        raise FileNotFoundError(msg)
    chunks = []
    n_vars = None
    for xf in x_files:
        stem = xf.name[: -len(".npz")]
        obs_file = next((stem + s for s in _OBS_SUFFIXES if (directory / (stem + s)).is_file()), None)
        if obs_file is None:
            msg = f"no metadata file for {xf.name} (looked for {stem}{{{','.join(_OBS_SUFFIXES)}}})."
            raise FileNotFoundError(msg)
        # the shape is in the npz header; loading one small array is enough
        with np.load(xf) as z:
            shape = tuple(int(v) for v in z["shape"])
        if n_vars is not None and shape[1] != n_vars:
            msg = f"{xf.name} has {shape[1]} genes but earlier chunks have {n_vars}."
            raise ValueError(msg)
        n_vars = shape[1]
        chunks.append({"x": xf.name, "obs": obs_file, "n_obs": shape[0]})
    if var_names is None:
        var_names = [str(i) for i in range(n_vars)]
    elif len(var_names) != n_vars:
        msg = f"var_names has {len(var_names)} names but the chunks have {n_vars} genes."
        raise ValueError(msg)
    first = _read_obs(directory / chunks[0]["obs"], trust=trust)
    return {
        "format": _FORMAT,
        "version": 1,
        "n_obs": int(sum(c["n_obs"] for c in chunks)),
        "n_vars": int(n_vars),
        "var_names": [str(v) for v in var_names],
        "obs_columns": [str(c) for c in first.columns],
        "categories": {},
        "chunks": chunks,
    }


def _can_fork() -> bool:
    import multiprocessing as mp

    return "fork" in mp.get_all_start_methods()
