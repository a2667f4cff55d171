"""ContextCycleAE: context-conditioned cycle autoencoder — counterfactuals and additive per-field contributions."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .._keys import contribution_key
from ..data._alignment import align_genes
from ..module._cycle_ae import DEFAULT_HEAD_SCALE, ContextCycleAEModule
from ..train._cycle_plan import CycleTrainingPlan, StreamDataModule
from ._base import BaseModel

__all__ = ["ContextCycleAE"]

_RESERVED = {"X", "base"}


class ContextCycleAE(BaseModel):
    """Context-conditioned cycle autoencoder (seed 003).

    Expression is modelled additively: a base head (one tied-weight, bias-free, non-negative linear
    autoencoder shared by all cells) plus, for each metadata field (e.g. assay, cell type, sex), a head made of a
    shared encoder, one small FFN per category applied only to that category's cells, and a shared decoder whose
    output is scaled by ``head_scale``. Training is by cycle consistency: every cell is sent to randomly drawn
    target contexts and back, with reconstruction, cycle, hidden-state integration and target-consistency (a
    metadata classifier on generated expression) losses; the classifier is trained on real cells with its own
    optimiser. Beyond the seed, a mean-matching loss compares the mean of the cells generated for a combination
    of contexts with the mean of the real cells of that combination (when it has any): the classifier alone is
    satisfied by any change that crosses its decision boundary, and leaves the size of a head's change
    uncalibrated (on CellBench the counterfactual means overshot, R² < 0 against real cells, without it). The result gives counterfactuals for any combination of contexts (:meth:`counterfactual`) and an
    additive account of expression per field (:meth:`contributions`), in the spirit of scVI's
    ``transform_batch`` (Lopez et al., Nat Methods 2018), CPA (Lotfollahi et al., Mol Syst Biol 2023) and biolord
    (Piran et al., Nat Biotechnol 2024), with StarGAN-style cycle training (Choi et al., CVPR 2018) but no
    adversary.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (log-normalized expression).
    n_latent_base
        Hidden width of the base autoencoder.
    n_latent
        Latent width of each field head.
    n_hidden_ffn
        Hidden width of each per-category FFN.
    n_hidden_classifier
        Width of the metadata classifier.
    head_scale
        Constant multiplying each field decoder's output (0.0159 in the seed).
    dropout_rate
        Dropout in the classifier.
    integrate_base
        Include the base head's hidden state in the integration loss (off by default: with tied non-negative
        weights it shrinks the base towards zero).

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_contexts(n_cells=200, n_genes=30, fields=("cell_type", "assay"))
    >>> sp.models.ContextCycleAE.setup_anndata(adata, context_keys=["cell_type", "assay"])
    >>> model = sp.models.ContextCycleAE(adata, n_latent=8)
    >>> model.train(max_epochs=1, logger=None, enable_checkpointing=False)
    >>> model.counterfactual(adata, target={"assay": "assay1"}, key_added="to_assay1")
    >>> adata.layers["to_assay1"].shape
    (200, 30)
    """

    _training_plan_cls = CycleTrainingPlan

    @classmethod
    def setup_anndata(
        cls, adata: AnnData, *, context_keys: str | Sequence[str], layer: str | None = None
    ) -> None:
        """Register the expression layer and the metadata fields that condition the model.

        Parameters
        ----------
        adata
            Cells × genes, log-normalized (``sc.pp.normalize_total`` then ``sc.pp.log1p``); may be backed.
        context_keys
            ``obs`` columns of categorical metadata, one head per field (e.g. ``["assay", "cell_type",
            "sex"]``). Their vocabularies are stored with the model.
        layer
            Expression layer; ``None`` uses ``adata.X``.

        Returns
        -------
        ``None``; writes ``adata.uns['_scpredict']['ContextCycleAE']`` (the setup record, JSON).
        """
        keys = [context_keys] if isinstance(context_keys, str) else list(context_keys)
        if not keys:
            msg = "context_keys must name at least one obs column."
            raise ValueError(msg)
        if len(set(keys)) != len(keys):
            msg = f"context_keys has duplicates: {keys}."
            raise ValueError(msg)
        bad = [k for k in keys if k in _RESERVED]
        if bad:
            msg = f"context_keys {bad} clash with reserved names {sorted(_RESERVED)}; rename the obs columns."
            raise ValueError(msg)
        cls._setup(
            adata,
            layer=layer,
            scale="log1p",
            categorical={k: k for k in keys},
            extra={"context_keys": keys},
        )

    def __init__(
        self,
        adata: AnnData,
        *,
        n_latent_base: int = 64,
        n_latent: int = 32,
        n_hidden_ffn: int = 64,
        n_hidden_classifier: int = 128,
        head_scale: float = DEFAULT_HEAD_SCALE,
        dropout_rate: float = 0.1,
        integrate_base: bool = False,
    ) -> None:
        super().__init__(
            adata,
            n_latent_base=n_latent_base,
            n_latent=n_latent,
            n_hidden_ffn=n_hidden_ffn,
            n_hidden_classifier=n_hidden_classifier,
            head_scale=head_scale,
            dropout_rate=dropout_rate,
            integrate_base=integrate_base,
        )
        for key in self.context_keys:
            if len(self.vocab_[key]) < 2:
                msg = f"adata.obs[{key!r}] has {len(self.vocab_[key])} category; a context field needs >= 2."
                raise ValueError(msg)
        self.module = self._build_module()
        self._stream: Any = None
        self.final_state_: dict[str, torch.Tensor] | None = None  # set by train(average_last=...)
        self.averaged_state_: dict[str, torch.Tensor] | None = None

    @property
    def context_keys(self) -> list[str]:
        """The metadata fields, in head order."""
        return list(self.setup_.extra["context_keys"])

    def _build_module(self) -> ContextCycleAEModule:
        return ContextCycleAEModule(
            self.n_vars, [len(self.vocab_[k]) for k in self.context_keys], **self.init_params_
        )

    # ------------------------------------------------------------------ training
    def train(
        self,
        *,
        max_epochs: int = 100,
        batch_size: int = 128,
        lr: float = 1e-3,
        classifier_lr: float | None = None,
        loss_weights: Mapping[str, float] | None = None,
        data: Any = None,
        chunk_size: int = 8192,
        num_workers: int = 0,
        prefetch_factor: int = 2,
        logger: str | Sequence[str] | Any | None = ("csv", "tensorboard"),
        plan_kwargs: Mapping[str, Any] | None = None,
        average_last: int = 0,
        **kwargs: Any,
    ) -> None:
        """Cycle training with Lightning (manual optimisation: generator and classifier optimisers).

        Each epoch logs (CSV and TensorBoard, and ``model.history``) ``train_loss`` and the terms
        ``train_loss_{recon,cycle,integration,target,match,change,classifier}``, the classifier's accuracy on real cells, and
        the mean L2 norm of each head's contribution, ``train_l2_base``, ``train_l2_<field>`` and
        ``train_l2_<field>=<category>``.

        Parameters
        ----------
        max_epochs, batch_size
            Epochs and cells per minibatch.
        lr
            Generator learning rate (Adam).
        classifier_lr
            Classifier learning rate (default ``lr``).
        loss_weights
            Weights of ``recon``, ``cycle``, ``integration`` and ``target`` (default 1 each), ``match``
            (default 10) and ``change`` (default 0: a ridge penalty on the change each field head makes for a
            cell moved to another category, which shrinks context shifts learned from few groups; see
            :meth:`~scpredict.module._cycle_ae.ContextCycleAEModule.change_loss`).
        data
            ``None`` trains on the model's AnnData: in memory, or streamed from disk through the two-level
            chunk loader when it is backed. A chunk directory (:func:`scpredict.data.write_chunks`), an
            ``.h5ad`` path or a :class:`scpredict.data.ChunkedDataset` streams from disk instead; its genes are
            aligned by name and its categories encoded with the model's vocabularies. Streaming trains on every
            cell, without a validation split.
        chunk_size, num_workers, prefetch_factor
            Two-level loader settings when streaming (``chunk_size`` only for backed / ``.h5ad`` sources).
        logger
            ``"csv"``, ``"tensorboard"``, both (default; CSV only when tensorboard is not installed), a Lightning
            logger, or ``None``.
        plan_kwargs
            Extra arguments of :class:`scpredict.train._cycle_plan.CycleTrainingPlan` (e.g.
            ``{"lr_schedule": "cosine"}``).
        average_last
            Stochastic weight averaging (Izmailov et al., UAI 2018): when > 0, the weights kept after training
            are the mean of the weights at the end of each of the last ``average_last`` epochs of
            ``max_epochs`` (the non-negative base stays non-negative; fewer when early stopping ends training
            sooner). The last epoch's own weights stay available as
            ``model.final_state_`` (a state dict); ``model.averaged_state_`` holds the mean.
        **kwargs
            Passed to :meth:`scpredict.models.BaseModel.train` (``train_size``, ``early_stopping``,
            ``accelerator``, ``devices``, Lightning ``Trainer`` arguments, ...).
        """
        if average_last < 0:
            msg = f"average_last must be >= 0; got {average_last}."
            raise ValueError(msg)
        self.final_state_ = None
        self.averaged_state_ = None
        averager = None
        if average_last > 0:
            averager = _WeightAveraging(average_last, max_epochs)
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), averager]
        self._train(
            max_epochs=max_epochs,
            batch_size=batch_size,
            lr=lr,
            classifier_lr=classifier_lr,
            loss_weights=loss_weights,
            data=data,
            chunk_size=chunk_size,
            num_workers=num_workers,
            prefetch_factor=prefetch_factor,
            logger=logger,
            plan_kwargs=plan_kwargs,
            **kwargs,
        )
        if averager is not None and averager.n_averaged > 0:
            self.final_state_ = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
            self.averaged_state_ = averager.mean_state()
            self.module.load_state_dict(self.averaged_state_)
            self.module.eval()
            self.train_params_["average_last"] = int(averager.n_averaged)

    def _train(
        self,
        *,
        max_epochs: int,
        batch_size: int,
        lr: float,
        classifier_lr: float | None,
        loss_weights: Mapping[str, float] | None,
        data: Any,
        chunk_size: int,
        num_workers: int,
        prefetch_factor: int,
        logger: Any,
        plan_kwargs: Mapping[str, Any] | None,
        **kwargs: Any,
    ) -> None:
        from ..data._chunks import ChunkedDataset

        if isinstance(logger, (list, tuple)) and "tensorboard" in logger:
            try:
                import tensorboard  # noqa: F401
            except ImportError:
                try:
                    import tensorboardX  # noqa: F401
                except ImportError:
                    logger = [lg for lg in logger if lg != "tensorboard"] or None
        plan = {
            "field_keys": self.context_keys,
            "categories": {k: self.vocab_[k] for k in self.context_keys},
            "classifier_lr": classifier_lr,
            "loss_weights": dict(loss_weights or {}),
        } | dict(plan_kwargs or {})
        stream_kwargs = {
            "batch_size": batch_size,
            "num_workers": num_workers,
            "prefetch_factor": prefetch_factor,
        }
        if data is None and self.adata is not None and self.adata.isbacked:
            data = self.adata.filename
        if data is None:
            self._stream = None
            super().train(
                max_epochs=max_epochs, batch_size=batch_size, lr=lr, logger=logger, plan_kwargs=plan, **kwargs
            )
            return
        if not isinstance(data, ChunkedDataset):
            layer = self.setup_.layer if Path(data).suffix == ".h5ad" else None
            data = ChunkedDataset(
                data, chunk_size=chunk_size, layer=layer, obs_keys=self.context_keys, **stream_kwargs
            )
        template = data.obs_adata()
        self._encode_categories(template, self.context_keys)  # unknown categories fail before training
        owner = self.adata
        self.adata = template
        self._stream = _StreamBatches(data, self)
        kwargs.pop("train_indices", None)
        kwargs.pop("validation_indices", None)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", ".*no `val_dataloader`.*")
                super().train(
                    max_epochs=max_epochs,
                    batch_size=batch_size,
                    lr=lr,
                    logger=logger,
                    plan_kwargs=plan,
                    train_indices=np.arange(template.n_obs),
                    validation_indices=np.array([], dtype=np.int64),
                    **kwargs,
                )
        finally:
            self.adata = owner
            self._stream = None

    def _make_datamodule(self, prepared, train_indices, validation_indices, *, batch_size):
        if self._stream is not None:
            return StreamDataModule(self._stream)
        return super()._make_datamodule(prepared, train_indices, validation_indices, batch_size=batch_size)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def _run(
        self,
        adata: AnnData,
        target: Mapping[str, str] | None,
        *,
        batch_size: int,
        parts: bool,
        residual: bool = False,
    ) -> dict:
        """Forward every cell of ``adata`` under its own contexts, or ``target``'s for the fields it names.

        With ``residual``, ``x_hat`` is the input plus the change of the output between the target and the own
        contexts (the reconstruction error is kept instead of being added to the counterfactual).

        Expression is read through the model's data path (:meth:`~scpredict.models.BaseModel._prepare`): in
        memory, or streamed from the store behind a backed / lazy AnnData (chunk directory, parquet, zarr, h5ad;
        see :func:`scpredict.data.source_of`), genes aligned by name.
        """
        adata = self.adata if adata is None else adata
        if adata is None:
            msg = "pass `adata=`: this model was loaded without an AnnData."
            raise ValueError(msg)
        fixed = self._target_codes(target)
        own = [k for k in self.context_keys if residual or k not in fixed]
        prepared = self._prepare(adata, keys=own)
        keys = self.context_keys

        def fn(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            x = batch["X"].float()
            n = x.shape[0]
            cols = [
                torch.full((n,), fixed[k], dtype=torch.long, device=x.device)
                if k in fixed
                else batch[k].reshape(-1).long()
                for k in keys
            ]
            hidden = self.module.encode(x)
            res = self.module.decode(hidden, torch.stack(cols, 1))
            out = {"x_hat": res["x_hat"]}
            if residual:
                codes = torch.stack([batch[k].reshape(-1).long() for k in keys], 1)
                out["x_hat"] = x + res["x_hat"] - self.module.decode(hidden, codes)["x_hat"]
            if parts:
                out["base"] = res["base"]
                out.update(dict(zip(keys, res["fields"], strict=True)))
            return out

        return self._module_outputs(prepared, fn, batch_size=batch_size)

    def _target_codes(self, target: Mapping[str, str] | None) -> dict[str, int]:
        """Field → code of the categories named in ``target`` (checked against the vocabularies)."""
        target = dict(target or {})
        unknown = [k for k in target if k not in self.context_keys]
        if unknown:
            msg = f"target names fields {unknown} that the model does not have (fields: {self.context_keys})."
            raise KeyError(msg)
        out = {}
        for key, value in target.items():
            vocab = self.vocab_[key]
            if str(value) not in vocab:
                msg = f"target {key}={str(value)!r} is not a category the model knows; known values: {vocab}."
                raise ValueError(msg)
            out[key] = vocab.index(str(value))
        return out

    def get_counterfactual(
        self,
        adata: AnnData | None = None,
        *,
        target: Mapping[str, str],
        residual: bool = False,
        batch_size: int = 512,
    ) -> np.ndarray:
        """Expression of each cell moved to the contexts in ``target`` (fields not named keep their own value).

        Parameters
        ----------
        adata
            Cells to transform (default: the training AnnData); may be backed.
        target
            Field → category, e.g. ``{"assay": "10x 3' v3"}`` or ``{"assay": ..., "sex": ...}``; ``{}`` gives
            the reconstruction.
        residual
            Return the cell's own expression plus the change the model makes between its own and the target
            contexts (``x + x̂(target) − x̂(own)``, the additive heads' difference), instead of the decoded
            ``x̂(target)``: the reconstruction error is then not part of the counterfactual. ``{}`` gives the
            input back.
        batch_size
            Cells per forward pass.

        Returns
        -------
        ndarray ``(n_obs, adata.n_vars)`` on the log-normalized scale, genes in ``adata.var_names`` order
        (genes the model lacks are NaN).
        """
        adata = self.adata if adata is None else adata
        out = self._run(adata, target, batch_size=batch_size, parts=False, residual=residual)["x_hat"]
        return self._to_query_genes(out, adata)

    def counterfactual(
        self,
        adata: AnnData | None = None,
        *,
        target: Mapping[str, str],
        key_added: str = "counterfactual",
        residual: bool = False,
        batch_size: int = 512,
    ) -> None:
        """Write counterfactual expression for any combination of contexts.

        Parameters
        ----------
        adata
            Cells to transform (default: the training AnnData), in memory.
        target
            Field → category; fields not named keep each cell's own value.
        key_added
            Key of the layer and ``uns`` entry.
        residual
            Add the change between the own and the target contexts to the cell's expression instead of decoding
            it (see :meth:`get_counterfactual`).
        batch_size
            Cells per forward pass.

        Returns
        -------
        ``None``; writes

        - ``adata.layers[key_added]`` : ndarray (n_obs, n_vars), counterfactual log-normalized expression
        - ``adata.uns[key_added]`` : ``params`` (target, residual, batch_size), model, init params, version, gene
          list
        """
        adata = self.adata if adata is None else adata
        values = self.get_counterfactual(adata, target=target, residual=residual, batch_size=batch_size)
        adata.layers[key_added] = values
        self._record(
            adata, key_added, {"target": dict(target), "residual": residual, "batch_size": batch_size}
        )

    def predict(
        self, adata: AnnData | None = None, *, key_added: str = "cycle_ae", batch_size: int = 512
    ) -> None:
        """Write the reconstruction (each cell under its own contexts).

        Parameters
        ----------
        adata
            Cells (default: the training AnnData).
        key_added
            Key of the layer and ``uns`` entry.
        batch_size
            Cells per forward pass.

        Returns
        -------
        ``None``; writes

        - ``adata.layers[key_added]`` : ndarray (n_obs, n_vars), reconstructed log-normalized expression
        - ``adata.uns[key_added]`` : params, model, init params, version, gene list
        """
        self.counterfactual(adata, target={}, key_added=key_added, batch_size=batch_size)

    def get_contributions(
        self, adata: AnnData | None = None, *, batch_size: int = 512
    ) -> dict[str, np.ndarray]:
        """Each head's additive contribution to every cell's output (under the cell's own contexts).

        Returns
        -------
        dict ``"base"`` and each field → ndarray ``(n_obs, adata.n_vars)``; they sum to the reconstruction.
        """
        adata = self.adata if adata is None else adata
        res = self._run(adata, None, batch_size=batch_size, parts=True)
        return {k: self._to_query_genes(res[k], adata) for k in ["base", *self.context_keys]}

    def contributions(
        self, adata: AnnData | None = None, *, key_added: str = "contributions", batch_size: int = 512
    ) -> None:
        """Write each field's additive contribution and an L2 summary per field, per category and per epoch.

        Parameters
        ----------
        adata
            Cells (default: the training AnnData), in memory.
        key_added
            Key of the ``obsm`` / ``uns`` entries.
        batch_size
            Cells per forward pass.

        Returns
        -------
        ``None``; writes

        - ``adata.obsm[key_added]`` : DataFrame (n_obs, 1 + n_fields), per-cell L2 norm of the base head and
          of each field's head
        - ``adata.obsm[f"{key_added}_{field}"]`` : ndarray (n_obs, n_vars), that field's contribution (one
          entry per field; see :func:`scpredict._keys.contribution_key`)
        - ``adata.uns[key_added]`` : ``params``; ``l2_field`` (head → mean L2 over cells); ``l2_category``
          (field → category → mean L2 over that category's cells); ``history`` (per-epoch mean L2 during
          training: ``epoch``, ``base``, ``fields`` → field → values, ``categories`` → field → category →
          values); model, version, gene list
        """
        adata = self.adata if adata is None else adata
        parts = self.get_contributions(adata, batch_size=batch_size)
        norms = pd.DataFrame(
            {k: np.sqrt(np.nansum(v.astype(np.float64) ** 2, axis=1)) for k, v in parts.items()},
            index=adata.obs_names.copy(),
        )
        by_cat: dict[str, dict[str, float]] = {}
        for key in self.context_keys:
            col = adata.obs[self.setup_.categorical[key]].astype(str).to_numpy()
            by_cat[key] = {
                c: float(norms[key].to_numpy()[col == c].mean()) for c in self.vocab_[key] if (col == c).any()
            }
        history = self._contribution_history()
        adata.obsm[key_added] = norms
        for key in self.context_keys:
            adata.obsm[contribution_key(key_added, key)] = parts[key]
        self._record(
            adata,
            key_added,
            {"batch_size": batch_size},
            l2_field={k: float(norms[k].mean()) for k in norms.columns},
            l2_category=by_cat,
            history=history,
        )

    def _contribution_history(self) -> dict[str, Any]:
        """Per-epoch L2 contributions logged during training, nested by head, field and category."""
        h = self.history_
        if "train_l2_base" not in h:
            return {}
        out: dict[str, Any] = {
            "epoch": [int(e) for e in h["train_l2_base"].index],
            "base": h["train_l2_base"].iloc[:, 0].astype(float).tolist(),
            "fields": {},
            "categories": {},
        }
        for key in self.context_keys:
            if f"train_l2_{key}" in h:
                out["fields"][key] = h[f"train_l2_{key}"].iloc[:, 0].astype(float).tolist()
            cats = {}
            for c in self.vocab_[key]:
                name = f"train_l2_{key}={c.replace('/', '_')}"
                if name in h:
                    cats[c] = h[name].iloc[:, 0].reindex(out["epoch"]).astype(float).tolist()
            if cats:
                out["categories"][key] = cats
        return out


class _WeightAveraging(pl.Callback):
    """Lightning callback: running mean of the module's weights at the end of each of the last ``n`` epochs."""

    def __init__(self, n: int, max_epochs: int) -> None:
        super().__init__()
        self.n = int(n)
        self.start = max(0, int(max_epochs) - self.n)
        self.n_averaged = 0
        self._sums: dict[str, torch.Tensor] = {}

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch < self.start:
            return
        state = pl_module.module.state_dict()
        for k, v in state.items():
            v = v.detach().to("cpu", torch.float64)
            self._sums[k] = self._sums[k] + v if k in self._sums else v.clone()
        self.n_averaged += 1

    def mean_state(self) -> dict[str, torch.Tensor]:
        return {k: (v / self.n_averaged).float() for k, v in self._sums.items()}


class _StreamBatches:
    """Re-iterable over a :class:`~scpredict.data.ChunkedDataset` yielding the base's batch dicts."""

    def __init__(self, dataset: Any, model: ContextCycleAE) -> None:
        self.dataset = dataset
        self.keys = model.context_keys
        self.vocab = {k: pd.Index(model.vocab_[k]) for k in self.keys}
        alignment = align_genes(
            dataset.var_names,
            model.var_names_,
            max_missing=model._max_missing_genes,
            what="this ContextCycleAE",
        )
        self.identity = alignment.identity
        self.indexer = torch.as_tensor(alignment.indexer, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.dataset:
            x = batch.X
            if not self.identity:
                present = self.indexer >= 0
                out = torch.zeros(x.shape[0], len(self.indexer), dtype=x.dtype)
                out[:, present] = x[:, self.indexer[present]]
                x = out
            item = {"X": x}
            for key in self.keys:
                values = batch.obs[key].astype(str).to_numpy()
                idx = self.vocab[key].get_indexer(values)
                if (idx < 0).any():
                    bad = sorted(set(values[idx < 0]))[:10]
                    msg = f"chunk metadata {key!r} has values the model does not know: {bad}."
                    raise ValueError(msg)
                item[key] = torch.from_numpy(idx.astype(np.float32)).reshape(-1, 1)
            yield item
