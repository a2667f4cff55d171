"""Callbacks: epoch-level progress bar, in-memory history, best weights, failure injection for tests."""

from __future__ import annotations

import copy
import math

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar

__all__ = ["EpochProgressBar", "HistoryCallback", "BestWeights"]


def _scalar(v) -> float:
    return float(v.detach().cpu().item()) if torch.is_tensor(v) else float(v)


class EpochProgressBar(ProgressBar):
    """One progress bar over epochs (not batches), showing the latest epoch-level metrics."""

    def __init__(self) -> None:
        super().__init__()
        self._bar = None
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from tqdm.auto import tqdm

        if self._enabled and trainer.is_global_zero:
            total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
            self._bar = tqdm(total=total, desc="Training", unit="epoch", initial=trainer.current_epoch)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._bar is None:
            return
        shown = {}
        for k, v in trainer.callback_metrics.items():
            if k.endswith("_step"):
                continue
            if "loss" in k or "r2" in k or "accuracy" in k:
                shown[k.replace("validation", "val").replace("_epoch", "")] = f"{_scalar(v):.4g}"
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(1)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class HistoryCallback(Callback):
    """Collect epoch-level metrics into ``self.rows`` (one dict per epoch)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {"epoch": float(trainer.current_epoch)}
        for k, v in trainer.callback_metrics.items():
            if k.endswith("_step"):
                continue
            try:
                row[k.removesuffix("_epoch")] = _scalar(v)
            except (TypeError, ValueError, RuntimeError):
                continue
        self.rows.append(row)


class BestWeights(Callback):
    """Keep a copy of the module weights at the best value of ``monitor``; restore them when training ends."""

    def __init__(self, monitor: str = "validation_loss", mode: str = "min") -> None:
        self.monitor = monitor
        self.mode = mode
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch: int | None = None
        self._state = None

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = _scalar(trainer.callback_metrics[self.monitor])
        better = value < self.best if self.mode == "min" else value > self.best
        if better and math.isfinite(value):
            self.best = value
            self.best_epoch = trainer.current_epoch
            self._state = copy.deepcopy(
                {k: v.detach().cpu() for k, v in pl_module.module.state_dict().items()}
            )

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._state is not None:
            pl_module.module.load_state_dict(self._state)
