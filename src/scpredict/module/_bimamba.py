"""Torch network of the BiMamba (and Transformer) perturbation predictor (seed 001).

The transcriptome is one sequence: a ``[COND]`` token followed by the ``G`` genes in genomic order. A gene token
is its learnable identity embedding, its genomic position (chromosome embedding plus Fourier features of the
normalised locus through an MLP) and its pathway features (from :class:`PathwayAutoencoder` on control cells),
concatenated and projected to ``d_model``. The condition vector enters twice: as the ``[COND]`` token and as a
FiLM modulation of every gene token, since a single token fades over thousands of scan steps and the reverse scan
meets it last. A stack of :class:`~scpredict.nn.BiMambaBlock` (or Transformer encoder layers, the O(L²)
reference) mixes the sequence; a per-gene head reads each gene's output.

The condition vector = a compositional part built from the targets + a learned embedding of the label +
covariate embeddings. Each target is a learned target embedding (when it was a target in training) plus an MLP
of the target gene's identity and pathway features (when it is a gene of the model). With
``composition="additive"`` (default) each target passes through an MLP on its own and a combination is the
**sum** of its targets' vectors, so an unseen combination ``A+B`` starts exactly at ``v(A) + v(B)`` in condition
space, which the (linear) FiLM modulation carries to every gene token as the sum of the single modulations —
the compositional prior of GEARS (Roohani et al., Nat. Biotechnol. 2024), there on a gene graph, here on the
condition vector; a single's own label adds nothing beyond its target (its target embedding is already
learned), and a seen combination adds a learned interaction embedding, dropped at random in training so that
the sum alone also explains combinations. With ``composition="pooled"`` the targets are summed first and the sum
passes through the MLP (not additive), and every seen label has a learned embedding, dropped at random. Unseen
combinations of seen targets, and unseen targets that are genes of the model, are predicted from the
compositional part.

Only torch here (no anndata): the user-facing class is :class:`scpredict.models.BiMambaPredictor`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import BiMambaBlock, FourierFeatures, nb_nll
from ..train import LossOutput

__all__ = ["BiMambaModule"]


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


def r2_score(pred: torch.Tensor, true: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``1 - SS_res / SS_tot`` over all entries, ``SS_tot`` around a fixed per-gene ``reference`` (the training
    mean), so that batches holding few conditions still give a comparable value."""
    ss_res = torch.sum((true - pred) ** 2)
    ss_tot = torch.sum((true - reference) ** 2).clamp_min(1e-12)
    return 1.0 - ss_res / ss_tot


