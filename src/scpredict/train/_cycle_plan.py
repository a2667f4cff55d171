"""Lightning module of :class:`scpredict.models.ContextCycleAE`: cycle training with two optimisers.

Manual optimisation: at every step the generator losses (reconstruction, cycle reconstruction, integration,
target consistency, mean matching) are back-propagated together and stepped by the generator optimiser (every parameter but
the classifier's), the base weight is projected back to non-negative values, and then the metadata classifier
takes its own step on real cells with its own optimiser.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch

from ._plan import TrainingPlan

__all__ = ["CycleTrainingPlan", "StreamDataModule"]

_LOSS_NAMES = ("recon", "cycle", "integration", "target", "match", "change")


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
        Weights of the generator losses ``recon``, ``cycle``, ``integration``, ``target`` (default 1 each) and
        ``match`` (default 10): the mean of the cells generated for a combination of contexts against the
        running mean of the real cells of that combination (combinations with no real cell are not matched); and
        ``change`` (default 0): a ridge penalty on the change each field head makes for a moved cell (see
        :meth:`~scpredict.module._cycle_ae.ContextCycleAEModule.change_loss`).
    log_categories
        Log each category's mean L2 contribution per epoch when a field has at most this many categories.
    lr_schedule
        ``"constant"``, or ``"cosine"``: both learning rates decay to zero over ``max_epochs`` (cosine, stepped
        per epoch), which removes the optimiser noise from the final weights.
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
        lr_schedule: Literal["constant", "cosine"] = "constant",
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
        self.loss_weights = (
            {k: 1.0 for k in _LOSS_NAMES} | {"match": 10.0, "change": 0.0} | dict(loss_weights or {})
        )
        self.log_categories = log_categories
        if lr_schedule not in ("constant", "cosine"):
            msg = f"lr_schedule must be 'constant' or 'cosine'; got {lr_schedule!r}."
            raise ValueError(msg)
        self.lr_schedule = lr_schedule
        # running means of real expression per context combination (the ``match`` loss's targets)
        radix = [1]
        for k in module.n_categories[:-1]:
            radix.append(radix[-1] * int(k))
        self._radix = torch.tensor(radix, dtype=torch.long)
        self._combo_codes: list[int] = []
        self._combo_rows: dict[int, int] = {}
        self._combo_sums: torch.Tensor | None = None
        self._combo_counts: torch.Tensor | None = None

    def _combo(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes * self._radix.to(codes.device)).sum(1)

    @torch.no_grad()
    def _update_means(self, x: torch.Tensor, source: torch.Tensor) -> None:
        """Add the batch's real cells to the running mean of their context combination."""
        if self.loss_weights["match"] == 0:
            return
        code = self._combo(source)
        uniq, inv = torch.unique(code, return_inverse=True)
        new = [int(u) for u in uniq.tolist() if int(u) not in self._combo_rows]
        if new or self._combo_sums is None:
            for u in new:
                self._combo_rows[u] = len(self._combo_codes)
                self._combo_codes.append(u)
            n_rows, g = len(self._combo_codes), x.shape[1]
            sums = x.new_zeros(n_rows, g, dtype=torch.float64)
            counts = x.new_zeros(n_rows, dtype=torch.float64)
            if self._combo_sums is not None:
                sums[: self._combo_sums.shape[0]] = self._combo_sums
                counts[: self._combo_counts.shape[0]] = self._combo_counts
            self._combo_sums, self._combo_counts = sums, counts
        rows = torch.tensor([self._combo_rows[int(u)] for u in uniq.tolist()], device=x.device)
        self._combo_sums.index_add_(0, rows[inv], x.double())
        self._combo_counts.index_add_(0, rows[inv], torch.ones_like(code, dtype=torch.float64))

    def _match_targets(self, target: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Real means per known combination and the row of each cell's target combination (-1: unknown)."""
        if self._combo_sums is None or self.loss_weights["match"] == 0:
            return None, None
        means = (self._combo_sums / self._combo_counts.clamp(min=1)[:, None]).float()
        known = torch.tensor(self._combo_codes, device=target.device)
        hit = self._combo(target)[:, None] == known[None, :]
        rows = torch.where(
            hit.any(1), hit.float().argmax(1), torch.full_like(hit[:, 0], -1, dtype=torch.long)
        )
        return means, rows

    def _unpack(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch["X"].float()
        codes = torch.cat([batch[k].reshape(-1, 1).long() for k in self.field_keys], dim=1)
        return x, codes

    def _log(self, name: str, value: torch.Tensor | float, n: int, *, prog_bar: bool = False) -> None:
        v = value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
        self.log(name, v, on_step=False, on_epoch=True, batch_size=max(1, n), prog_bar=prog_bar)

    # Training metrics are summed over the epoch here and handed to Lightning once, at the epoch's last batch:
    # ``self.log`` costs ~5 ms a call, and with the per-category contributions (~20 calls per step) logging
    # took half of the training time on small data.
    def _acc(self, name: str, value: torch.Tensor, n: int) -> None:
        s, c = self._epoch_sums.get(name, (0.0, 0))
        self._epoch_sums[name] = (s + value.detach().float() * n, c + n)

    def _flush(self) -> None:
        for name, (total, count) in self._epoch_sums.items():
            self._log(name, total / max(count, 1), max(count, 1), prog_bar=name == "train_loss")
        self._epoch_sums = {}

    def on_train_epoch_start(self) -> None:
        self._epoch_sums: dict[str, tuple[torch.Tensor | float, int]] = {}

    def _log_contributions(self, prefix: str, parts: dict, codes: torch.Tensor) -> None:
        norms = self.module.contribution_norms({k: v for k, v in parts.items() if k != "x_hat"}).detach()
        n = norms.shape[0]
        self._acc(f"{prefix}_l2_base", norms[:, 0].mean(), n)
        for f, key in enumerate(self.field_keys):
            self._acc(f"{prefix}_l2_{key}", norms[:, f + 1].mean(), n)
            cats = self.categories.get(key)
            if cats is None or len(cats) > self.log_categories:
                continue
            k = len(cats)
            counts = torch.bincount(codes[:, f], minlength=k)
            sums = torch.zeros(k, dtype=norms.dtype, device=norms.device).index_add_(
                0, codes[:, f], norms[:, f + 1]
            )
            for c in torch.nonzero(counts).flatten().tolist():
                name = str(cats[c]).replace("/", "_")
                self._acc(f"{prefix}_l2_{key}={name}", sums[c] / counts[c], int(counts[c]))

    def training_step(self, batch, batch_idx):
        opt_g, opt_c = self.optimizers()
        x, source = self._unpack(batch)
        target = self.module.sample_targets(source)
        self._update_means(x, source)
        means, rows = self._match_targets(target)
        losses, rec = self.module.cycle_losses(
            x, source, target, weights=self.loss_weights, match_means=means, match_rows=rows
        )
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
        if not hasattr(self, "_epoch_sums"):
            self._epoch_sums = {}
        self._acc("train_loss", losses.total, n)
        for name in _LOSS_NAMES:
            self._acc(f"train_loss_{name}", getattr(losses, name), n)
        self._acc("train_loss_classifier", cls_loss, n)
        acc = torch.stack(
            [(lg.argmax(1) == source[:, f]).float().mean() for f, lg in enumerate(logits)]
        ).mean()
        self._acc("train_classifier_accuracy", acc, n)
        self._log_contributions("train", rec, source)
        n_batches = self.trainer.num_training_batches
        if not math.isfinite(n_batches) or batch_idx + 1 >= n_batches:  # unknown length: log every step
            self._flush()

    def validation_step(self, batch, batch_idx):
        x, source = self._unpack(batch)
        gen = torch.Generator().manual_seed(1_000 + int(batch_idx))  # same targets every epoch
        target = self.module.sample_targets(source, generator=gen)
        means, rows = self._match_targets(target)
        losses, rec = self.module.cycle_losses(
            x, source, target, weights=self.loss_weights, match_means=means, match_rows=rows
        )
        n = x.shape[0]
        self._log("validation_loss", losses.total, n, prog_bar=True)
        for name in _LOSS_NAMES:
            self._log(f"validation_loss_{name}", getattr(losses, name), n)
        self._log("validation_loss_classifier", self.module.classifier.loss(x, source), n)

    def configure_optimizers(self):
        gen = torch.optim.Adam(self.module.generator_parameters(), lr=self.lr, weight_decay=self.weight_decay)
        cls = torch.optim.Adam(self.module.classifier.parameters(), lr=self.classifier_lr)
        epochs = getattr(self.trainer, "max_epochs", None) if self._trainer is not None else None
        if self.lr_schedule == "cosine" and epochs is not None and epochs > 0:
            scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=int(epochs)) for o in (gen, cls)]
            return [gen, cls], scheds
        return [gen, cls]

    def on_train_epoch_end(self) -> None:
        if getattr(self, "_epoch_sums", None):  # a loader whose length was wrong: log what is left
            self._flush()
        scheds = self.lr_schedulers()
        if scheds is None:
            return
        for sched in scheds if isinstance(scheds, list) else [scheds]:
            sched.step()


class StreamDataModule(pl.LightningDataModule):
    """Data module whose training loader is any re-iterable of batch dicts (e.g. a chunked stream)."""

    def __init__(self, batches: Iterable[Any]) -> None:
        super().__init__()
        self.batches = batches

    def train_dataloader(self) -> Iterable[Any]:
        return self.batches
