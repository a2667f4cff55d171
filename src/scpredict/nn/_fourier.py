"""Fourier features of scalar coordinates (genomic loci, times, doses).

``[sin(2π f_k x), cos(2π f_k x)]_k`` for a geometric ladder of frequencies ``f_k`` (the sinusoidal encoding of
Vaswani et al. 2017) or random Gaussian frequencies (Tancik et al., "Fourier Features Let Networks Learn High
Frequency Functions in Low Dimensional Domains", NeurIPS 2020). Low frequencies place a gene on its chromosome
coarsely, high ones separate neighbouring genes.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

__all__ = ["FourierFeatures"]


class FourierFeatures(nn.Module):
    """Map a scalar in ``[0, 1]`` to ``2 * n_frequencies`` sinusoidal features.

    Parameters
    ----------
    n_frequencies
        Number of frequencies; the output has twice as many features (sine and cosine).
    max_frequency
        Highest frequency (cycles over ``[0, 1]``) of the geometric ladder ``1 .. max_frequency``.
    kind
        ``"geometric"`` (deterministic ladder) or ``"gaussian"`` (frequencies ``|N(0, max_frequency / 3)|``,
        drawn once from ``seed``).
    learnable
        Make the frequencies a parameter.
    seed
        Seed for ``kind="gaussian"``.
    """

    def __init__(
        self,
        n_frequencies: int = 16,
        *,
        max_frequency: float = 1024.0,
        kind: Literal["geometric", "gaussian"] = "geometric",
        learnable: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if n_frequencies < 1:
            msg = f"n_frequencies must be >= 1, got {n_frequencies}."
            raise ValueError(msg)
        if kind == "geometric":
            freqs = torch.logspace(0.0, math.log10(max_frequency), n_frequencies)
        elif kind == "gaussian":
            gen = torch.Generator().manual_seed(seed)
            freqs = (torch.randn(n_frequencies, generator=gen) * max_frequency / 3).abs().sort().values
        else:
            msg = f"kind must be 'geometric' or 'gaussian', got {kind!r}."
            raise ValueError(msg)
        self.n_frequencies = n_frequencies
        if learnable:
            self.frequencies = nn.Parameter(freqs)
        else:
            self.register_buffer("frequencies", freqs)

    @property
    def n_features(self) -> int:
        """Number of output features (``2 * n_frequencies``)."""
        return 2 * self.n_frequencies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode.

        Parameters
        ----------
        x
            Coordinates, any shape ``(...)``, typically in ``[0, 1]``.

        Returns
        -------
        torch.Tensor
            ``(..., 2 * n_frequencies)``: sines then cosines.
        """
        angles = 2 * math.pi * x.unsqueeze(-1).to(self.frequencies.dtype) * self.frequencies
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
