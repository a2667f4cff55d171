"""The generic Lightning module: wraps any ``nn.Module`` that implements ``loss(batch) -> LossOutput``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import lightning.pytorch as pl
import torch

__all__ = ["LossOutput", "TrainingPlan"]


@dataclass
class LossOutput:
    """What a module's ``loss`` returns.

    Attributes
    ----------
    loss
        Scalar tensor to minimise.
    metrics
        Extra scalars to log (tensors or floats), e.g. ``{"mse": ..., "r2": ...}``; logged as
        ``train_<name>`` / ``validation_<name>`` per epoch.
    n_obs
        Number of observations in the batch (weights epoch averages).
    predictions
        For classifiers: ``(labels (n,), logits (n, n_classes))`` of the batch. The training plan then also
        logs ``train_macro_f1`` / ``validation_macro_f1`` and ``..._balanced_accuracy``, computed from the
        confusion matrix of the whole epoch (not averaged over batches), so they can be early-stopping
        monitors.
    """

    loss: torch.Tensor
    metrics: dict[str, Any] = field(default_factory=dict)
    n_obs: int = 1
    predictions: tuple[torch.Tensor, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if not torch.is_tensor(self.loss) or self.loss.dim() != 0:
            raise ValueError("LossOutput.loss must be a scalar tensor.")


class TrainingPlan(pl.LightningModule):
    """Train a module through ``module.loss(batch, **loss_kwargs)``.

    Parameters
    ----------
    module
        A torch module with ``loss(batch: dict[str, Tensor], **kwargs) -> LossOutput``.
    lr
        Learning rate.
    weight_decay
        Decoupled weight decay (AdamW).
    optimizer
        ``"adamw"`` (default, eps=1e-8) or ``"adam"``.
    lr_scheduler
        ``None`` or ``"plateau"`` (reduce on validation-loss plateau by 0.5, patience 5; on the training loss
        when the run has no validation cells, ``has_validation = False``, which ``BaseModel.train`` sets).
    loss_kwargs
        Passed to ``module.loss`` at every step.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: Literal["adamw", "adam"] = "adamw",
        lr_scheduler: Literal["plateau"] | None = None,
        loss_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.module = module
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer_name = optimizer
        self.lr_scheduler = lr_scheduler
        self.loss_kwargs = loss_kwargs or {}
        # epoch-level classification scores, created at the first batch that reports predictions
        self.class_scores = torch.nn.ModuleDict()

    #: whether the run has validation cells (set by ``BaseModel.train`` before fitting)
    has_validation: bool = True

    def forward(self, batch):  # pragma: no cover - Lightning API
        return self.module.loss(batch, **self.loss_kwargs)

    def _log_output(self, out: LossOutput, prefix: str) -> None:
        bs = max(1, int(out.n_obs))
        # under DDP, validation metrics are averaged over the ranks (each holds a shard of the validation
        # cells), so early stopping and checkpoints see the same number on every rank; a no-op on one process
        sync = prefix == "validation"
        self.log(
            f"{prefix}_loss",
            out.loss.detach(),
            on_step=False,
            on_epoch=True,
            batch_size=bs,
            prog_bar=True,
            sync_dist=sync,
        )
        for k, v in out.metrics.items():
            v = v.detach() if torch.is_tensor(v) else torch.tensor(float(v))
            self.log(f"{prefix}_{k}", v.float(), on_step=False, on_epoch=True, batch_size=bs, sync_dist=sync)
        if out.predictions is not None:
            self._log_class_scores(out.predictions, prefix)

    def _log_class_scores(self, predictions: tuple[torch.Tensor, torch.Tensor], prefix: str) -> None:
        from ._metrics import ConfusionScore

        labels, logits = predictions
        predicted = logits.detach().argmax(dim=-1)
        for score in ("macro_f1", "balanced_accuracy"):
            name = f"{prefix}_{score}"
            if name not in self.class_scores:
                self.class_scores[name] = ConfusionScore(logits.shape[-1], score).to(logits.device)
            metric = self.class_scores[name]
            metric.update(labels, predicted)
            # a Metric object: Lightning computes it over the epoch (DDP-reduced) and resets it
            self.log(name, metric, on_step=False, on_epoch=True, metric_attribute=f"class_scores.{name}")

    def training_step(self, batch, batch_idx):
        out = self.module.loss(batch, **self.loss_kwargs)
        self._log_output(out, "train")
        return out.loss

    def validation_step(self, batch, batch_idx):
        out = self.module.loss(batch, **self.loss_kwargs)
        self._log_output(out, "validation")

    def configure_optimizers(self):
        params = [p for p in self.module.parameters() if p.requires_grad]
        if self.optimizer_name == "adam":
            opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay, eps=1e-8)
        else:
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, eps=1e-8)
        if self.lr_scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=5)
            monitor = "validation_loss" if self.has_validation else "train_loss"
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": monitor}}
        return opt
