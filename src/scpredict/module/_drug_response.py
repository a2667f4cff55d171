"""Torch network of :class:`scpredict.models.DrugResponseTransformer` (no anndata here).

Sequence ``[CLS] [DRUG] [CELL] g_1 ... g_T``: each gene token is a gene (or a fixed group of genes when there
are more genes than ``max_gene_tokens``) embedding plus a projection of its values; a Transformer encoder
mixes them and the ``[CLS]`` output goes through an MLP to ΔExpression. Two modes share the encoder:

- *forward*: the gene values are the cell line's control expression, ``[DRUG]`` is the drug token
  (fingerprint MLP + dose); output = predicted Δ;
- *response encoding*: the gene values are an observed Δ, ``[DRUG]`` is a learned "unknown drug" token; the
  ``[CLS]`` output is projected into the space of the drug embeddings for retrieval.

The loss is MSE (+ cosine) on Δ and a symmetric InfoNCE (Oord et al. 2018; CLIP, Radford et al. 2021)
between response and drug embeddings of the batch, its weight given by the training plan (warm-up).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..train import LossOutput

__all__ = ["DrugResponseModule"]


def _mlp(n_in: int, n_hidden: int, n_out: int, *, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, n_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(n_hidden, n_out)
    )


class _GeneTokens(nn.Module):
    """Values of G genes -> T tokens (genes split into T contiguous groups of ``ceil(G / T)``)."""

    def __init__(self, n_genes: int, n_tokens: int, d_model: int) -> None:
        super().__init__()
        self.n_genes, self.n_tokens = n_genes, n_tokens
        self.group = math.ceil(n_genes / n_tokens)
        self.pad = self.group * n_tokens - n_genes
        self.identity = nn.Parameter(torch.randn(n_tokens, d_model) * 0.02)
        bound = 1.0 / math.sqrt(self.group)
        self.weight = nn.Parameter(torch.empty(2, n_tokens, self.group, d_model).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(2, n_tokens, d_model))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, values: torch.Tensor, mode: int) -> torch.Tensor:
        if self.pad:
            values = F.pad(values, (0, self.pad))
        v = values.view(values.shape[0], self.n_tokens, self.group)
        proj = torch.einsum("btg,tgd->btd", v, self.weight[mode]) + self.bias[mode]
        return self.identity + self.norm(proj)


class DrugResponseModule(nn.Module):
    """Transformer over ``[CLS] [DRUG] [CELL] g_1 … g_T`` predicting ΔExpression; drug tokens from fingerprints.

    Parameters
    ----------
    n_genes
        Genes predicted.
    n_drug_features
        Length of the drug feature vector (e.g. a Morgan fingerprint).
    n_cell_lines
        Cell lines with a learned token (one extra slot is the "unknown line" token).
    control_mean
        (n_cell_lines, n_genes) control expression of each line (a buffer, saved with the weights).
    n_cell_features
        When > 0, the cell token comes from a per-sample feature vector (e.g. an ``obsm`` embedding) through a
        linear layer instead of the learned table.
    d_model, n_heads, n_layers, n_hidden, dropout_rate
        Transformer width, heads, depth, MLP width, dropout.
    max_gene_tokens
        At most this many gene tokens (genes are grouped beyond it; the cost of attention is quadratic).
    n_latent
        Size of the shared response / drug embedding space for retrieval.
    temperature
        InfoNCE temperature.
    cosine_weight
        Weight of ``1 - cos(Δ̂, Δ)`` added to the MSE.
    """

    def __init__(
        self,
        n_genes: int,
        n_drug_features: int,
        n_cell_lines: int,
        *,
        control_mean: torch.Tensor,
        n_cell_features: int = 0,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        n_hidden: int = 256,
        dropout_rate: float = 0.1,
        max_gene_tokens: int = 128,
        n_latent: int = 64,
        temperature: float = 0.1,
        cosine_weight: float = 0.5,
    ) -> None:
        super().__init__()
        self.n_genes = n_genes
        self.temperature = temperature
        self.cosine_weight = cosine_weight
        self.register_buffer(
            "control_mean", torch.as_tensor(control_mean, dtype=torch.float32).detach().clone()
        )
        self.cls = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        self.no_drug = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        self.type_embedding = nn.Parameter(torch.randn(3, d_model) * 0.02)  # cls / drug / cell slots
        self.drug_mlp = _mlp(n_drug_features, n_hidden, d_model, dropout=dropout_rate)
        self.dose_proj = nn.Linear(2, d_model)  # (log10 dose, has dose)
        if n_cell_features > 0:
            self.cell_proj: nn.Module = nn.Linear(n_cell_features, d_model)
        else:
            self.cell_proj = nn.Embedding(n_cell_lines + 1, d_model)
        self.n_cell_features = n_cell_features
        self.genes = _GeneTokens(n_genes, min(n_genes, max_gene_tokens), d_model)
        layer = nn.TransformerEncoderLayer(
            d_model,
            n_heads,
            dim_feedforward=2 * d_model,
            dropout=dropout_rate,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(d_model)
        self.head = _mlp(d_model, n_hidden, n_genes, dropout=dropout_rate)
        self.response_proj = _mlp(d_model, n_hidden, n_latent, dropout=dropout_rate)
        self.drug_proj = _mlp(n_drug_features, n_hidden, n_latent, dropout=dropout_rate)

    # ----------------------------------------------------------------- pieces
    def cell_token(self, cell: torch.Tensor) -> torch.Tensor:
        """(B,) line codes or (B, n_cell_features) -> (B, d_model)."""
        if self.n_cell_features > 0:
            return self.cell_proj(cell.float())
        return self.cell_proj(cell.long())

    def control_values(self, line: torch.Tensor) -> torch.Tensor:
        """Control expression of each sample's line; an unknown line (code = n_lines) gets the mean of lines."""
        table = torch.cat([self.control_mean, self.control_mean.mean(0, keepdim=True)])
        return table[line.long().clamp(max=table.shape[0] - 1)]

    def drug_token(self, drug_features: torch.Tensor, dose: torch.Tensor) -> torch.Tensor:
        dose = dose.float().reshape(-1)
        has = torch.isfinite(dose) & (dose > 0)
        log_dose = torch.where(
            has, torch.log10(torch.where(has, dose, torch.ones_like(dose))), torch.zeros_like(dose)
        )
        d = torch.stack([log_dose, has.float()], dim=-1)
        return self.drug_mlp(drug_features.float()) + self.dose_proj(d)

    def _encode(
        self, drug_tok: torch.Tensor, cell_tok: torch.Tensor, values: torch.Tensor, *, mode: int
    ) -> torch.Tensor:
        b = values.shape[0]
        prefix = (
            torch.stack([self.cls.expand(b, 1, -1)[:, 0], drug_tok, cell_tok], dim=1) + self.type_embedding
        )
        tokens = torch.cat([prefix, self.genes(values, mode)], dim=1)
        return self.out_norm(self.encoder(tokens)[:, 0])

    # ----------------------------------------------------------------- public
    def predict_delta(
        self, drug_features: torch.Tensor, dose: torch.Tensor, *, line: torch.Tensor, cell: torch.Tensor
    ) -> torch.Tensor:
        """Predicted Δ (B, n_genes) for drugs (features, dose) in lines (codes ``line``; cell token ``cell``)."""
        values = self.control_values(line)
        h = self._encode(self.drug_token(drug_features, dose), self.cell_token(cell), values, mode=0)
        return self.head(h)

    def encode_response(self, delta: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Unit-norm embedding (B, n_latent) of observed Δ profiles in their cell line."""
        b = delta.shape[0]
        h = self._encode(self.no_drug.expand(b, 1, -1)[:, 0], self.cell_token(cell), delta.float(), mode=1)
        return F.normalize(self.response_proj(h), dim=-1)

    def embed_drug(self, drug_features: torch.Tensor) -> torch.Tensor:
        """Unit-norm embedding (n, n_latent) of drugs from their features (dose-free)."""
        return F.normalize(self.drug_proj(drug_features.float()), dim=-1)

    def info_nce(self, z_response: torch.Tensor, z_drug: torch.Tensor, drug_id: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE; rows sharing a drug are all positives of that drug."""
        uniq, inv = torch.unique(drug_id, return_inverse=True)
        if len(uniq) < 2:
            return z_response.new_zeros(())
        first = torch.zeros(len(uniq), dtype=torch.long, device=drug_id.device)
        first.scatter_(0, inv, torch.arange(len(drug_id), device=drug_id.device))
        logits = z_response @ z_drug[first].T / self.temperature  # (B, U)
        r2d = F.cross_entropy(logits, inv)
        pos = F.one_hot(inv, len(uniq)).T.float()  # (U, B)
        logp = F.log_softmax(logits.T, dim=1)
        d2r = -((logp * pos).sum(1) / pos.sum(1)).mean()
        return 0.5 * (r2d + d2r)

    def loss(self, batch: dict[str, torch.Tensor], *, rank_weight: float = 0.0) -> LossOutput:
        x = batch["X"].float()
        line = batch["cell_line"].long().squeeze(-1)
        cell = batch["cell_features"] if self.n_cell_features > 0 else line
        drug_id = batch["drug"].long().squeeze(-1)
        feats = batch["drug_features"]
        dose = batch["dose"].squeeze(-1)
        delta = x - self.control_values(line)
        pred = self.predict_delta(feats, dose, line=line, cell=cell)
        mse = F.mse_loss(pred, delta)
        cos = (
            1.0
            - F.cosine_similarity(
                pred - pred.mean(1, keepdim=True), delta - delta.mean(1, keepdim=True)
            ).mean()
        )
        loss = mse + self.cosine_weight * cos
        metrics = {"mse": mse.detach(), "pearson": 1.0 - cos.detach()}
        if rank_weight > 0:
            nce = self.info_nce(self.encode_response(delta, cell), self.embed_drug(feats), drug_id)
            loss = loss + rank_weight * nce
            metrics["info_nce"] = nce.detach()
        metrics["rank_weight"] = float(rank_weight)
        return LossOutput(loss=loss, metrics=metrics, n_obs=x.shape[0])
