"""The model base class: setup, gene alignment, category checks, Lightning training, safe save/load."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp_sparse
import torch
from anndata import AnnData

from .._keys import SETUP_UNS_KEY
from .._settings import settings
from .._utils import check_keys, get_array, jsonable, record_provenance
from ..data._alignment import align_genes, align_matrix
from ..pp._check import Scale, check_input

__all__ = [
    "BaseModel",
    "SetupRecord",
    "PreparedData",
    "FORMAT_VERSION",
    "DEFAULT_TRAIN_SIZE",
    "obsm_array",
    "checked_obsm",
]

#: version of the on-disk model format written by :meth:`BaseModel.save`
FORMAT_VERSION = 1
#: fraction of cells trained on when ``train`` gets neither indices nor ``train_size``
DEFAULT_TRAIN_SIZE = 0.9


def obsm_array(adata: AnnData, key: str) -> np.ndarray:
    """``adata.obsm[key]`` as a dense float32 array (from numpy, a DataFrame or a scipy sparse matrix)."""
    m = adata.obsm[key]
    m = m.to_numpy() if isinstance(m, pd.DataFrame) else m
    m = m.toarray() if sp_sparse.issparse(m) else m
    return np.asarray(m, dtype=np.float32)


def checked_obsm(
    adata: AnnData, key: str, *, width: int | None = None, owner: str = "this model"
) -> np.ndarray:
    """:func:`obsm_array`, checked: present, 2-d, ``width`` columns (if given) and finite; errors name the key.

    Used at setup (training data) and on every query, in memory or streamed from disk.
    """
    check_keys(adata, obsm=[key])
    m = obsm_array(adata, key)
    if m.ndim != 2:
        raise ValueError(f"adata.obsm[{key!r}] must be a 2-d matrix, got shape {m.shape}.")
    if width is not None and m.shape[1] != width:
        raise ValueError(
            f"adata.obsm[{key!r}] has {m.shape[1]} columns; {owner} was trained on {width}. Compute the "
            f"query's embedding the way the training embedding was computed."
        )
    bad = int(np.size(m) - np.isfinite(m).sum())
    if bad:
        raise ValueError(
            f"adata.obsm[{key!r}] has {bad} NaN or infinite values; drop or fix those cells first."
        )
    return m


_WEIGHTS = "weights.safetensors"
_META = "model.json"
X_KEY = "X"


@dataclass
class SetupRecord:
    """What ``setup_anndata`` registered (JSON-serialisable; stored in ``adata.uns['_scpredict']``).

    Attributes
    ----------
    layer
        Expression layer (``None`` = ``X``, ``"raw"`` = ``adata.raw.X``).
    scale
        Declared scale of that layer (``"counts"``, ``"log1p"`` or ``"any"``).
    categorical
        Registry key → ``obs`` column of categorical inputs (encoded with the model's own vocabularies).
    continuous
        Registry key → ``obs`` column of numeric inputs.
    obsm
        Registry key → ``obsm`` key of matrix inputs (embeddings, features).
    extra
        Any other setup argument the model needs (JSON values).
    """

    layer: str | None = None
    scale: str = "any"
    categorical: dict[str, str] = field(default_factory=dict)
    continuous: dict[str, str] = field(default_factory=dict)
    obsm: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(jsonable(asdict(self)))

    @classmethod
    def from_json(cls, text: str | Mapping) -> SetupRecord:
        d = json.loads(text) if isinstance(text, str) else dict(text)
        return cls(**d)


@dataclass
class PreparedData:
    """New data made ready for a model: aligned matrix, encoded categories, scvi-tools manager.

    Built by :meth:`BaseModel._prepare`; the user's AnnData is never modified.

    Attributes
    ----------
    adata
        Internal AnnData: ``X`` = the registered layer with columns in the model's gene order, ``obs`` = one
        integer column per categorical registry key (``-1`` never occurs: unknowns are rejected or mapped to the
        unknown slot), numeric columns, ``obsm`` inputs.
    manager
        scvi-tools ``AnnDataManager`` registered on ``adata`` (fields: ``X`` layer, one numerical obs field per
        categorical/continuous key, one obsm field per matrix key).
    source
        The user's AnnData (not modified).
    """

    adata: AnnData
    manager: Any
    source: AnnData

    @property
    def n_obs(self) -> int:
        return self.adata.n_obs


@contextmanager
def _quiet_lightning():
    """Silence Lightning's info banners (GPU available, tips) unless ``sp.settings.verbosity >= 2``."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    old = [lg.level for lg in loggers]
    if settings.verbosity < 2:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, old, strict=True):
            lg.setLevel(lv)


