"""Torch network of the context-conditioned cycle autoencoder (:class:`scpredict.models.ContextCycleAE`).

The architecture follows the seed document "Context-Conditioned Cycle Autoencoder for scRNA-seq":

* a **base head**: one tied-weight, bias-free linear autoencoder whose single weight matrix ``W`` is kept
  non-negative (projected after every optimiser step), ``h = x Wᵀ``, ``x̂_base = h W``; it sees every cell;
* per metadata **field** (assay, cell type, sex, ...): a field-shared encoder ``G → d``, one small FFN per
  category ``d → d`` applied only to the cells of that category (cells are grouped by category, each group goes
  through its FFN, the batch is reassembled), and a field-shared (untied) decoder ``d → G`` whose output is
  scaled by a constant (``head_scale``, 0.0159 by default);
* the output is additive: ``x̂ = x̂_base + Σ_f x̂_f``, so the L2 norm of each ``x̂_f`` is that field's
  contribution;
* a metadata **classifier** on expression (one softmax head per field) that supplies the target-consistency
  signal during cycle training (it is *not* a GAN discriminator: it is trained only on real cells);
* an optional mean-matching loss (not in the seed): the mean of the cells generated for a combination of
  contexts against the mean of real cells of that combination, which calibrates the size of each head's change.
* an optional ridge penalty on each head's change (not in the seed, 0 by default), which shrinks context
  shifts learned from few groups (:meth:`ContextCycleAEModule.change_loss`).

Cycle training in the spirit of StarGAN / CycleGAN (Choi et al., CVPR 2018; Zhu et al., ICCV 2017) applied to
expression, like the counterfactual decoders of CPA (Lotfollahi et al., Mol Syst Biol 2023) and biolord
(Piran et al., Nat Biotechnol 2024).  This module never imports anndata.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ContextCycleAEModule", "ContextClassifier", "CycleLosses", "DEFAULT_HEAD_SCALE"]

#: Scale of the metadata decoder logits found by the seed's exploratory runs.
DEFAULT_HEAD_SCALE = 0.0159


class CycleLosses(NamedTuple):
    """Generator losses of one cycle step (each a scalar tensor)."""

    total: torch.Tensor
    recon: torch.Tensor
    cycle: torch.Tensor
    integration: torch.Tensor
    target: torch.Tensor
    match: torch.Tensor
    change: torch.Tensor


class ContextFFNPool(nn.Module):
    """One small feed-forward network per category of a field, applied only to that category's cells.

    Parameters
    ----------
    n_categories
        Number of categories of the field.
    n_latent
        Input and output width.
    n_hidden
        Hidden width of each FFN.
    """

    def __init__(self, n_categories: int, n_latent: int, *, n_hidden: int) -> None:
        super().__init__()
        self.ffns = nn.ModuleList(
            nn.Sequential(nn.Linear(n_latent, n_hidden), nn.GELU(), nn.Linear(n_hidden, n_latent))
            for _ in range(n_categories)
        )

    def forward(self, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Group cells by category, run each group through its FFN, reassemble in the original order."""
        order = torch.argsort(codes, stable=True)
        sorted_codes = codes[order]
        present, counts = torch.unique_consecutive(sorted_codes, return_counts=True)
        pieces = torch.split(z[order], counts.tolist())
        outs = [self.ffns[int(k)](piece) for k, piece in zip(present.tolist(), pieces, strict=True)]
        out_sorted = torch.cat(outs, dim=0) if outs else z[:0]
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return out_sorted[inverse]


class ContextClassifier(nn.Module):
    """Metadata classifier on expression: a shared MLP trunk and one logit head per field.

    Parameters
    ----------
    n_input
        Number of genes.
    n_categories
        Number of categories of each field.
    n_hidden
        Width of the trunk.
    dropout_rate
        Dropout after the trunk's hidden layer.
    """

    def __init__(
        self, n_input: int, n_categories: Sequence[int], *, n_hidden: int = 128, dropout_rate: float = 0.1
    ) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(n_input, n_hidden),
            nn.LayerNorm(n_hidden),
            nn.ReLU(),
            nn.Dropout(dropout_rate),
            nn.Linear(n_hidden, n_hidden),
            nn.ReLU(),
        )
        self.heads = nn.ModuleList(nn.Linear(n_hidden, k) for k in n_categories)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits per field, each ``(n, n_categories[f])``."""
        h = self.trunk(x)
        return [head(h) for head in self.heads]

    def loss(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Mean over fields of the cross-entropy of ``codes[:, f]``."""
        logits = self(x)
        return torch.stack([F.cross_entropy(lg, codes[:, f]) for f, lg in enumerate(logits)]).mean()


