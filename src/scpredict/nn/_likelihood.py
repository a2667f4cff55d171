"""Negative-binomial likelihood for count data, with a per-cell library-size scale.

Parameterised by the mean ``mu`` and the inverse dispersion ``theta`` (variance ``mu + mu² / theta``), as in
scVI (Lopez et al., Nat Methods 2018) and the seed's ``nb_nll_loss``. In scipy's terms this is
``scipy.stats.nbinom(n=theta, p=theta / (theta + mu))``.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["nb_log_prob", "nb_nll"]


def nb_log_prob(x: torch.Tensor, *, log_mu: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
    """Elementwise log-probability of counts under NB(mean ``exp(log_mu)``, inverse dispersion ``exp(log_theta)``).

    Parameters
    ----------
    x
        Non-negative counts (float tensor).
    log_mu
        Log mean, broadcastable to ``x``.
    log_theta
        Log inverse dispersion, broadcastable to ``x``.

    Returns
    -------
    torch.Tensor
        ``log NB(x | mu, theta)``, the shape of the broadcast.
    """
    theta = torch.exp(log_theta)
    log_theta_mu = torch.logaddexp(log_theta, log_mu)  # log(theta + mu), stable for large/small values
    return (
        torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
        + theta * (log_theta - log_theta_mu)
        + x * (log_mu - log_theta_mu)
    )


def nb_nll(
    x: torch.Tensor,
    mean_log: torch.Tensor,
    disp_log: torch.Tensor,
    *,
    library_size: torch.Tensor | None = None,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> torch.Tensor:
    """Negative-binomial negative log-likelihood with a library-size scale.

    The mean of cell ``c``, gene ``g`` is ``mu = library_size_c * exp(mean_log_g)``: ``mean_log`` is the log
    expected count per unit of library size (pass ``library_size = total_counts / reference`` to read
    ``exp(mean_log)`` as the expected count at the reference depth).

    Parameters
    ----------
    x
        Counts, ``(cells, genes)``.
    mean_log
        Log mean per unit library size, broadcastable to ``x``.
    disp_log
        Log inverse dispersion ``log theta``, broadcastable to ``x``.
    library_size
        ``(cells,)`` or ``(cells, 1)`` positive scale; ``None`` means 1.
    reduction
        ``"mean"`` over all entries, ``"sum"``, or ``"none"`` (elementwise).

    Returns
    -------
    torch.Tensor
        The reduced NLL (or the elementwise NLL for ``reduction="none"``).
    """
    log_mu = mean_log
    if library_size is not None:
        lib = library_size.reshape(-1, 1) if library_size.ndim == 1 else library_size
        log_mu = mean_log + torch.log(lib)
    nll = -nb_log_prob(x, log_mu=log_mu, log_theta=disp_log)
    if reduction == "mean":
        return nll.mean()
    if reduction == "sum":
        return nll.sum()
    if reduction == "none":
        return nll
    msg = f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}."
    raise ValueError(msg)