class BaseModel:
    """Base class of every scpredict model.

    Subclasses declare their inputs in ``setup_anndata`` through :meth:`_setup`, build their torch module in
    ``_build_module`` (from persisted state only, so :meth:`load` can rebuild it), and implement ``predict``
    with ``get_*`` helpers. See ``docs/dev/models.md`` for the contract and a worked example.

    Parameters
    ----------
    adata
        AnnData registered with ``Model.setup_anndata``.
    **init_params
        Hyper-parameters of the subclass (recorded in ``init_params_`` and saved).
    """

    #: Lightning module class used by :meth:`train` (a ``TrainingPlan`` subclass).
    _training_plan_cls: ClassVar[type | None] = None
    #: registry keys of categorical inputs that may hold values unseen in training (mapped to an extra slot).
    _unknown_category_keys: ClassVar[frozenset[str]] = frozenset()
    #: largest fraction of model genes that may be missing (zero-filled) in new data.
    _max_missing_genes: ClassVar[float] = 0.1
    #: whether the model uses a torch module (``False`` for scikit-learn / xgboost models).
    _uses_torch: ClassVar[bool] = True

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_anndata(
        cls, adata: AnnData, *, layer: str | None = None, **kwargs: Any
    ) -> None:  # pragma: no cover
        """Register the inputs of this model on ``adata`` (subclasses define the keyword arguments)."""
        cls._setup(adata, layer=layer)

    @classmethod
    def _setup(
        cls,
        adata: AnnData,
        *,
        layer: str | None = None,
        scale: Scale = "any",
        categorical: Mapping[str, str | None] | None = None,
        continuous: Mapping[str, str | None] | None = None,
        obsm: Mapping[str, str | None] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Validate the declared inputs and record them in ``adata.uns['_scpredict'][ClassName]`` (JSON).

        ``None`` values in the mappings are dropped (optional inputs not given). Nothing is written when a
        check fails.
        """
        record = SetupRecord(
            layer=layer,
            scale=scale,
            categorical={k: v for k, v in (categorical or {}).items() if v is not None},
            continuous={k: v for k, v in (continuous or {}).items() if v is not None},
            obsm={k: v for k, v in (obsm or {}).items() if v is not None},
            extra=jsonable(dict(extra or {})),
        )
        get_array(adata, layer=layer)  # KeyError naming the layer
        check_input(adata, layer=layer, scale=scale, name=cls.__name__)
        check_keys(
            adata,
            obs=list(record.categorical.values()) + list(record.continuous.values()),
            obsm=list(record.obsm.values()),
        )
        for key in record.continuous.values():
            if not np.issubdtype(adata.obs[key].dtype, np.number):
                raise TypeError(f"adata.obs[{key!r}] must be numeric (dtype is {adata.obs[key].dtype}).")
        if not adata.var_names.is_unique:
            raise ValueError("adata.var_names are not unique; call adata.var_names_make_unique() first.")
        store = dict(adata.uns.get(SETUP_UNS_KEY, {}))
        store[cls.__name__] = record.to_json()
        adata.uns[SETUP_UNS_KEY] = store

    @classmethod
    def setup_mudata(cls, mdata: Any, *, modality: str = "rna", **setup_kwargs: Any) -> None:
        """Register the expression modality ``mdata.mod[modality]`` of a MuData object.

        ``obs`` keys named in ``setup_kwargs`` may be columns of the modality or of the global ``mdata.obs``
        (global columns are looked up by name, with or without the ``"<modality>:"`` prefix). Models that
        take other modalities read them in their own ``setup_mudata``.
        """
        if modality not in mdata.mod:
            raise KeyError(f"modality {modality!r} not in mdata.mod (available: {list(mdata.mod)}).")
        view = cls._modality_view(mdata, modality)
        cls.setup_anndata(view, **setup_kwargs)
        mdata.mod[modality].uns[SETUP_UNS_KEY] = view.uns[SETUP_UNS_KEY]

    @staticmethod
    def _modality_view(mdata: Any, modality: str) -> AnnData:
        """AnnData of one modality whose obs also carries the global obs columns (a shallow copy)."""
        mod = mdata.mod[modality]
        obs = mod.obs.copy()
        glob = mdata.obs.loc[mod.obs_names] if len(mdata.obs.columns) else pd.DataFrame(index=mod.obs_names)
        for col in glob.columns:
            name = col.split(":", 1)[1] if col.startswith(f"{modality}:") else col
            if name not in obs.columns:
                obs[name] = glob[col].to_numpy()
        view = AnnData(
            X=mod.X, obs=obs, var=mod.var, layers=dict(mod.layers), obsm=dict(mod.obsm), uns=dict(mod.uns)
        )
        return view

    # ------------------------------------------------------------------ init
    def __init__(self, adata: AnnData, **init_params: Any) -> None:
        if type(adata).__name__ == "MuData":
            modality = next((m for m, a in adata.mod.items() if SETUP_UNS_KEY in a.uns), None)
            if modality is None:
                raise ValueError(f"call {type(self).__name__}.setup_mudata(mdata, ...) first.")
            adata = self._modality_view(adata, modality)
        store = adata.uns.get(SETUP_UNS_KEY, {})
        if type(self).__name__ not in store:
            raise ValueError(
                f"adata is not set up for {type(self).__name__}; call "
                f"sp.models.{type(self).__name__}.setup_anndata(adata, ...) first."
            )
        self._seed_everything()
        self.setup_ = SetupRecord.from_json(store[type(self).__name__])
        self.init_params_: dict[str, Any] = jsonable(dict(init_params))
        self.var_names_: list[str] = list(map(str, adata.var_names))
        self.vocab_: dict[str, list[str]] = {}
        for key, col in self.setup_.categorical.items():
            values = adata.obs[col]
            cats = (
                values.cat.categories
                if isinstance(values.dtype, pd.CategoricalDtype)
                else np.unique(values.astype(str))
            )
            present = set(values.astype(str))
            self.vocab_[key] = [str(c) for c in cats if str(c) in present]
        self.extra_arrays_: dict[str, np.ndarray] = {}
        self.history_: dict[str, pd.DataFrame] = {}
        self.is_trained_ = False
        self.train_params_: dict[str, Any] = {}
        self.adata: AnnData | None = adata
        self.module: torch.nn.Module | None = None
        self._prepared_train: PreparedData | None = None

    def _build_module(self) -> torch.nn.Module | None:
        """Build the torch module from persisted state (``init_params_``, ``vocab_``, ``var_names_``,
        ``extra_arrays_``). Subclasses override; called at the end of their ``__init__`` and by :meth:`load`."""
        return None

    @staticmethod
    def _seed_everything() -> None:
        import lightning.pytorch as pl

        pl.seed_everything(settings.seed, workers=True, verbose=False)

    # ------------------------------------------------------------------ info
    @property
    def n_vars(self) -> int:
        """Number of genes the model uses."""
        return len(self.var_names_)

    @property
    def history(self) -> dict[str, pd.DataFrame]:
        """Training history: metric name → DataFrame indexed by epoch (one column, the metric)."""
        return self.history_

    @property
    def device(self) -> torch.device:
        if self.module is None:
            return torch.device("cpu")
        p = next(iter(self.module.parameters()), None)
        return p.device if p is not None else torch.device("cpu")

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.init_params_.items())
        status = "trained" if self.is_trained_ else "not trained"
        return f"{type(self).__name__}({params}) — {self.n_vars} genes, {status}"

    # ------------------------------------------------------------------ data
    def _encode_categories(self, adata: AnnData, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Integer codes of categorical inputs under the model's vocabularies; unseen values are an error
        naming the key and values, or the extra slot ``len(vocab)`` for keys in ``_unknown_category_keys``."""
        codes = {}
        for key in keys:
            col = self.setup_.categorical[key]
            check_keys(adata, obs=[col])
            values = adata.obs[col].astype(str).to_numpy()
            vocab = self.vocab_[key]
            idx = pd.Index(vocab).get_indexer(values)
            unknown = idx < 0
            if unknown.any():
                bad = sorted(set(values[unknown]))
                if key in self._unknown_category_keys:
                    idx = np.where(unknown, len(vocab), idx)
                else:
                    raise ValueError(
                        f"adata.obs[{col!r}] has values not seen in training: {bad[:10]} "
                        f"({int(unknown.sum())} cells). Known values: {vocab[:20]}. Drop those cells or map them "
                        "to a known value."
                    )
            codes[key] = idx.astype(np.int64)
        return codes

    def _train_split(self, n_obs: int, train_kwargs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The ``(training, validation)`` cells that :meth:`train` will use with ``train_kwargs`` (the same
        :func:`~scpredict.train.resolve_split` call), for statistics that must come from the training cells
        only (class frequencies, standardisation) before training starts."""
        from ..train import resolve_split

        return resolve_split(
            n_obs,
            train_indices=train_kwargs.get("train_indices"),
            validation_indices=train_kwargs.get("validation_indices"),
            train_size=train_kwargs.get("train_size", DEFAULT_TRAIN_SIZE),
            validation_size=train_kwargs.get("validation_size"),
            seed=settings.seed,
        )

    def _checked_obsm(self, adata: AnnData, k: str, key: str) -> np.ndarray:
        """:func:`checked_obsm` of ``adata.obsm[key]`` (registry key ``k``) with the width of :meth:`_obsm_widths`."""
        return checked_obsm(adata, key, width=self._obsm_widths().get(k), owner=f"this {type(self).__name__}")

    def _inference_keys(self) -> list[str] | None:
        """Registry keys that prediction reads (``None``: all registered); a query lacking the others (e.g. the
        labels of a classifier) can still be attached by :meth:`load`."""
        return None

    def _obsm_widths(self) -> dict[str, int]:
        """Expected number of columns of registered ``obsm`` matrices (checked on new data), by registry key:
        the registry key ``"embedding"`` has the width stored as ``extra_arrays_["n_embedding"]``, if any."""
        n = getattr(self, "extra_arrays_", {}).get("n_embedding")
        return {} if n is None else {"embedding": int(np.asarray(n).ravel()[0])}

    def _prepare(
        self,
        adata: AnnData | None = None,
        *,
        keys: Sequence[str] | None = None,
        check_scale: bool = True,
    ) -> PreparedData:
        """Check, align and encode ``adata`` for this model without modifying it.

        Parameters
        ----------
        adata
            New data (default: the training AnnData).
        keys
            Registry keys needed (default: all registered). ``"X"`` is always included. Use a subset for
            inference when e.g. labels are not needed.
        check_scale
            Validate the declared input scale.
        """
        from scvi.data import AnnDataManager
        from scvi.data.fields import LayerField, NumericalObsField, ObsmField

        adata = self.adata if adata is None else adata
        if adata is None:
            raise ValueError("pass `adata=`: this model was loaded without an AnnData.")
        if self._uses_torch:  # backed / lazy AnnData, paths, CellDataModule: stream from disk
            from ..data._datamodule import prepare_stream

            stream = prepare_stream(self, adata, keys=keys, check_scale=check_scale)
            if stream is not None:
                return stream  # type: ignore[return-value]
        if type(adata).__name__ == "MuData":
            modality = next((m for m, a in adata.mod.items() if SETUP_UNS_KEY in a.uns), None) or "rna"
            adata = self._modality_view(adata, modality)
        rec = self.setup_
        wanted = set(rec.categorical) | set(rec.continuous) | set(rec.obsm) if keys is None else set(keys)
        x = get_array(adata, layer=rec.layer)
        if not isinstance(x, np.ndarray) and not sp_sparse.issparse(x):
            # a backed matrix (h5py dataset, anndata's on-disk sparse dataset) for a model that does not stream
            x = x.to_memory() if hasattr(x, "to_memory") else np.asarray(x[...])
        if check_scale:
            check_input(adata, layer=rec.layer, scale=rec.scale, name=type(self).__name__)  # type: ignore[arg-type]
        alignment = align_genes(
            adata.var_names,
            self.var_names_,
            max_missing=self._max_missing_genes,
            what=f"this {type(self).__name__}",
        )
        x = align_matrix(x, alignment)
        if isinstance(x, np.ndarray) and type(x) is not np.ndarray:
            x = np.asarray(x)  # an AnnData view's ArrayView: scvi-tools' loader would hand it out untensored
        cat_keys = [k for k in rec.categorical if k in wanted]
        codes = self._encode_categories(adata, cat_keys)
        obs = pd.DataFrame(index=adata.obs_names.copy())
        for k, c in codes.items():
            obs[k] = c
        for k, col in rec.continuous.items():
            if k in wanted:
                check_keys(adata, obs=[col])
                obs[k] = adata.obs[col].to_numpy(dtype=np.float32)
        obsm = {}
        for k, key in rec.obsm.items():
            if k in wanted:
                obsm[k] = self._checked_obsm(adata, k, key)
        internal = AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(self.var_names_)), obsm=obsm)
        fields = [LayerField(X_KEY, None, is_count_data=rec.scale == "counts")]
        fields += [NumericalObsField(k, k) for k in list(codes) + [k for k in rec.continuous if k in wanted]]
        fields += [ObsmField(k, k) for k in obsm]
        manager = AnnDataManager(fields=fields, setup_method_args={"setup_args": asdict(rec)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            manager.register_fields(internal)
        return PreparedData(adata=internal, manager=manager, source=adata)

    def _dataloader(
        self,
        prepared: PreparedData,
        indices: np.ndarray | None = None,
        *,
        batch_size: int = 256,
        shuffle: bool = False,
        drop_last: bool = False,
        **kwargs: Any,
    ):
        """A scvi-tools ``AnnDataLoader`` over ``prepared`` yielding dicts of tensors keyed by registry key
        (a rank-aware :class:`~scpredict.data.CellLoader` for streamed data)."""
        if getattr(prepared, "is_stream", False):
            return prepared.loader(
                indices, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, **kwargs
            )
        from scvi.dataloaders import AnnDataLoader

        return AnnDataLoader(
            prepared.manager,
            indices=indices,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=settings.num_workers,
            **kwargs,
        )

    @torch.no_grad()
    def _module_outputs(
        self,
        prepared: PreparedData,
        fn: Any,
        *,
        batch_size: int = 1024,
    ) -> np.ndarray | dict[str, np.ndarray]:
        """Run ``fn(batch) -> Tensor | dict[str, Tensor]`` over all cells in order, in eval mode, and stack.

        Inside :func:`scpredict.data.distributed_inference`, each rank runs a contiguous shard and the outputs
        are gathered in cell order."""
        from ..data._datamodule import inference_shard

        if self.module is None:
            raise RuntimeError("this model has no torch module.")
        shard, gather = inference_shard(prepared.n_obs)
        local = {"rank": 0, "world_size": 1} if getattr(prepared, "is_stream", False) else {}
        was_training = self.module.training
        self.module.eval()
        device = self.device
        outs: list[Any] = []
        try:
            for batch in self._dataloader(prepared, shard, batch_size=batch_size, shuffle=False, **local):
                batch = {k: v.to(device) for k, v in batch.items()}
                outs.append(fn(batch))
        finally:
            self.module.train(was_training)
        if isinstance(outs[0], dict):
            res = {k: torch.cat([o[k] for o in outs]).cpu().numpy() for k in outs[0]}
        else:
            res = torch.cat(outs).cpu().numpy()
        return res if gather is None else gather(res)

    def _to_query_genes(self, values: np.ndarray, adata: AnnData, *, fill: float = np.nan) -> np.ndarray:
        """Map a (n_obs, n_model_genes) array onto ``adata.var_names`` (genes the model lacks get ``fill``)."""
        idx = pd.Index(self.var_names_).get_indexer(adata.var_names)
        if np.array_equal(idx, np.arange(self.n_vars)):
            return values
        out = np.full((values.shape[0], adata.n_vars), fill, dtype=values.dtype)
        ok = idx >= 0
        out[:, ok] = values[:, idx[ok]]
        return out

    def _record(self, adata: AnnData, key_added: str, params: Mapping[str, Any], **extra: Any) -> None:
        """Write provenance into ``adata.uns[key_added]``: model class, params, version, gene list."""
        record_provenance(
            adata,
            key_added,
            params,
            model=type(self).__name__,
            init_params=self.init_params_,
            var_names=np.asarray(self.var_names_, dtype=object),
            **extra,
        )

    # ------------------------------------------------------------------ training
    def _training_plan(self, **plan_kwargs: Any):
        from ..train import TrainingPlan

        cls = self._training_plan_cls or TrainingPlan
        return cls(self.module, **plan_kwargs)

    def _make_datamodule(
        self,
        prepared: PreparedData,
        train_indices: np.ndarray,
        validation_indices: np.ndarray,
        *,
        batch_size: int,
    ):
        """Lightning data module for training. Override for custom batching (e.g. per condition)."""
        from ..train import IndexDataModule

        def make(indices, shuffle):
            return self._dataloader(
                prepared,
                indices,
                batch_size=batch_size,
                shuffle=shuffle,
                drop_last=shuffle and len(indices) > batch_size,
            )

        return IndexDataModule(make, train_indices, validation_indices)

    def train(
        self,
        *,
        max_epochs: int = 100,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        train_size: float = DEFAULT_TRAIN_SIZE,
        validation_size: float | None = None,
        train_indices: Sequence[int] | None = None,
        validation_indices: Sequence[int] | None = None,
        early_stopping: bool = True,
        early_stopping_patience: int = 10,
        early_stopping_monitor: str = "validation_loss",
        restore_best_weights: bool = True,
        accelerator: str | None = None,
        devices: int | str | Sequence[int] = "auto",
        strategy: str | Any = "auto",
        logger: str | Sequence[str] | Any | None = "csv",
        enable_checkpointing: bool = True,
        progress_bar: str | None = None,
        plan_kwargs: Mapping[str, Any] | None = None,
        ckpt_path: str | None = None,
        data: Any = None,
        **trainer_kwargs: Any,
    ) -> None:
        """Train with Lightning.

        Parameters
        ----------
        max_epochs
            Maximum number of epochs.
        batch_size
            Cells per batch.
        lr, weight_decay
            AdamW learning rate and decoupled weight decay (eps 1e-8).
        train_size, validation_size
            Random split of the registered cells (seeded by ``sp.settings.seed``); validation defaults to the
            rest. Ignored when ``train_indices`` is given.
        train_indices, validation_indices
            Explicit integer positions of training / validation cells. ``train_indices`` alone trains on
            exactly those cells with no validation cells (early stopping then watches the training metric
            and no best epoch is restored): the other cells are never used, since they may be test cells.
            ``validation_indices`` alone trains on every other cell.
        early_stopping, early_stopping_patience, early_stopping_monitor
            Stop when the monitored validation metric has not improved for ``patience`` epochs.
        restore_best_weights
            Reload the weights of the best validation epoch at the end.
        accelerator, devices, strategy
            Passed to ``lightning.Trainer`` (``accelerator`` defaults to ``sp.settings.accelerator``).
        logger
            ``"csv"`` (default), ``"tensorboard"``, a list of both, a Lightning logger, or ``None``.
            Logs go to ``sp.settings.log_dir / <ModelClass>``.
        enable_checkpointing
            Write ``last.ckpt`` (and the best epoch) for resuming with ``ckpt_path``.
        progress_bar
            ``"epoch"``, ``"batch"`` or ``"none"`` (default ``sp.settings.progress_bar``).
        plan_kwargs
            Extra keyword arguments of the training plan (e.g. ``lr_scheduler="plateau"``, ``loss_kwargs``).
        ckpt_path
            Resume from this Lightning checkpoint (e.g. ``.../checkpoints/last.ckpt``).
        data
            Train on these cells instead of the model's AnnData: a :class:`~scpredict.data.CellDataModule`,
            a path (``.h5ad``, ``.zarr``, chunk directory, parquet) or a backed / lazy AnnData, streamed in
            blocks with each DDP rank reading only its shard. A backed model AnnData is streamed too.
        **trainer_kwargs
            Passed to ``lightning.Trainer`` (e.g. ``num_nodes`` for multi-node DDP).
        """
        import lightning.pytorch as pl
        from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
        from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

        from ..train import BestWeights, EpochProgressBar, HistoryCallback

        if self.module is None:
            raise RuntimeError(f"{type(self).__name__} has no torch module; it overrides train().")
        if self.adata is None and data is None:
            raise ValueError("this model was loaded without its training AnnData; pass adata to load().")
        self._seed_everything()
        prepared = self._prepare(self.adata if data is None else data)
        self._prepared_train = prepared
        tr, va = self._train_split(
            prepared.n_obs,
            {
                "train_indices": train_indices,
                "validation_indices": validation_indices,
                "train_size": train_size,
                "validation_size": validation_size,
            },
        )
        has_val = len(va) > 0
        dm = self._make_datamodule(prepared, tr, va, batch_size=batch_size)
        plan = self._training_plan(lr=lr, weight_decay=weight_decay, **dict(plan_kwargs or {}))
        plan.has_validation = has_val  # e.g. the plateau scheduler then watches the training loss

        name = type(self).__name__
        root = Path(trainer_kwargs.pop("default_root_dir", settings.log_dir))
        loggers: list[Any] = []
        for lg in (
            [logger]
            if isinstance(logger, str) or logger is None or not isinstance(logger, Sequence)
            else logger
        ):
            if lg is None or lg is False:
                continue
            if lg == "csv":
                loggers.append(CSVLogger(save_dir=root, name=name))
            elif lg == "tensorboard":
                loggers.append(TensorBoardLogger(save_dir=root, name=name))
            else:
                loggers.append(lg)
        history = HistoryCallback()
        callbacks: list[Any] = [history]
        monitor = early_stopping_monitor if has_val else early_stopping_monitor.replace("validation", "train")
        mode = "max" if any(s in monitor for s in ("r2", "accuracy", "f1", "pearson")) else "min"
        best = BestWeights(monitor=monitor, mode=mode) if (restore_best_weights and has_val) else None
        if best is not None:
            callbacks.append(best)
        if early_stopping:
            callbacks.append(
                EarlyStopping(
                    monitor=monitor,
                    patience=early_stopping_patience,
                    mode=mode,
                    check_on_train_epoch_end=not has_val,
                )
            )
        if enable_checkpointing:
            ckpt_dir = Path(loggers[0].log_dir) / "checkpoints" if loggers else root / name / "checkpoints"
            callbacks.append(
                ModelCheckpoint(
                    dirpath=ckpt_dir, save_last=True, monitor=monitor if has_val else None, mode=mode
                )
            )
        pbar = progress_bar or settings.progress_bar
        if pbar == "epoch":
            callbacks.append(EpochProgressBar())
        callbacks += list(trainer_kwargs.pop("callbacks", []))
        trainer_kwargs.setdefault("log_every_n_steps", 1)
        with _quiet_lightning():
            trainer = pl.Trainer(
                max_epochs=max_epochs,
                accelerator=accelerator or settings.accelerator,
                devices=devices,
                strategy=strategy,
                logger=loggers or False,
                callbacks=callbacks,
                enable_checkpointing=enable_checkpointing,
                enable_progress_bar=pbar in ("epoch", "batch"),
                enable_model_summary=False,
                num_sanity_val_steps=0,
                deterministic=trainer_kwargs.pop("deterministic", "warn"),
                default_root_dir=root,
                **trainer_kwargs,
            )
        with warnings.catch_warnings(), _quiet_lightning():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*is a very small number of batches.*")
            warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
            warnings.filterwarnings("ignore", ".*LeafSpec.*")
            # Lightning (>= 2.2) keeps the train/eval mode each submodule has when fit starts; a module left in
            # eval mode by predict() or an earlier train() would otherwise train without dropout and with frozen
            # batch-norm statistics
            plan.train()
            trainer.fit(plan, datamodule=dm, ckpt_path=ckpt_path)
        self.module.eval()
        self.module.to("cpu")
        self.is_trained_ = True
        self.trainer_ = trainer
        rows = pd.DataFrame(history.rows).set_index("epoch") if history.rows else pd.DataFrame()
        self.history_ = {c: rows[[c]].dropna() for c in rows.columns}
        self.train_params_ = {
            "max_epochs": max_epochs,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "n_train": int(len(tr)),
            "n_validation": int(len(va)),
            "epochs_run": int(len(history.rows)),
            "best_epoch": None if best is None else best.best_epoch,
        }

    # ------------------------------------------------------------------ persistence
    def _get_state_arrays(self) -> dict[str, np.ndarray | torch.Tensor]:
        """Tensors to save: the module's state dict plus ``extra_arrays_`` (prefixed ``extra.``).
        Non-torch models override and add their fitted arrays."""
        state: dict[str, Any] = {}
        if self.module is not None:
            state.update(
                {f"module.{k}": v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
            )
        state.update(
            {f"extra.{k}": torch.as_tensor(np.ascontiguousarray(v)) for k, v in self.extra_arrays_.items()}
        )
        return state

    def _set_state_arrays(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`_get_state_arrays` saved (extra arrays first, then the module)."""
        self.extra_arrays_ = {
            k[len("extra.") :]: v.numpy() for k, v in state.items() if k.startswith("extra.")
        }
        self.module = self._build_module()
        if self.module is not None:
            module_state = {k[len("module.") :]: v for k, v in state.items() if k.startswith("module.")}
            self.module.load_state_dict(module_state)
            self.module.eval()

    def _extra_metadata(self) -> dict[str, Any]:
        """JSON values a subclass must persist beyond init params (e.g. a calibrated temperature)."""
        return {}

    def _set_extra_metadata(self, meta: Mapping[str, Any]) -> None:
        """Restore what :meth:`_extra_metadata` returned."""

    def _save_extra_files(self, directory: Path) -> None:
        """Write files that are not tensors (e.g. an xgboost JSON model)."""

    def _load_extra_files(self, directory: Path) -> None:
        """Read what :meth:`_save_extra_files` wrote."""

    def save(self, directory: str | Path, *, overwrite: bool = False) -> None:
        """Save to ``directory``: ``weights.safetensors`` (tensors only) and ``model.json`` (everything else).

        Parameters
        ----------
        directory
            Target folder (created).
        overwrite
            Replace an existing saved model.
        """
        from safetensors.torch import save_file

        import scpredict

        directory = Path(directory)
        if (directory / _META).exists() and not overwrite:
            raise FileExistsError(f"{directory} already holds a saved model; pass overwrite=True.")
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            k: (v if torch.is_tensor(v) else torch.as_tensor(v)).contiguous()
            for k, v in self._get_state_arrays().items()
        }
        save_file(state, str(directory / _WEIGHTS))
        versions = {"scpredict": scpredict.__version__, "torch": torch.__version__}
        from importlib.metadata import PackageNotFoundError, version

        for dist in ("anndata", "scvi-tools", "numpy", "lightning"):
            try:
                versions[dist] = version(dist)
            except PackageNotFoundError:  # pragma: no cover
                pass
        meta = {
            "format_version": FORMAT_VERSION,
            "model": type(self).__name__,
            "init_params": self.init_params_,
            "setup": asdict(self.setup_),
            "var_names": self.var_names_,
            "vocab": self.vocab_,
            "is_trained": self.is_trained_,
            "train_params": self.train_params_,
            "history": {
                k: {"epoch": v.index.tolist(), "value": v.iloc[:, 0].tolist()}
                for k, v in self.history_.items()
            },
            "extra": jsonable(self._extra_metadata()),
            "versions": versions,
        }
        (directory / _META).write_text(json.dumps(jsonable(meta), indent=1))
        self._save_extra_files(directory)

    @classmethod
    def load(cls, directory: str | Path, *, adata: AnnData | None = None) -> BaseModel:
        """Load a model saved with :meth:`save`. Nothing is unpickled: weights are read with safetensors.

        Parameters
        ----------
        directory
            Folder written by :meth:`save`.
        adata
            Optional AnnData to attach (for further training or as the default of ``predict``); its genes are
            aligned by name and checked against what prediction reads, and, when it holds every registered
            ``obs``/``obsm`` column, it is set up with the saved arguments if it is not already. A query
            without the training labels (or with labels the model never saw) can be attached for prediction.
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_path = directory / _META
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} not found: not a saved scpredict model.")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"unsupported model format {meta.get('format_version')!r} (expected {FORMAT_VERSION})."
            )
        if meta.get("model") != cls.__name__:
            raise TypeError(
                f"{directory} holds a {meta.get('model')}, not a {cls.__name__}; "
                f"use sp.models.{meta.get('model')}.load()."
            )
        try:
            state = load_file(str(directory / _WEIGHTS))
        except Exception as e:  # safetensors refuses anything that is not a safetensors file
            raise ValueError(f"{directory / _WEIGHTS} is not a valid safetensors file: {e}") from e
        model = cls.__new__(cls)
        model.setup_ = SetupRecord(**meta["setup"])
        model.init_params_ = meta["init_params"]
        model.var_names_ = list(meta["var_names"])
        model.vocab_ = {k: list(v) for k, v in meta["vocab"].items()}
        model.is_trained_ = bool(meta["is_trained"])
        model.train_params_ = meta.get("train_params", {})
        model.history_ = {
            k: pd.DataFrame({k: v["value"]}, index=pd.Index(v["epoch"], name="epoch"))
            for k, v in meta.get("history", {}).items()
        }
        model.adata = None
        model.module = None
        model._prepared_train = None
        model._set_extra_metadata(meta.get("extra", {}))
        model._load_extra_files(directory)
        model._set_state_arrays(state)
        if adata is not None:
            rec = model.setup_
            store = adata.uns.get(SETUP_UNS_KEY, {})
            columns = list(rec.categorical.values()) + list(rec.continuous.values())
            complete = all(c in adata.obs for c in columns) and all(
                k in adata.obsm for k in rec.obsm.values()
            )
            if complete and cls.__name__ not in store:  # data to train on: register it like setup_anndata
                cls._setup(
                    adata,
                    layer=rec.layer,
                    scale=rec.scale,  # type: ignore[arg-type]
                    categorical=rec.categorical,
                    continuous=rec.continuous,
                    obsm=rec.obsm,
                    extra=rec.extra,
                )
            # validate genes now rather than at first use, with what prediction reads: a query's labels may be
            # missing or hold classes the model never saw (train() validates everything it needs itself)
            model._prepare(adata, keys=model._inference_keys())
            model.adata = adata
        return model