class ContextCycleAEModule(nn.Module):
    """Base tied autoencoder + per-field context heads + metadata classifier.

    Parameters
    ----------
    n_input
        Number of genes ``G``.
    n_categories
        Number of categories of each metadata field, in field order.
    n_latent_base
        Width of the base autoencoder's hidden layer.
    n_latent
        Width of each field head's latent space.
    n_hidden_ffn
        Hidden width of each context FFN.
    head_scale
        Constant that multiplies every field decoder's output (0.0159 in the seed).
    n_hidden_classifier
        Width of the classifier trunk.
    dropout_rate
        Dropout in the classifier.
    integrate_base
        Include the base head's hidden state in the integration (hidden-state consistency) loss. Off by default:
        the base is context-free by construction, and pulling its tied non-negative code of a cell and of its
        counterfactual together shrinks the one weight matrix towards zero.
    """

    def __init__(
        self,
        n_input: int,
        n_categories: Sequence[int],
        *,
        n_latent_base: int = 64,
        n_latent: int = 32,
        n_hidden_ffn: int = 64,
        head_scale: float = DEFAULT_HEAD_SCALE,
        n_hidden_classifier: int = 128,
        dropout_rate: float = 0.1,
        integrate_base: bool = False,
    ) -> None:
        super().__init__()
        if len(n_categories) == 0:
            msg = "ContextCycleAEModule needs at least one metadata field."
            raise ValueError(msg)
        self.n_input = int(n_input)
        self.n_categories = [int(k) for k in n_categories]
        self.head_scale = float(head_scale)
        self.integrate_base = bool(integrate_base)
        # base head: one non-negative matrix used as encoder (x Wᵀ) and decoder (h W)
        # The one tied matrix is W = base_gain * base_weight. The stored tensor has entries of order one, so
        # that an optimiser step changes it by a similar fraction whatever the number of genes (W itself has
        # entries ~ 1/sqrt(k G)); uniform init makes WᵀW a damped projection (top eigenvalue ≈ 0.25).
        self.base_gain = 1.0 / float(n_latent_base * n_input) ** 0.5
        self.base_weight = nn.Parameter(torch.rand(n_latent_base, n_input))
        self.encoders = nn.ModuleList(nn.Linear(n_input, n_latent) for _ in self.n_categories)
        self.ffn_pools = nn.ModuleList(
            ContextFFNPool(k, n_latent, n_hidden=n_hidden_ffn) for k in self.n_categories
        )
        self.decoders = nn.ModuleList(nn.Linear(n_latent, n_input) for _ in self.n_categories)
        self.classifier = ContextClassifier(
            n_input, self.n_categories, n_hidden=n_hidden_classifier, dropout_rate=dropout_rate
        )

    @property
    def n_fields(self) -> int:
        return len(self.n_categories)

    def generator_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the classifier's."""
        cls = {id(p) for p in self.classifier.parameters()}
        return [p for p in self.parameters() if id(p) not in cls]

    @property
    def base_matrix(self) -> torch.Tensor:
        """The tied, non-negative base matrix ``W`` (``n_latent_base × n_input``): encoder ``x Wᵀ``, decoder ``h W``."""
        return self.base_gain * self.base_weight

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp the base weight to be non-negative (call after every optimiser step)."""
        self.base_weight.clamp_(min=0.0)

    # -- forward pieces ---------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Hidden states: ``{"base": (n, k), "fields": [(n, d)] * n_fields}``."""
        return {"base": x @ self.base_matrix.T, "fields": [enc(x) for enc in self.encoders]}

    def decode(self, hidden: dict, codes: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Decode hidden states under the contexts ``codes`` (n, n_fields).

        Returns ``{"x_hat": (n, G), "base": (n, G), "fields": [(n, G)] * n_fields}``: the output and each
        head's additive contribution (field contributions already scaled by ``head_scale``).
        """
        self._check_codes(codes)
        base = hidden["base"] @ self.base_matrix
        parts = []
        for f, z in enumerate(hidden["fields"]):
            u = self.ffn_pools[f](z, codes[:, f])
            parts.append(self.head_scale * self.decoders[f](u))
        x_hat = base + torch.stack(parts, 0).sum(0)
        return {"x_hat": x_hat, "base": base, "fields": parts}

    def forward(self, x: torch.Tensor, codes: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Encode ``x`` and decode it under ``codes`` (its own contexts = reconstruction, others = counterfactual)."""
        return self.decode(self.encode(x), codes)

    def _check_codes(self, codes: torch.Tensor) -> None:
        if codes.dim() != 2 or codes.shape[1] != self.n_fields:
            msg = f"codes must have shape (n, {self.n_fields}); got {tuple(codes.shape)}."
            raise ValueError(msg)

    def sample_targets(
        self, codes: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per cell and field a category drawn uniformly at random (the seed's target contexts)."""
        cols = []
        for k in self.n_categories:
            r = torch.randint(0, k, (codes.shape[0],), generator=generator, device="cpu")
            cols.append(r.to(codes.device))
        return torch.stack(cols, 1)

    # -- losses -----------------------------------------------------------------------------------------
    def cycle_losses(
        self,
        x: torch.Tensor,
        source: torch.Tensor,
        target: torch.Tensor,
        *,
        weights: dict[str, float] | None = None,
        match_means: torch.Tensor | None = None,
        match_rows: torch.Tensor | None = None,
    ) -> tuple[CycleLosses, dict]:
        """Generator losses of one cycle step.

        Cycle 1 encodes ``x`` and decodes it under ``target`` (hidden states cached); the classifier's
        cross-entropy of the generated cells against ``target`` is the target-consistency loss. Cycle 2 encodes
        the generated cells and decodes them under ``source``. Reconstruction = MSE of the source-context
        reconstruction; cycle = MSE of the cycle-2 output against ``x``; integration = MSE between the hidden
        states of the two cycles. Match (optional) = the squared distance between the mean of the generated cells
        sent to a context combination and the mean of real cells of that combination (``match_means``), averaged
        over genes and weighted by the number of generated cells: it calibrates the size of the change a head
        makes (the classifier alone is satisfied by any change that crosses its decision boundary).

        Parameters
        ----------
        x, source, target
            Expression ``(n, G)``, own and target codes ``(n, n_fields)``.
        weights
            Weights of ``recon``, ``cycle``, ``integration``, ``target``, ``match`` (default 1 each) and
            ``change`` (default 0, see :meth:`change_loss`).
        match_means
            ``(R, G)`` mean expression of real cells per context combination.
        match_rows
            ``(n,)`` row of ``match_means`` of each cell's target combination, ``-1`` where none is known.

        Returns
        -------
        The losses and the cycle-1 output dict (for logging contributions).
        """
        w = {"recon": 1.0, "cycle": 1.0, "integration": 1.0, "target": 1.0, "match": 1.0, "change": 0.0}
        if weights:
            w.update(weights)
        h1 = self.encode(x)
        rec = self.decode(h1, source)
        gen = self.decode(h1, target)
        x_t = gen["x_hat"]
        h2 = self.encode(x_t)
        back = self.decode(h2, source)
        recon = F.mse_loss(rec["x_hat"], x)
        cycle = F.mse_loss(back["x_hat"], x)
        pairs = list(zip(h1["fields"], h2["fields"], strict=True))
        if self.integrate_base:
            pairs.append((h1["base"], h2["base"]))
        integration = torch.stack([F.mse_loss(a, b) for a, b in pairs]).mean()
        logits = self.classifier(x_t)
        target_ce = torch.stack([F.cross_entropy(lg, target[:, f]) for f, lg in enumerate(logits)]).mean()
        match = self.match_loss(x_t, match_means, match_rows)
        change = (
            self.change_loss(rec["fields"], gen["fields"], source=source, target=target)
            if w["change"]
            else x.new_zeros(())
        )
        total = (
            w["recon"] * recon
            + w["cycle"] * cycle
            + w["integration"] * integration
            + w["target"] * target_ce
            + w["match"] * match
            + w["change"] * change
        )
        return CycleLosses(total, recon, cycle, integration, target_ce, match, change), rec

    def change_loss(
        self,
        own_parts: Sequence[torch.Tensor],
        target_parts: Sequence[torch.Tensor],
        *,
        source: torch.Tensor,
        target: torch.Tensor,
    ) -> torch.Tensor:
        """Ridge penalty on the change each field head makes when a cell is moved to another category.

        The mean over fields of the mean squared ``x̂_f(target) − x̂_f(own)`` of the cells whose category of
        field ``f`` changes (genes and cells averaged). Against the ``match`` loss it shrinks each context
        change towards zero, as a ridge / James–Stein estimate shrinks a mean estimated from few groups (e.g. a
        protocol shift learned from two cell lines): it trades a little bias for less variance on contexts
        never seen together in training.
        """
        terms = []
        for f in range(self.n_fields):
            moved = source[:, f] != target[:, f]
            if bool(moved.any()):
                terms.append(((target_parts[f] - own_parts[f])[moved] ** 2).mean())
        return torch.stack(terms).mean() if terms else target_parts[0].new_zeros(())

    @staticmethod
    def match_loss(x_t: torch.Tensor, means: torch.Tensor | None, rows: torch.Tensor | None) -> torch.Tensor:
        """Mean over genes of ``(mean of generated cells per combination − real mean)²``, cell-weighted."""
        if means is None or rows is None:
            return x_t.new_zeros(())
        ok = rows >= 0
        if not bool(ok.any()):
            return x_t.new_zeros(())
        r = rows[ok]
        sums = x_t.new_zeros(means.shape).index_add(0, r, x_t[ok])
        counts = torch.bincount(r, minlength=means.shape[0]).to(x_t.dtype)
        seen = counts > 0
        gen_means = sums[seen] / counts[seen, None]
        per_combo = ((gen_means - means[seen]) ** 2).mean(1)
        return (per_combo * counts[seen]).sum() / counts[seen].sum()

    @staticmethod
    def contribution_norms(parts: dict) -> torch.Tensor:
        """Per-cell L2 norm of each head's contribution: ``(n, 1 + n_fields)``, base first."""
        cols = [parts["base"].norm(dim=1)] + [p.norm(dim=1) for p in parts["fields"]]
        return torch.stack(cols, 1)
