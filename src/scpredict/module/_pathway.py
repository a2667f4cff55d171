"""PathwayAutoencoder: gene co-expression features learned from control cells (seed 001, section 2.1).

An autoencoder over control cells (genes standardised): a two-layer encoder to ``n_latent`` factors and a
*linear* decoder. The decoder weight row of gene ``g`` (its loading on each factor) is that gene's pathway
feature: genes that rise and fall together in unperturbed cells get similar rows. Trained on control cells
only, so the features carry no information about the perturbations the predictor must learn.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PathwayAutoencoder"]


class PathwayAutoencoder(nn.Module):
    """Autoencoder whose linear decoder loadings are per-gene pathway features.

    Parameters
    ----------
    n_genes
        Number of genes (input and output width).
    n_latent
        Number of factors (= the pathway feature dimension).
    n_hidden
        Width of the encoder's hidden layer.
    dropout_rate
        Dropout on the input (a denoising autoencoder).
    """

    def __init__(
        self, n_genes: int, *, n_latent: int = 16, n_hidden: int = 128, dropout_rate: float = 0.1
    ) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Dropout(dropout_rate),
            nn.Linear(n_genes, n_hidden),
            nn.GELU(),
            nn.Linear(n_hidden, n_latent),
        )
        self.decoder = nn.Linear(n_latent, n_genes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct standardised expression.

        Parameters
        ----------
        x
            ``(cells, genes)`` standardised expression.

        Returns
        -------
        torch.Tensor
            ``(cells, genes)`` reconstruction.
        """
        return self.decoder(self.encoder(x))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error.

        Parameters
        ----------
        x
            ``(cells, genes)`` standardised expression.

        Returns
        -------
        torch.Tensor
            Scalar loss.
        """
        return torch.mean((self(x) - x) ** 2)

    @torch.no_grad()
    def gene_features(self) -> torch.Tensor:
        """Per-gene features: decoder loadings, centred per factor and scaled by one global standard deviation
        (unused factors stay small instead of being inflated to unit variance).

        Returns
        -------
        torch.Tensor
            ``(genes, n_latent)``.
        """
        w = self.decoder.weight.detach().clone()  # (genes, n_latent)
        w = w - w.mean(0)
        return w / w.std().clamp_min(1e-8)
