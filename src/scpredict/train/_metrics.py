"""Epoch-level classification metrics for the training plan: macro F1 and balanced accuracy.

Per-batch averages of a macro F1 are not the macro F1 of the epoch (a rare class appears in few batches), so
both are computed from a confusion matrix summed over the epoch's batches (and over DDP ranks) as a
``torchmetrics.Metric``, which Lightning resets at the start of every epoch.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

__all__ = ["ConfusionScore", "confusion_scores"]


def confusion_scores(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """Macro F1 and balanced accuracy of a confusion matrix (rows: true class, columns: predicted class).

    Both average over the classes present in the truth (as :func:`scpredict.metrics.macro_f1` does): a class
    without true cells has no recall, and predicting it wrongly already costs the true classes' F1.

    Parameters
    ----------
    confusion
        ``(n_classes, n_classes)`` counts.

    Returns
    -------
    ``{"macro_f1": scalar, "balanced_accuracy": scalar}`` (float tensors; ``nan`` when there are no cells).
    """
    c = confusion.double()
    tp = c.diagonal()
    support = c.sum(dim=1)
    predicted = c.sum(dim=0)
    present = support > 0
    if not bool(present.any()):
        nan = torch.tensor(float("nan"), dtype=torch.float32, device=c.device)
        return {"macro_f1": nan, "balanced_accuracy": nan}
    f1 = 2.0 * tp / (support + predicted).clamp_min(1.0)
    recall = tp / support.clamp_min(1.0)
    return {
        "macro_f1": f1[present].mean().float(),
        "balanced_accuracy": recall[present].mean().float(),
    }


class ConfusionScore(Metric):
    """One score of :func:`confusion_scores` over all batches of an epoch.

    Parameters
    ----------
    n_classes
        Number of classes (the width of the logits).
    score
        ``"macro_f1"`` or ``"balanced_accuracy"``.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, n_classes: int, score: str) -> None:
        super().__init__()
        if score not in ("macro_f1", "balanced_accuracy"):
            msg = f"score must be 'macro_f1' or 'balanced_accuracy', got {score!r}."
            raise ValueError(msg)
        self.score = score
        self.n_classes = int(n_classes)
        self.add_state(
            "confusion",
            default=torch.zeros(self.n_classes, self.n_classes, dtype=torch.long),
            dist_reduce_fx="sum",
        )

    def update(self, labels: torch.Tensor, predicted: torch.Tensor) -> None:
        """Add a batch of integer true and predicted classes (any shape, same number of elements)."""
        k = self.n_classes
        y = labels.detach().reshape(-1).long()
        p = predicted.detach().reshape(-1).long().to(y.device)
        self.confusion += torch.bincount(y * k + p, minlength=k * k).reshape(k, k).to(self.confusion.device)

    def compute(self) -> torch.Tensor:
        """The score of the summed confusion matrix."""
        return confusion_scores(self.confusion)[self.score]
