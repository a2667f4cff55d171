"""A single linear layer with a softmax: scTab's "linear" baseline (Fischer et al. 2024). Pure torch."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..train import LossOutput

__all__ = ["LinearClassifierModule"]


class LinearClassifierModule(nn.Module):
    """``logits = W BN(x) + b`` on (optionally dropped-out) input features.

    ``BN`` is a batch normalisation without learned affine parameters: at inference it is a fixed per-gene
    standardisation (running mean and variance), so the classifier stays linear in ``x``; it makes the
    optimisation well conditioned on uncentred log-expression.

    Parameters
    ----------
    n_input
        Number of input features (genes).
    n_classes
        Number of classes.
    dropout_rate
        Dropout applied to the input during training.
    log_normalize_input
        Turn raw counts into ``log1p(counts / total · 10⁴)`` before the layer (scTab's preprocessing).
    """

    def __init__(
        self, n_input: int, n_classes: int, *, dropout_rate: float = 0.0, log_normalize_input: bool = False
    ) -> None:
        super().__init__()
        self.n_input, self.n_classes = int(n_input), int(n_classes)
        self.log_normalize_input = bool(log_normalize_input)
        self.input_bn = nn.BatchNorm1d(self.n_input, affine=False)
        self.dropout = nn.Dropout(dropout_rate)
        self.linear = nn.Linear(self.n_input, self.n_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"logits": (n_cells, n_classes)}``."""
        if self.log_normalize_input:
            x = torch.log1p(x * (1e4 / x.sum(dim=1, keepdim=True).clamp_min(1.0)))
        return {"logits": self.linear(self.dropout(self.input_bn(x)))}

    def loss(self, batch: dict[str, torch.Tensor], *, logit_offset: torch.Tensor | None = None) -> LossOutput:
        """Cross-entropy of ``batch["X"]`` against ``batch["labels"]``, with accuracy as a metric.

        ``logit_offset`` (the logit adjustment ``τ · log π`` of Menon et al. 2021, "Long-tail learning via
        logit adjustment", ICLR) is added to the logits inside the cross-entropy, in training and evaluation
        mode alike (the validation loss is the held-out value of the training objective); the accuracy, and
        prediction, use the plain logits, which then estimate the class-balanced posterior.

        Parameters
        ----------
        batch
            ``{"X": (n_cells, n_input), "labels": (n_cells, 1)}``.
        logit_offset
            ``(n_classes,)`` offsets added to the logits in the loss; ``None`` = plain cross-entropy (an
            all-zero offset gives the same loss).

        Returns
        -------
        :class:`~scpredict.train.LossOutput` with the metrics ``cross_entropy`` (plain logits) and
        ``accuracy``, and the batch's labels and plain logits (the plan logs epoch-level macro F1 and
        balanced accuracy).
        """
        y = batch["labels"].long().squeeze(-1)
        logits = self(batch["X"])["logits"]
        ce = F.cross_entropy(logits, y)
        fit = ce
        if logit_offset is not None:
            fit = F.cross_entropy(logits + logit_offset.to(device=logits.device, dtype=logits.dtype), y)
        acc = (logits.argmax(dim=-1) == y).float().mean()
        return LossOutput(
            loss=fit,
            metrics={"cross_entropy": ce, "accuracy": acc},
            n_obs=y.shape[0],
            predictions=(y, logits),
        )
