"""Lightning module of :class:`scpredict.models.ContextCycleAE`: cycle training with two optimisers.

Manual optimisation: at every step the generator losses (reconstruction, cycle reconstruction, integration,
target consistency) are back-propagated together and stepped by the generator optimiser (every parameter but
the classifier's), the base weight is projected back to non-negative values, and then the metadata classifier
takes its own step on real cells with its own optimiser.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch

from ._plan import TrainingPlan

__all__ = ["CycleTrainingPlan", "StreamDataModule"]

_LOSS_NAMES = ("recon", "cycle", "integration", "target")


class CycleTrainingPlan(TrainingPlan):
    """Train a :class:`~scpredict.module._cycle_ae.ContextCycleAEModule`.

    Parameters
    ----------
    module
        The network.
    field_keys
        Batch keys holding each field's integer codes, in the module's field order.
    categories
        Category names per field (used to name the per-category contribution logs).
    lr
        Generator learning rate (Adam).
    weight_decay
        Generator weight decay.
    classifier_lr
        Classifier learning rate (default: ``lr``).
    loss_weights
        Weights of the generator losses ``recon``, ``cycle``, ``integration``, ``target`` (default 1 each).
    log_categories
        Log each category's mean L2 contribution per epoch when a field has at most this many categories.
    optimizer, lr_scheduler, loss_kwargs
        Accepted for signature compatibility with :class:`~scpredict.train.TrainingPlan`; the optimisers are
        Adam, without scheduler.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        field_keys: Sequence[str],
        categories: Mapping[str, Sequence[str]] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        classifier_lr: float | None = None,
        loss_weights: Mapping[str, float] | None = None,
        log_categories: int = 32,
        optimizer: Literal["adamw", "adam"] = "adam",
        lr_scheduler: Literal["plateau"] | None = None,
        loss_kwargs: dict | None = None,
    ) -> None:
        super().__init__(
            module, lr=lr, weight_decay=weight_decay, optimizer=optimizer, loss_kwargs=loss_kwargs
        )
        self.automatic_optimization = False
        self.field_keys = list(field_keys)
        self.categories = {k: list(v) for k, v in (categories or {}).items()}
        self.classifier_lr = lr if classifier_lr is None else classifier_lr
        unknown = set(loss_weights or {}) - set(_LOSS_NAMES)
        if unknown:
            msg = f"loss_weights has unknown names {sorted(unknown)}; allowed: {list(_LOSS_NAMES)}."
            raise ValueError(msg)
        self.loss_weights = {k: 1.0 for k in _LOSS_NAMES} | dict(loss_weights or {})
        self.log_categories = log_categories

    def _unpack(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch["X"].float()
        codes = torch.cat([batch[k].reshape(-1, 1).long() for k in self.field_keys], dim=1)
        return x, codes

    def _log(self, name: str, value: torch.Tensor | float, n: int, *, prog_bar: bool = False) -> None:
        v = value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
        self.log(name, v, on_step=False, on_epoch=True, batch_size=max(1, n), prog_bar=prog_bar)

    def _log_contributions(self, prefix: str, parts: dict, codes: torch.Tensor) -> None:
        norms = self.module.contribution_norms({k: v for k, v in parts.items() if k != "x_hat"}).detach()
        n = norms.shape[0]
        self._log(f"{prefix}_l2_base", norms[:, 0].mean(), n)
        for f, key in enumerate(self.field_keys):
            self._log(f"{prefix}_l2_{key}", norms[:, f + 1].mean(), n)
            cats = self.categories.get(key)
            if cats is None or len(cats) > self.log_categories:
                continue
            for c in torch.unique(codes[:, f]).tolist():
                sel = codes[:, f] == c
                name = str(cats[c]).replace("/", "_")
                self._log(f"{prefix}_l2_{key}={name}", norms[sel, f + 1].mean(), int(sel.sum()))

    def training_step(self, batch, batch_idx):
        opt_g, opt_c = self.optimizers()
        x, source = self._unpack(batch)
        target = self.module.sample_targets(source)
        losses, rec = self.module.cycle_losses(x, source, target, weights=self.loss_weights)
        opt_g.zero_grad()
        self.manual_backward(losses.total)
        opt_g.step()
        self.module.project_()
        # the classifier: its own optimiser, real cells only (drops the grads the target loss left on it)
        opt_c.zero_grad()
        logits = self.module.classifier(x)
        cls_loss = torch.stack(
            [torch.nn.functional.cross_entropy(lg, source[:, f]) for f, lg in enumerate(logits)]
        ).mean()
        self.manual_backward(cls_loss)
        opt_c.step()
        n = x.shape[0]
        self._log("train_loss", losses.total, n, prog_bar=True)
        for name in _LOSS_NAMES:
            self._log(f"train_loss_{name}", getattr(losses, name), n)
        self._log("train_loss_classifier", cls_loss, n)
        acc = torch.stack(
            [(lg.argmax(1) == source[:, f]).float().mean() for f, lg in enumerate(logits)]
        ).mean()
        self._log("train_classifier_accuracy", acc, n)
        self._log_contributions("train", rec, source)

    def validation_step(self, batch, batch_idx):
        x, source = self._unpack(batch)
        gen = torch.Generator().manual_seed(1_000 + int(batch_idx))  # same targets every epoch
        target = self.module.sample_targets(source, generator=gen)
        losses, rec = self.module.cycle_losses(x, source, target, weights=self.loss_weights)
        n = x.shape[0]
        self._log("validation_loss", losses.total, n, prog_bar=True)
        for name in _LOSS_NAMES:
            self._log(f"validation_loss_{name}", getattr(losses, name), n)
        self._log("validation_loss_classifier", self.module.classifier.loss(x, source), n)

    def configure_optimizers(self):
        gen = torch.optim.Adam(self.module.generator_parameters(), lr=self.lr, weight_decay=self.weight_decay)
        cls = torch.optim.Adam(self.module.classifier.parameters(), lr=self.classifier_lr)
        return [gen, cls]


class StreamDataModule(pl.LightningDataModule):
    """Data module whose training loader is any re-iterable of batch dicts (e.g. a chunked stream)."""

    def __init__(self, batches: Iterable[Any]) -> None:
        super().__init__()
        self.batches = batches

    def train_dataloader(self) -> Iterable[Any]:
        return self.batches