class BiMambaModule(nn.Module):
    """Sequence model over genes conditioned on a perturbation.

    Parameters
    ----------
    n_genes
        Number of genes ``G``.
    n_perturbations
        Number of learned perturbation embeddings (training labels, control included).
    chrom
        ``(G,)`` long: chromosome code of each gene (the last code is "unknown").
    locus
        ``(G,)`` float: position on the chromosome normalised to ``[0, 1]`` (0 for unknown).
    pathway
        ``(G, P)`` float pathway features (``P`` may be 0).
    order
        ``(G,)`` long: sequence position -> gene index (genomic order).
    pert_targets
        ``(n_perturbations, T)`` long: target ids of each training label (-1 padding; control has none).
    n_targets
        Number of learned target embeddings (targets seen in training).
    target_gene
        ``(n_targets,)`` long: gene index of each target, -1 when the target is not a gene of the model.
    covariate_sizes
        Number of values of each covariate.
    gene_mean
        ``(G,)`` initial per-gene offset (training mean of the target scale).
    gene_disp
        ``(G,)`` initial log inverse dispersion (probabilistic head).
    head
        ``"linear"`` (one value per gene, MSE) or ``"probabilistic"`` (mean_log, disp_log; NB NLL on counts).
    backbone
        ``"bimamba"`` or ``"transformer"``.
    d_model, n_layers
        Width and depth of the backbone.
    gene_identity_dim, position_dim, n_frequencies, cond_dim
        Feature sizes.
    ssm, shared_weights, d_state
        BiMamba options (see :class:`~scpredict.nn.BiMambaBlock`).
    n_heads
        Attention heads of the Transformer backbone.
    dropout_rate
        Dropout in the backbone.
    condition_dropout
        Probability of dropping the learned perturbation embedding of a condition in training.
    composition
        ``"additive"``: a combination's condition vector is the sum of its targets' vectors (plus a learned
        interaction embedding for combinations seen in training); ``"pooled"``: an MLP of the summed targets plus
        a learned embedding for every seen label.
    library_reference
        Reference library size (probabilistic head): ``exp(mean_log)`` is the expected count at this depth.
    """

    def __init__(
        self,
        n_genes: int,
        n_perturbations: int,
        *,
        chrom: torch.Tensor,
        locus: torch.Tensor,
        pathway: torch.Tensor,
        order: torch.Tensor,
        pert_targets: torch.Tensor,
        n_targets: int,
        target_gene: torch.Tensor,
        covariate_sizes: list[int],
        gene_mean: torch.Tensor,
        gene_disp: torch.Tensor | None = None,
        head: Literal["linear", "probabilistic"] = "linear",
        backbone: Literal["bimamba", "transformer"] = "bimamba",
        d_model: int = 64,
        n_layers: int = 2,
        gene_identity_dim: int = 32,
        position_dim: int = 16,
        n_frequencies: int = 16,
        cond_dim: int = 64,
        ssm: Literal["mamba1", "mamba2"] = "mamba2",
        shared_weights: bool = True,
        d_state: int = 16,
        n_heads: int = 4,
        dropout_rate: float = 0.0,
        condition_dropout: float = 0.3,
        composition: Literal["additive", "pooled"] = "additive",
        library_reference: float = 1.0,
    ) -> None:
        super().__init__()
        if composition not in ("additive", "pooled"):
            msg = f"composition must be 'additive' or 'pooled', got {composition!r}."
            raise ValueError(msg)
        self.composition = composition
        self.head_kind, self.backbone_kind = head, backbone
        self.condition_dropout = condition_dropout
        self.library_reference = float(library_reference)
        self.register_buffer("chrom", chrom.long(), persistent=False)
        self.register_buffer("locus", locus.float(), persistent=False)
        self.register_buffer("pathway", pathway.float(), persistent=False)
        self.register_buffer("order", order.long(), persistent=False)
        self.register_buffer("inverse_order", torch.argsort(order.long()), persistent=False)
        self.register_buffer("pert_targets", pert_targets.long(), persistent=False)
        self.register_buffer("target_gene", target_gene.long(), persistent=False)
        n_chrom = int(chrom.max()) + 1 if len(chrom) else 1
        p_dim = pathway.shape[1]
        # gene tokens
        self.gene_identity = nn.Embedding(n_genes, gene_identity_dim)
        nn.init.normal_(self.gene_identity.weight, std=0.1)
        self.chrom_embedding = nn.Embedding(n_chrom, position_dim)
        self.locus_fourier = FourierFeatures(n_frequencies, max_frequency=512.0)
        self.locus_mlp = _mlp(2 * n_frequencies, position_dim, position_dim)
        self.token_proj = nn.Linear(gene_identity_dim + position_dim + p_dim, d_model)
        # condition encoder
        self.perturbation_embedding = nn.Embedding(n_perturbations, cond_dim)
        self.target_embedding = nn.Embedding(max(n_targets, 1), cond_dim)
        self.target_from_gene = _mlp(gene_identity_dim + p_dim, cond_dim, cond_dim)
        self.combine = _mlp(cond_dim, cond_dim, cond_dim)
        self.covariate_embeddings = nn.ModuleList(nn.Embedding(n, cond_dim) for n in covariate_sizes)
        for emb in [self.perturbation_embedding, self.target_embedding, *self.covariate_embeddings]:
            nn.init.normal_(emb.weight, std=0.3)
        self.cond_token = nn.Linear(cond_dim, d_model)
        self.film = nn.Linear(cond_dim, 2 * d_model)
        # the modulation must differ between conditions from the first step: with small embeddings (std 0.1) and
        # a small FiLM weight (std 0.02) the condition signal is the product of two small factors, a saddle that
        # kept the first ~6 epochs flat on Norman 2019; embeddings of std 0.3 with the default (Kaiming-uniform)
        # FiLM weight give each condition a modulation of ~0.2 per channel at initialisation (on Norman the
        # validation R² then leaves zero after 2-5 epochs, depending on the seed)
        nn.init.zeros_(self.film.bias)
        # backbone
        if backbone == "bimamba":
            kw = {"d_state": d_state}
            if ssm == "mamba2":
                kw.update(headdim=16 if (2 * d_model) % 16 == 0 else 2 * d_model, chunk_size=32)
            self.layers = nn.ModuleList(
                BiMambaBlock(d_model, ssm=ssm, shared_weights=shared_weights, dropout_rate=dropout_rate, **kw)
                for _ in range(n_layers)
            )
        elif backbone == "transformer":
            self.layers = nn.ModuleList(
                nn.TransformerEncoderLayer(
                    d_model, n_heads, 4 * d_model, dropout=dropout_rate, batch_first=True, norm_first=True
                )
                for _ in range(n_layers)
            )
        else:
            msg = f"backbone must be 'bimamba' or 'transformer', got {backbone!r}."
            raise ValueError(msg)
        self.norm_f = nn.RMSNorm(d_model)
        n_out = 1 if head == "linear" else 2
        self.head = nn.Linear(d_model, n_out)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.gene_offset = nn.Parameter(gene_mean.float().clone())
        self.register_buffer("gene_reference", gene_mean.float().clone(), persistent=False)
        if head == "probabilistic":
            init = gene_disp if gene_disp is not None else torch.zeros(n_genes)
            self.gene_disp = nn.Parameter(init.float().clone())

    # ------------------------------------------------------------------ encoders
    def gene_tokens(self) -> torch.Tensor:
        """``(G, d_model)`` gene tokens in gene-index order (condition independent)."""
        pos = self.chrom_embedding(self.chrom) + self.locus_mlp(self.locus_fourier(self.locus))
        feats = torch.cat([self.gene_identity.weight, pos, self.pathway], dim=-1)
        return self.token_proj(feats)

    def condition_vector(
        self, perturbation: torch.Tensor, targets: torch.Tensor, covariates: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Condition embeddings.

        Parameters
        ----------
        perturbation
            ``(C,)`` learned-embedding index, -1 for a label not seen in training.
        targets
            ``(C, T)`` target ids (-1 padding); ids ``>= n_targets`` are encoded as ``-(2 + gene index)`` for
            unseen targets that are genes of the model.
        covariates
            ``(C, n_covariates)`` covariate codes.

        Returns
        -------
        torch.Tensor
            ``(C, cond_dim)``.
        """
        seen = perturbation >= 0
        learned = self.perturbation_embedding(perturbation.clamp_min(0)) * seen[:, None]
        is_learned = targets >= 0
        is_gene_only = targets <= -2
        tid = targets.clamp_min(0)
        gene = torch.where(is_learned, self.target_gene[tid], -2 - targets)
        gene = torch.where(is_learned | is_gene_only, gene, torch.full_like(gene, -1))
        has_gene = gene >= 0
        gidx = gene.clamp_min(0)
        from_gene = self.target_from_gene(torch.cat([self.gene_identity(gidx), self.pathway[gidx]], dim=-1))
        per_target = self.target_embedding(tid) * is_learned[..., None] + from_gene * has_gene[..., None]
        valid = is_learned | is_gene_only
        droppable = torch.ones_like(seen)
        if self.composition == "additive":
            comp = (self.combine(per_target) * valid[..., None]).sum(1)
            # a single's label is its target: its learned target embedding already is its own vector; the label
            # embedding is kept for control (no targets) and as the interaction of a seen combination
            n_valid = valid.sum(1)
            learned = learned * (n_valid != 1)[:, None]
            droppable = n_valid >= 2
        else:
            comp = self.combine(per_target.sum(1)) * valid.any(1, keepdim=True)
        if self.training and self.condition_dropout > 0:
            drop = (torch.rand(len(perturbation), device=learned.device) < self.condition_dropout) & droppable
            learned = learned * (~drop)[:, None]
        cond = learned + comp
        if covariates is not None:
            for i, emb in enumerate(self.covariate_embeddings):
                cond = cond + emb(covariates[:, i])
        return cond

    def forward(
        self, perturbation: torch.Tensor, targets: torch.Tensor, covariates: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-gene outputs of each condition.

        Parameters
        ----------
        perturbation, targets, covariates
            See :meth:`condition_vector`.

        Returns
        -------
        dict
            ``"mean"``: ``(C, G)`` (log expression for the linear head, ``mean_log`` for the probabilistic one);
            ``"disp_log"``: ``(C, G)`` for the probabilistic head.
        """
        cond = self.condition_vector(perturbation, targets, covariates)
        tokens = self.gene_tokens()[self.order]  # genomic order
        gamma, beta = self.film(cond).chunk(2, dim=-1)
        h = tokens.unsqueeze(0) * (1 + gamma.unsqueeze(1)) + beta.unsqueeze(1)
        seq = torch.cat([self.cond_token(cond).unsqueeze(1), h], dim=1)
        for layer in self.layers:
            seq = layer(seq)
        out = self.head(self.norm_f(seq[:, 1:]))[:, self.inverse_order]  # back to gene-index order
        result = {"mean": self.gene_offset + out[..., 0]}
        if self.head_kind == "probabilistic":
            result["disp_log"] = self.gene_disp + out[..., 1]
        return result

    # ------------------------------------------------------------------ training
    def _conditions_of_batch(self, batch: dict[str, torch.Tensor]):
        pert = batch["perturbation"].long().reshape(-1)
        cov_keys = sorted(k for k in batch if k.startswith("cov_"))
        keys = pert[:, None]
        if cov_keys:
            keys = torch.cat([keys] + [batch[k].long().reshape(-1, 1) for k in cov_keys], dim=1)
        uniq, inverse = torch.unique(keys, dim=0, return_inverse=True)
        covs = uniq[:, 1:] if cov_keys else None
        return uniq[:, 0], self.pert_targets[uniq[:, 0]], covs, inverse

    def loss(self, batch: dict[str, torch.Tensor], *, per_cell: bool = False) -> LossOutput:
        """Loss of a batch of cells; the backbone runs once per unique condition of the batch.

        Parameters
        ----------
        batch
            ``"X"`` (cells, G), ``"perturbation"`` (cells, 1) codes, ``"cov_<key>"`` codes.
        per_cell
            Run the backbone once per cell instead (the slow path, for timing comparisons).

        Returns
        -------
        LossOutput
            ``loss`` (MSE or NB NLL) and metrics ``r2`` (and ``mse`` / ``nll``).
        """
        x = batch["X"]
        pert, targets, covs, inverse = self._conditions_of_batch(batch)
        if per_cell:
            pert, targets = pert[inverse], targets[inverse]
            covs = None if covs is None else covs[inverse]
            inverse = torch.arange(len(x), device=x.device)
        out = self(pert, targets, covs)
        mean = out["mean"][inverse]
        if self.head_kind == "linear":
            mse = F.mse_loss(mean, x)
            return LossOutput(
                loss=mse,
                metrics={"mse": mse.detach(), "r2": r2_score(mean, x, self.gene_reference).detach()},
                n_obs=len(x),
            )
        lib = x.sum(1).clamp_min(1.0) / self.library_reference
        nll = nb_nll(x, mean, out["disp_log"][inverse], library_size=lib)
        norm = torch.log1p(x / lib[:, None])
        r2 = r2_score(torch.log1p(torch.exp(mean)), norm, torch.log1p(torch.exp(self.gene_reference)))
        return LossOutput(loss=nll, metrics={"nll": nll.detach(), "r2": r2.detach()}, n_obs=len(x))
