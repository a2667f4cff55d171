"""A small model built on the base, used by the foundation tests (not part of the package)."""

from __future__ import annotations

import numpy as np
import torch
from anndata import AnnData
from torch import nn

import scpredict as sp
from scpredict.models._base import BaseModel
from scpredict.train import LossOutput


class ToyModule(nn.Module):
    """Linear bottleneck autoencoder on log expression with a condition embedding."""

    def __init__(self, n_genes: int, n_conditions: int, n_latent: int) -> None:
        super().__init__()
        self.encoder = nn.Linear(n_genes, n_latent)
        self.condition = nn.Embedding(n_conditions, n_latent)
        self.decoder = nn.Linear(n_latent, n_genes)

    def forward(self, x, cond):
        return self.decoder(torch.relu(self.encoder(torch.log1p(x))) + self.condition(cond))

    def loss(self, batch):
        x = batch["X"]
        cond = batch["condition"].long().squeeze(-1)
        pred = self.forward(x, cond)
        mse = ((pred - torch.log1p(x)) ** 2).mean()
        return LossOutput(loss=mse, metrics={"mse": mse}, n_obs=x.shape[0])


class ToyModel(BaseModel):
    """Reconstructs log1p(counts) from counts and a condition."""

    @classmethod
    def setup_anndata(cls, adata: AnnData, *, condition_key: str, layer: str | None = None) -> None:
        cls._setup(adata, layer=layer, scale="counts", categorical={"condition": condition_key})

    def __init__(self, adata: AnnData, *, n_latent: int = 8) -> None:
        super().__init__(adata, n_latent=n_latent)
        self.module = self._build_module()

    def _build_module(self):
        return ToyModule(self.n_vars, len(self.vocab_["condition"]), self.init_params_["n_latent"])

    def get_reconstruction(self, adata: AnnData | None = None) -> np.ndarray:
        prepared = self._prepare(adata)
        return self._module_outputs(
            prepared, lambda b: self.module(b["X"], b["condition"].long().squeeze(-1))
        )

    def predict(self, adata: AnnData | None = None, *, key_added: str = "toy") -> None:
        adata = self.adata if adata is None else adata
        values = self._to_query_genes(self.get_reconstruction(adata), adata)
        adata.layers[key_added] = values
        self._record(adata, key_added, {})


def toy_data(n_cells: int = 200, n_genes: int = 40) -> AnnData:
    adata = sp.datasets.synthetic_perturbation(
        n_cells=n_cells, n_genes=n_genes, kind="counts", n_perturbations=3, n_combinations=1
    )
    return adata
