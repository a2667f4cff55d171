"""scTab's classifier: a TabNet encoder (Arik & Pfister 2021) with a linear head (Fischer et al. 2024)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ..module._tabnet import TabNetModule, TabNetPretrainer
from ..train import TrainingPlan
from ._base import BaseModel
from ._classifier import (
    ClassifierMixin,
    InputScale,
    add_loss_kwargs,
    check_logit_adjustment,
    logit_adjustment_offset,
    setup_classifier,
    training_class_counts,
)

__all__ = ["TabNetClassifier"]


def _epoch_lr_schedule_class():
    from lightning.pytorch.callbacks import Callback

    class EpochLRSchedule(Callback):
        """Set every optimiser's learning rate to ``lr · factor(epoch)`` at the start of each training epoch
        (``lr`` = the training plan's learning rate, ``epoch`` counted from 0)."""

        def __init__(self, factor: Callable[[int], float]) -> None:
            self.factor = factor

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:  # noqa: D102
            f = float(self.factor(int(trainer.current_epoch)))
            for opt in trainer.optimizers:
                for group in opt.param_groups:
                    group["lr"] = pl_module.lr * f

    return EpochLRSchedule


def _EpochLRSchedule(factor: Callable[[int], float]) -> Any:  # noqa: N802 - a factory standing in for the class
    return _epoch_lr_schedule_class()(factor)


class _PretrainPlan(TrainingPlan):
    """Training plan of :meth:`TabNetClassifier.pretrain`: the validation reconstruction error uses the same
    random masks every epoch (a generator seeded at the start of each validation), so epochs are comparable;
    ``initial_validation`` holds that error before the first update."""

    initial_validation: float = float("nan")

    def _validation_generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(0)

    def on_validation_epoch_start(self) -> None:  # noqa: D102
        self._generator = self._validation_generator()

    def validation_step(self, batch, batch_idx):  # noqa: D102
        self._log_output(self.module.loss(batch, generator=self._generator), "validation")

    @torch.no_grad()
    def on_train_start(self) -> None:  # noqa: D102
        loaders = self.trainer.datamodule.val_dataloader()
        if not loaders:
            return
        was = self.module.training
        self.module.eval()
        gen, total, n = self._validation_generator(), 0.0, 0
        for b in loaders:
            b = {k: v.to(self.device) for k, v in b.items()}
            out = self.module.loss(b, generator=gen)
            total, n = total + float(out.metrics["reconstruction"]) * out.n_obs, n + out.n_obs
        self.module.train(was)
        self.initial_validation = total / max(n, 1)


class TabNetClassifier(ClassifierMixin, BaseModel):
    """TabNet cell-type classifier as in scTab.

    Sequential attention over genes: each decision step selects genes with a sparse mask (1.5-entmax by
    default) computed by an attentive transformer, a feature transformer of GLU blocks (shared +
    step-specific, ghost batch norm) turns the masked expression into a decision output, and the summed
    decision outputs form the cell embedding (:meth:`get_embedding`) fed to a linear softmax head. Input:
    10⁴-normalised log1p expression (from counts when ``scale="counts"``). Optionally, :meth:`pretrain`
    first trains the encoder without labels to reconstruct randomly hidden genes (TabNet's self-supervised
    task); :meth:`train` then fine-tunes it with the head.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_d
        Decision width = embedding width.
    n_a
        Attention width.
    n_steps
        Decision steps.
    gamma
        Feature re-use relaxation of the mask prior.
    n_shared, n_independent
        Shared and step-specific GLU blocks of the feature transformer.
    virtual_batch_size
        Ghost batch size.
    lambda_sparse
        Weight of the mask-entropy regulariser.
    dropout_rate
        Dropout on the embedding before the head (0.3: on ~10³ training cells it is the main guard against
        memorising the training cells through a few selected genes).
    mask_type
        Mask activation: ``"entmax"`` (1.5-entmax, scTab's choice; keeps tens of genes per cell and step) or
        ``"sparsemax"`` (the TabNet paper's; on thousands of genes it keeps only a handful per cell at
        initialisation, which underfits small training sets).
    mask_temperature
        The attention scores are divided by this before the mask activation. At 1 (the papers' masks),
        1.5-entmax keeps ≈ 20 of 2,000 genes per cell at initialisation; at the default 8 it keeps ≈ 450 —
        still a sparse mask (most genes get exactly zero), but a cell's decision can read enough genes to be
        learned from 10³ training cells. Chosen on the validation cells of the two benchmark sets (mouse
        bladder, Kang PBMC; ``docs/benchmarks.md``): 4 and 8 both beat 1; with tens of thousands of training
        cells (scTab's regime) 1 is fine too.
    input_dropout
        Augmentation: probability of zeroing each gene of each training cell (fresh draw every batch).
        Default 0 (0.2–0.5 did not help on the benchmark sets).
    label_smoothing
        Label smoothing of the training cross-entropy (Szegedy et al. 2016); the default 0.1 keeps the
        head from becoming over-confident on small training sets (validation loss and calibration).
    mixup_alpha
        Augmentation: mixup of training cells (Zhang et al. 2018) with ``λ ~ Beta(α, α)``; 0 = off.
    input_norm
        ``"batch"`` (default; the TabNet paper's input layer): a batch norm standardises every gene before the
        masks, so the attentive transformer must *select* genes and the masks (:meth:`get_feature_importance`)
        point at the informative ones. ``"none"``: the network reads the log-normalised expression as it is.
        On 10 extra splits of the two benchmark sets ``"none"`` raised the validation macro F1 in 9 (mean
        +0.025; test macro F1 +0.018 on Kang, −0.012 on mouse bladder; ``docs/benchmarks.md``), but its masks
        stop singling out marker genes (a gene's magnitude already carries it, so the network need not select
        it): on the synthetic test data marker genes get 1.5× the mean importance of other genes with
        ``"batch"`` and 0.9× with ``"none"``. The default keeps interpretable masks.

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_celltypes(n_cells=200, n_genes=50)
    >>> sp.models.TabNetClassifier.setup_anndata(adata, labels_key="cell_type")
    >>> model = sp.models.TabNetClassifier(adata, n_d=16, n_a=16)
    >>> model.train(max_epochs=2)
    >>> model.get_embedding(adata).shape
    (200, 16)
    """

    _default_key = "tabnet"

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        *,
        labels_key: str,
        layer: str | None = None,
        embedding_key: str | None = None,
        scale: InputScale = "counts",
    ) -> None:
        """Register the expression layer and the cell-type labels.

        Parameters
        ----------
        adata
            Training data.
        labels_key
            ``obs`` column with the cell types.
        layer
            Expression layer (``None`` = ``X``, ``"raw"`` = ``adata.raw.X``).
        embedding_key
            Not used by this model (accepted for the common interface); must name an ``obsm`` key if given.
        scale
            Declared scale of ``layer``: ``"counts"`` (normalised to 10⁴ per cell + log1p inside the
            network), ``"log1p"`` or ``"any"``. Checked now and on every new AnnData.
        """
        setup_classifier(
            cls, adata, labels_key=labels_key, layer=layer, embedding_key=embedding_key, scale=scale
        )

    def __init__(
        self,
        adata: AnnData,
        *,
        n_d: int = 128,
        n_a: int = 64,
        n_steps: int = 1,
        gamma: float = 1.3,
        n_shared: int = 2,
        n_independent: int = 2,
        virtual_batch_size: int = 256,
        lambda_sparse: float = 1e-5,
        dropout_rate: float = 0.3,
        mask_type: str = "entmax",
        mask_temperature: float = 8.0,
        input_dropout: float = 0.0,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        input_norm: str = "batch",
    ) -> None:
        super().__init__(
            adata,
            n_d=n_d,
            n_a=n_a,
            n_steps=n_steps,
            gamma=gamma,
            n_shared=n_shared,
            n_independent=n_independent,
            virtual_batch_size=virtual_batch_size,
            lambda_sparse=lambda_sparse,
            dropout_rate=dropout_rate,
            mask_type=mask_type,
            mask_temperature=mask_temperature,
            input_dropout=input_dropout,
            label_smoothing=label_smoothing,
            mixup_alpha=mixup_alpha,
            input_norm=input_norm,
        )
        self.module = self._build_module()

    def _build_module(self) -> TabNetModule:
        return TabNetModule(
            self.n_vars,
            len(self.vocab_["labels"]),
            log_normalize_input=self.setup_.scale == "counts",
            **self.init_params_,
        )

    def train(
        self,
        *,
        max_epochs: int = 100,
        batch_size: int = 128,
        lr: float = 1e-2,
        weight_decay: float = 0.05,
        early_stopping_patience: int = 20,
        early_stopping_monitor: str = "validation_accuracy",
        class_weight: str | None = None,
        lr_decay: float | None = None,
        lr_schedule: str | None = None,
        ema_decay: float | None = 0.95,
        logit_adjustment: float = 0.0,
        **kwargs: Any,
    ) -> None:
        """Train with Lightning (see :meth:`BaseModel.train` for every other argument).

        The defaults suit small and mid-sized training sets (10³–10⁵ cells): strong decoupled weight decay
        (scTab uses 0.05), and early stopping / best-epoch selection on validation *accuracy* — the
        validation loss of TabNet starts rising (over-confident majority classes) long before rare classes
        are learned, so stopping on it stops too early; validation and the kept epoch use an exponential
        moving average of the weights (decay 0.95 per step, with a warm-up), which smooths the noisy
        trajectory of the high learning rate. All chosen on the validation cells of the two benchmark sets
        (``docs/benchmarks.md``).

        Parameters
        ----------
        max_epochs
            Maximum number of epochs.
        batch_size
            Cells per batch.
        lr
            AdamW learning rate.
        weight_decay
            Decoupled weight decay.
        early_stopping_patience
            Epochs without improvement of the monitored metric before stopping.
        early_stopping_monitor
            Metric for early stopping and for restoring the best epoch: ``"validation_accuracy"``,
            ``"validation_macro_f1"`` or ``"validation_balanced_accuracy"`` (computed over the whole epoch's
            confusion matrix, which is what rewards rare cell types), or ``"validation_loss"``.
        class_weight
            ``None`` (plain cross-entropy) or ``"balanced"``: each class weighted by ``n / (k · n_c)`` over the
            training cells (``k`` classes, ``n_c`` cells of class ``c``), so that rare cell types weigh as much
            as common ones in the loss.
        lr_decay
            ``None`` (constant learning rate) or a factor in (0, 1] multiplying the learning rate after every
            epoch (a step schedule with step 1, as scTab trains its TabNet: lr 0.005, factor 0.9 per epoch).
        lr_schedule
            ``None`` or ``"cosine"``: the learning rate of epoch ``e`` is ``lr · (1 + cos(π e / max_epochs)) / 2``
            (cosine annealing without restarts, Loshchilov & Hutter 2017).
        ema_decay
            Per-step decay of an exponential moving average of the weights (Polyak averaging,
            :class:`scpredict.train.WeightEMA`; memory of about ``1 / (1 − decay)`` steps, with the warm-up
            ``min(decay, (1 + s) / (10 + s))`` at step ``s`` so that short runs are not dominated by the first
            weights); validation, early stopping and the restored best epoch use the averaged weights.
            ``None``: no averaging. Without the warm-up, 0.99 at ``lr=1e-2`` lagged so far behind on 1,500
            training cells that the average never beat the majority class.
        logit_adjustment
            ``τ ≥ 0`` of the logit-adjusted loss (Menon et al. 2021, "Long-tail learning via logit
            adjustment", ICLR; at ``τ = 1`` the balanced softmax of Ren et al. 2020, NeurIPS): the training
            cross-entropy is taken on ``logits + τ · log π``, with ``π`` the class frequencies of the
            training cells (add-one smoothed: ``(n_c + 1) / (n + k)``), while prediction uses the plain
            logits, which then estimate the class-balanced posterior (what macro F1 rewards) instead of the
            training-frequency one. Combines with label smoothing, mixup and ``class_weight`` (all act on
            the adjusted logits; label smoothing then goes towards ``π^τ`` instead of uniform, see
            :func:`scpredict.module._tabnet.adjusted_cross_entropy`); the validation loss uses the adjusted
            logits too, validation accuracy the plain ones. ``0`` = the plain loss. The default stays 0: chosen
            on validation cells of 5 extra splits of both benchmark sets (``docs/benchmarks.md``), where
            ``τ = 0.5`` / ``1`` changed the mean validation macro F1 by +0.002 / 0.000 (paired sd ≈ 0.03),
            i.e. not beyond the split noise.
        **kwargs
            Passed to :meth:`BaseModel.train` (``train_size``, ``train_indices``, ``accelerator``, ...).
        """
        if class_weight not in (None, "balanced"):
            msg = f"class_weight must be None or 'balanced', got {class_weight!r}."
            raise ValueError(msg)
        tau = check_logit_adjustment(logit_adjustment)
        if class_weight == "balanced" or tau > 0:
            counts = training_class_counts(self, kwargs)
            if class_weight == "balanced":
                w = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
                add_loss_kwargs(kwargs, class_weight=torch.as_tensor(w, dtype=torch.float32))
            if tau > 0:
                offset = logit_adjustment_offset(counts, tau)
                add_loss_kwargs(kwargs, logit_offset=torch.as_tensor(offset, dtype=torch.float32))
        if lr_decay is not None and lr_schedule is not None:
            msg = "give lr_decay or lr_schedule, not both."
            raise ValueError(msg)
        if lr_decay is not None:
            if not 0.0 < lr_decay <= 1.0:
                msg = f"lr_decay must be in (0, 1], got {lr_decay}."
                raise ValueError(msg)
            decay = float(lr_decay)
            kwargs["callbacks"] = [_EpochLRSchedule(lambda e: decay**e), *kwargs.get("callbacks", [])]
        if lr_schedule is not None:
            if lr_schedule != "cosine":
                msg = f"lr_schedule must be None or 'cosine', got {lr_schedule!r}."
                raise ValueError(msg)
            n = max(int(max_epochs), 1)
            cosine = _EpochLRSchedule(lambda e: 0.5 * (1.0 + math.cos(math.pi * min(e, n) / n)))
            kwargs["callbacks"] = [cosine, *kwargs.get("callbacks", [])]
        if ema_decay is not None:
            from ..train import WeightEMA

            kwargs["callbacks"] = [*kwargs.get("callbacks", []), WeightEMA(ema_decay, warmup=True)]
        super().train(
            max_epochs=max_epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            early_stopping_patience=early_stopping_patience,
            early_stopping_monitor=early_stopping_monitor,
            **kwargs,
        )
        self.train_params_.update(
            class_weight=class_weight,
            lr_decay=lr_decay,
            lr_schedule=lr_schedule,
            ema_decay=ema_decay,
            logit_adjustment=tau,
        )

    def pretrain(
        self,
        *,
        max_epochs: int = 50,
        batch_size: int = 128,
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        pretraining_ratio: float = 0.2,
        indices: Sequence[int] | None = None,
        validation_indices: Sequence[int] | None = None,
        early_stopping_patience: int = 10,
        n_shared_decoder: int = 1,
        n_independent_decoder: int = 1,
        **kwargs: Any,
    ) -> pd.DataFrame:
        """Self-supervised pretraining of the encoder (Arik & Pfister 2021, §"Self-supervised learning").

        Each gene of each cell is hidden with probability ``pretraining_ratio``; the encoder reads the
        visible genes (its mask prior excludes the hidden ones) and a TabNet decoder (one feature transformer
        per decision step + a linear layer) reconstructs the hidden ones; the loss is their squared error,
        each gene standardised by its mean and standard deviation over the pretraining cells (the paper's
        normalised loss; 1 = no better than predicting the mean). No labels are used. Trained with Lightning
        like :meth:`train` (progress bar, logger, checkpoints, early stopping and best-epoch restore on the
        validation reconstruction error, computed with fixed random masks). The decoder is discarded
        afterwards; call :meth:`train` next to fine-tune the pretrained encoder together with the
        classification head (``history`` / ``train_params_`` describe that training, not this one).

        Parameters
        ----------
        max_epochs
            Maximum number of passes over the pretraining cells.
        batch_size
            Cells per batch.
        lr, weight_decay
            AdamW learning rate and decoupled weight decay.
        pretraining_ratio
            Probability of hiding each gene.
        indices
            Integer positions of the pretraining cells in the registered AnnData (default: all). Pass the
            training cells only when the others are used for validation or testing.
        validation_indices
            Cells whose reconstruction error (fixed random masks) selects the best epoch and stops early.
            Without them, all ``max_epochs`` run and the last encoder is kept.
        early_stopping_patience
            Epochs without improvement of the validation reconstruction error before stopping.
        n_shared_decoder, n_independent_decoder
            GLU blocks of the decoder's feature transformers.
        **kwargs
            Passed to :meth:`BaseModel.train` (``accelerator``, ``logger``, ``progress_bar``,
            ``enable_checkpointing``, ``callbacks``, ...).

        Returns
        -------
        Per-epoch ``train_reconstruction`` (mean over the training batches) and, with
        ``validation_indices``, ``validation_reconstruction`` (row 0: before any update, for reference; the
        encoder of the best later epoch is kept) — also stored in ``pretrain_history_``.
        """
        for key in ("train_indices", "train_size", "validation_size", "early_stopping_monitor", "data"):
            if key in kwargs:
                msg = f"pretrain() does not take {key!r}; use indices / validation_indices."
                raise TypeError(msg)
        self._seed_everything()
        module = self.module
        device = self.device
        prepared = self._prepare(self.adata, keys=["X"])
        idx = np.arange(prepared.n_obs) if indices is None else np.asarray(indices, dtype=np.int64)
        val_idx = (
            np.zeros(0, dtype=np.int64)
            if validation_indices is None
            else np.asarray(validation_indices, dtype=np.int64)
        )
        # per-gene variance of the transformed input over the pretraining cells (the loss normaliser)
        n, s1, s2 = 0, 0.0, 0.0
        with torch.no_grad():
            for b in self._dataloader(prepared, idx, batch_size=1024):
                t = module._transform(b["X"].to(device).float()).double()
                n, s1, s2 = n + t.shape[0], s1 + t.sum(0), s2 + (t**2).sum(0)
        mean = (s1 / n).float()
        var = (s2 / n - (s1 / n) ** 2).clamp_min(0.0).float()
        vbs = module.feature_transformers[0].blocks[0].bn.virtual_batch_size
        self._pretrainer = TabNetPretrainer(
            module,
            mean,
            var,
            pretraining_ratio=pretraining_ratio,
            n_shared=n_shared_decoder,
            n_independent=n_independent_decoder,
            virtual_batch_size=vbs,
        )
        # BaseModel.train fits the plan built by _training_plan (the pretrainer's while it is set) and
        # records its history and state as the model's; keep the classifier's and restore them afterwards
        saved = {k: getattr(self, k, None) for k in ("history_", "is_trained_", "train_params_", "trainer_")}
        has_val = len(val_idx) > 0
        early_stopping = bool(kwargs.pop("early_stopping", True)) and has_val
        try:
            BaseModel.train(
                self,
                max_epochs=max_epochs,
                batch_size=batch_size,
                lr=lr,
                weight_decay=weight_decay,
                train_indices=idx,
                validation_indices=val_idx,
                early_stopping=early_stopping,
                early_stopping_patience=early_stopping_patience,
                early_stopping_monitor="validation_reconstruction",
                **kwargs,
            )
            plan = self.trainer_.lightning_module
            hist = {k: v.iloc[:, 0] for k, v in self.history_.items()}
        finally:
            self._pretrainer = None
            for k, v in saved.items():
                setattr(self, k, v)
        cols = ["train_reconstruction"] + (["validation_reconstruction"] if has_val else [])
        rows = pd.DataFrame({c: hist[c] for c in cols})
        rows.index = rows.index.astype(int) + 1
        if has_val:  # epoch 0: the untrained encoder and decoder
            rows.loc[0] = [np.nan, plan.initial_validation]
            rows = rows.sort_index()
        rows.index.name = "epoch"
        self.pretrain_history_ = rows
        return self.pretrain_history_

    def _training_plan(self, **plan_kwargs: Any):
        if getattr(self, "_pretrainer", None) is not None:
            return _PretrainPlan(self._pretrainer, **plan_kwargs)
        return super()._training_plan(**plan_kwargs)

    def _probabilities(self, prepared: Any, *, batch_size: int) -> np.ndarray:
        return self._module_outputs(
            prepared, lambda b: torch.softmax(self.module(b["X"])["logits"], dim=-1), batch_size=batch_size
        )

    def get_embedding(self, adata: AnnData | None = None, *, batch_size: int = 1024) -> np.ndarray:
        """Cell embedding: the summed decision outputs of the feature transformer (scTab's embedding).

        Parameters
        ----------
        adata
            Cells (default: the training AnnData); genes aligned by name, labels not needed.
        batch_size
            Cells per forward pass.

        Returns
        -------
        ``(n_cells, n_d)`` array.
        """
        self._check_trained()
        prepared = self._prepare(adata, keys=["X"])
        return self._module_outputs(
            prepared, lambda b: self.module.encode(b["X"])["embedding"], batch_size=batch_size
        )

    def get_feature_importance(self, adata: AnnData | None = None, *, batch_size: int = 1024) -> np.ndarray:
        """Aggregate TabNet mask importance per cell and gene (Arik & Pfister 2021, eq. 5).

        Parameters
        ----------
        adata
            Cells (default: the training AnnData).
        batch_size
            Cells per forward pass.

        Returns
        -------
        ``(n_cells, n_genes)`` non-negative array with rows summing to one, genes in the model's order
        (``model.var_names_``).
        """
        self._check_trained()
        prepared = self._prepare(adata, keys=["X"])
        return self._module_outputs(
            prepared, lambda b: self.module.feature_importance(b["X"]), batch_size=batch_size
        )
