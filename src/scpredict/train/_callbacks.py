"""Callbacks: epoch-level progress bar, in-memory history, best weights, weight averaging, failure injection for tests."""

from __future__ import annotations

import copy
import math

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar

__all__ = ["EpochProgressBar", "HistoryCallback", "BestWeights", "WeightEMA"]


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


class WeightEMA(Callback):
    """Exponential moving average of weights (Polyak averaging; the averaged weights of DDPM, Ho et al. 2020).

    The average starts from the weights at the start of training and is updated after every optimiser step,
    ``ema ← d_s · ema + (1 − d_s) · w`` with ``d_s = decay``, or ``min(decay, (1 + s) / (10 + s))`` at step
    ``s`` with ``warmup`` (so that the first steps do not dominate); without ``warmup`` the first step replaces
    the starting weights (``d_1 = 0``).

    Parameters
    ----------
    decay
        Decay per step, in ``[0, 1)``.
    tensors
        ``tensors(pl_module) -> list[Tensor]``: the tensors to average, updated in place (default: every
        floating-point entry of ``pl_module.module.state_dict()``, buffers included).
    warmup
        Use the warm-up schedule above.
    swap_for_validation
        Validate on the averaged weights (swapped in at the start of validation, out at the start of the next
        training epoch), so that early stopping and :class:`BestWeights` see, and keep, the averaged model; the
        average is loaded at the end only when no validation ran. ``False``: the average is loaded at the end.
    """

    def __init__(self, decay: float, *, tensors=None, warmup: bool = False, swap_for_validation: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay!r}.")
        self.decay = float(decay)
        self.tensors = tensors or (
            lambda pl_module: [v for v in pl_module.module.state_dict().values() if v.is_floating_point()]
        )
        self.warmup = warmup
        self.swap_for_validation = swap_for_validation
        self.shadow: list[torch.Tensor] = []
        self.raw: list[torch.Tensor] | None = None
        self.step = 0
        self.validated = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.shadow = [t.detach().clone() for t in self.tensors(pl_module)]
        self.step, self.raw, self.validated = 0, None, False

    @torch.no_grad()
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        self.step += 1
        if self.warmup:
            d = min(self.decay, (1 + self.step) / (10 + self.step))
        else:
            d = 0.0 if self.step == 1 else self.decay
        for s, t in zip(self.shadow, self.tensors(pl_module), strict=True):
            s.lerp_(t.detach(), 1.0 - d)

    @torch.no_grad()
    def _swap_in(self, pl_module: LightningModule) -> None:
        if self.raw is not None:
            return
        current = self.tensors(pl_module)
        self.raw = [t.detach().clone() for t in current]
        for s, t in zip(self.shadow, current, strict=True):
            t.copy_(s)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.swap_for_validation and not trainer.sanity_checking and self.step > 0:
            self._swap_in(pl_module)
            self.validated = True

    @torch.no_grad()
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.raw is None:
            return
        for r, t in zip(self.raw, self.tensors(pl_module), strict=True):
            t.copy_(r)
        self.raw = None

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.validated:  # otherwise BestWeights has restored the best averaged weights
            self._swap_in(pl_module)
        self.raw = None
