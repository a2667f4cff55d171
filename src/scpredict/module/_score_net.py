"""Torch networks of ScoreDiffusion: the conditional score (noise-prediction) network and an autoencoder.

- :class:`ScoreNet`: residual MLP predicting the noise ``eps(x_t, t, c)`` (Ho et al. 2020), with a sinusoidal
  time embedding (Vaswani et al. 2017; as in DDPM) and one learned embedding per categorical condition field.
  Each field has an extra "null" index; during training conditions are dropped (per field and jointly) so one
  network gives conditional and unconditional scores, mixed at sampling time by classifier-free guidance
  (Ho & Salimans 2022). The architecture follows the MLP denoisers of scDiffusion (Luo et al. 2024) and
  Squidiff (He et al. 2024): blocks ``h + W2 act(W1 norm(h) * (1 + scale) + shift)``, FiLM-conditioned.
- :class:`ExpressionAutoencoder`: MLP autoencoder on log-normalised expression, trained first when the
  diffusion runs in a latent space (scDiffusion's design); the latent is standardised before diffusion.
- :class:`ScoreDiffusionModule`: the two together with a :class:`~scpredict.nn._diffusion.NoiseSchedule`,
  the denoising loss and a guided ``eps`` function for the samplers.

This module never imports anndata.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn._diffusion import NoiseSchedule
from ..train._plan import LossOutput

__all__ = ["ExpressionAutoencoder", "ScoreDiffusionModule", "ScoreNet", "nb_log_prob", "sinusoidal_embedding"]


def sinusoidal_embedding(t: Tensor, dim: int, *, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps.

    Parameters
    ----------
    t
        ``(batch,)`` timesteps.
    dim
        Embedding size.
    max_period
        Longest period of the frequencies.

    Returns
    -------
    ``(batch, dim)`` embedding ``[cos(t w_k), sin(t w_k)]``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class _ResBlock(nn.Module):
    def __init__(self, n_hidden: int, n_emb: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(n_hidden)
        self.lin1 = nn.Linear(n_hidden, n_hidden)
        self.film = nn.Linear(n_emb, 2 * n_hidden)
        self.lin2 = nn.Linear(n_hidden, n_hidden)
        self.dropout = nn.Dropout(dropout)
        nn.init.zeros_(self.lin2.weight)  # each block starts as the identity
        nn.init.zeros_(self.lin2.bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(emb).chunk(2, dim=-1)
        z = F.silu(self.lin1(self.norm(h)))
        z = z * (1 + scale) + shift
        return h + self.lin2(self.dropout(F.silu(z)))


class ScoreNet(nn.Module):
    """Conditional noise-prediction network ``eps_theta(x_t, t, c)``.

    Parameters
    ----------
    n_input
        Dimension of the data.
    n_cats_per_field
        Number of categories of each condition field (empty for an unconditional model).
    n_hidden
        Width of the residual MLP.
    n_layers
        Number of residual blocks.
    n_emb
        Size of the time and condition embeddings.
    dropout
        Dropout inside the blocks.
    cond_dropout
        Probability of dropping the conditions in training (classifier-free guidance): each field is dropped
        independently with this probability, and all fields together with the same probability.
    """

    def __init__(
        self,
        n_input: int,
        n_cats_per_field: Sequence[int] = (),
        *,
        n_hidden: int = 512,
        n_layers: int = 4,
        n_emb: int = 128,
        dropout: float = 0.0,
        cond_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.n_input = int(n_input)
        self.n_cats_per_field = [int(n) for n in n_cats_per_field]
        self.n_emb = int(n_emb)
        self.cond_dropout = float(cond_dropout)
        self.time_mlp = nn.Sequential(nn.Linear(n_emb, n_emb), nn.SiLU(), nn.Linear(n_emb, n_emb))
        # index n (one past the last category) is the "null" (unconditional) token of each field
        self.cond_embs = nn.ModuleList([nn.Embedding(n + 1, n_emb) for n in self.n_cats_per_field])
        self.inp = nn.Linear(n_input, n_hidden)
        self.blocks = nn.ModuleList([_ResBlock(n_hidden, n_emb, dropout) for _ in range(n_layers)])
        self.out_norm = nn.LayerNorm(n_hidden)
        self.out = nn.Linear(n_hidden, n_input)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def null_condition(self) -> list[int]:
        """Index of the null (dropped) category of each field."""
        return list(self.n_cats_per_field)

    def null_like(self, cond: Tensor) -> Tensor:
        """All-null conditions shaped like ``cond``.

        Parameters
        ----------
        cond
            ``(batch, n_fields)`` condition indices.

        Returns
        -------
        ``(batch, n_fields)`` long tensor of null indices.
        """
        null = torch.tensor(self.null_condition, device=cond.device, dtype=torch.long)
        return null.expand(cond.shape[0], -1).clone()

    def drop_conditions(self, cond: Tensor) -> Tensor:
        """Randomly replace conditions by the null token (training-time condition dropout).

        Parameters
        ----------
        cond
            ``(batch, n_fields)`` condition indices.

        Returns
        -------
        Conditions with some entries set to the null index.
        """
        if self.cond_dropout <= 0 or cond.shape[1] == 0:
            return cond
        p = self.cond_dropout
        drop = torch.rand(cond.shape, device=cond.device) < p
        drop |= torch.rand(cond.shape[0], 1, device=cond.device) < p
        return torch.where(drop, self.null_like(cond), cond)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Predict the noise.

        Parameters
        ----------
        x
            ``(batch, n_input)`` noised data.
        t
            ``(batch,)`` (fractional) step indices.
        cond
            ``(batch, n_fields)`` condition indices (null index = unconditional); ``None``: all null.

        Returns
        -------
        ``(batch, n_input)`` predicted noise.
        """
        emb = self.time_mlp(sinusoidal_embedding(t, self.n_emb))
        if self.cond_embs:
            if cond is None:
                cond = self.null_like(torch.empty(x.shape[0], len(self.cond_embs), device=x.device))
            for j, layer in enumerate(self.cond_embs):
                emb = emb + layer(cond[:, j])
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h)))


def nb_log_prob(c: Tensor, mu: Tensor, theta: Tensor, *, eps: float = 1e-8) -> Tensor:
    """Log-probability of counts under a negative binomial with mean ``mu`` and inverse dispersion ``theta``
    (variance ``mu + mu^2 / theta``; the parametrisation of scVI, Lopez et al. 2018).

    Parameters
    ----------
    c
        Counts.
    mu
        Means (broadcast with ``c``).
    theta
        Inverse dispersions (broadcast with ``c``).
    eps
        Numerical floor inside the logarithms.

    Returns
    -------
    Element-wise log-probabilities.
    """
    log_theta_mu = torch.log(theta + mu + eps)
    return (
        torch.lgamma(c + theta) - torch.lgamma(theta) - torch.lgamma(c + 1)
        + theta * (torch.log(theta + eps) - log_theta_mu) + c * (torch.log(mu + eps) - log_theta_mu)
    )  # fmt: skip


class ExpressionAutoencoder(nn.Module):
    """MLP autoencoder for latent diffusion (as in scDiffusion).

    Parameters
    ----------
    n_input
        Number of genes.
    n_latent
        Latent dimension.
    n_hidden
        Width of the hidden layer(s).
    n_layers
        Hidden layers in the encoder (and in the decoder).
    dropout
        Dropout on the encoder input (a denoising autoencoder).
    likelihood
        Observation model of the decoder. ``"mse"``: the decoder outputs log-normalised expression, trained
        by mean squared error (scDiffusion); decoding gives a smooth conditional mean without per-cell
        measurement noise. ``"nb"``: a count likelihood, as in scVI (Lopez et al. 2018). The input must be
        log1p of counts times a per-cell size factor (checked), so each cell's counts ``c`` and its one-molecule
        scale ``s`` (smallest non-zero value) are recovered exactly. The decoder gives gene proportions
        ``p(z)`` (softmax) and ``c ~ NB(l p, theta_g)`` with a learned inverse dispersion per gene. The cell's
        count total ``l`` and normalised total ``T = s l`` get a bivariate log-normal whose mean depends on
        ``z`` (Cholesky factor shared). :meth:`sample` draws ``(l, T)``, the counts and ``log1p(c T / l)``, so
        generated cells carry realistic measurement noise and zeros. :meth:`decode` gives the plug-in
        ``log1p(p T)`` at the predicted median totals.
    """

    def __init__(
        self,
        n_input: int,
        n_latent: int = 64,
        *,
        n_hidden: int = 512,
        n_layers: int = 2,
        dropout: float = 0.1,
        likelihood: Literal["mse", "nb"] = "mse",
    ) -> None:
        super().__init__()
        if likelihood not in ("mse", "nb"):
            raise ValueError(f"likelihood must be 'mse' or 'nb', got {likelihood!r}.")
        self.likelihood = likelihood

        def mlp(n_in: int, n_out: int) -> nn.Sequential:
            layers: list[nn.Module] = []
            d = n_in
            for _ in range(n_layers):
                layers += [nn.Linear(d, n_hidden), nn.LayerNorm(n_hidden), nn.SiLU()]
                d = n_hidden
            layers.append(nn.Linear(d, n_out))
            return nn.Sequential(*layers)

        self.input_dropout = nn.Dropout(dropout)
        self.encoder = mlp(n_input, n_latent)
        self.decoder = mlp(n_latent, n_input)
        self.register_buffer("latent_mean", torch.zeros(n_latent))
        self.register_buffer("latent_std", torch.ones(n_latent))
        if likelihood == "nb":
            self.log_theta = nn.Parameter(torch.zeros(n_input))
            self.depth_head = nn.Sequential(nn.Linear(n_latent, 64), nn.SiLU(), nn.Linear(64, 2))
            self.depth_log_sd = nn.Parameter(torch.zeros(2))
            self.depth_offdiag = nn.Parameter(torch.zeros(1))

    @staticmethod
    def counts_from_lognorm(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Counts, count total and normalised total of log1p-normalised cells.

        Parameters
        ----------
        x
            ``(batch, n_input)`` ``log1p(c * s)`` with a per-cell scale ``s``.

        Returns
        -------
        ``(c, l, T)``: rounded counts ``(batch, n_input)``, ``l = sum c`` and ``T = sum expm1(x)`` (both
        ``(batch,)``, at least one molecule). ``s`` is the smallest non-zero ``expm1(x)`` of the cell.
        """
        e = torch.expm1(x.clamp(min=0))
        s = torch.where(x > 0, e, torch.full_like(e, float("inf"))).min(1, keepdim=True).values
        s = torch.where(torch.isfinite(s), s, torch.ones_like(s))
        c = torch.round(e / s)
        return c, c.sum(1).clamp(min=1.0), torch.maximum(e.sum(1), s.squeeze(1))

    def _chol(self) -> Tensor:
        sd = self.depth_log_sd.exp()
        return torch.stack(
            [torch.stack([sd[0], sd.new_zeros(())]), torch.stack([self.depth_offdiag[0], sd[1]])]
        )

    def _nb_params(self, z: Tensor) -> tuple[Tensor, Tensor]:
        h = z * self.latent_std + self.latent_mean
        return torch.softmax(self.decoder(h), dim=-1), self.depth_head(h)

    @torch.no_grad()
    def init_from_data(self, x: Tensor) -> None:
        """Start the ``"nb"`` output layers at the data's scale before training.

        The decoder's output bias is set to the log of each gene's share of all counts and the depth head's
        output bias to the mean ``(log l, log T)``. From zero, these intercepts (around -8 and +6 here) would
        take thousands of steps at the networks' learning rate to reach (the usual initialisation of count
        decoders at the mean profile).

        Parameters
        ----------
        x
            ``(n, n_input)`` log-normalised training cells.

        Returns
        -------
        ``None``; sets the output biases of ``decoder`` and ``depth_head``.
        """
        if self.likelihood != "nb":
            raise ValueError("init_from_data needs likelihood='nb'.")
        c, lib, tot = self.counts_from_lognorm(x)
        share = c.sum(0) / c.sum().clamp(min=1.0)
        self.decoder[-1].bias.copy_(torch.log(share + 1e-8))
        self.depth_head[-1].bias.copy_(torch.stack([lib.log().mean(), tot.log().mean()]))

    @torch.no_grad()
    def fit_observation_noise(self, x: Tensor, *, n_iter: int = 300, max_cells: int = 5000) -> None:
        """Maximum-likelihood noise parameters of the ``"nb"`` likelihood given the trained decoder.

        The gene dispersions and the depth covariance are global parameters. Trained jointly with the
        networks at the networks' learning rate, they move by about ``lr`` per step and stay near their
        initial values (``theta = 1``, unit standard deviations) long after the means have converged. Here
        they are set to their maximum-likelihood values with the decoder held fixed. The intercept and the
        covariance of the depth model are the mean and the covariance of the ``(log l, log T)`` residuals
        (closed form). ``log theta`` per gene
        is fitted by full-batch Adam on the NB log-likelihood of the counts. This is the usual two-step
        estimate: means first, then dispersions given the means, as in edgeR and DESeq2.

        Parameters
        ----------
        x
            ``(n, n_input)`` log-normalised training cells (at most ``max_cells`` are used, evenly spaced).
        n_iter
            Adam steps (learning rate 0.05) for ``log theta``.
        max_cells
            Cap on the cells used.

        Returns
        -------
        ``None``; sets ``log_theta``, ``depth_log_sd``, ``depth_offdiag`` and the depth head's output bias.
        """
        if self.likelihood != "nb":
            raise ValueError("fit_observation_noise needs likelihood='nb'.")
        if len(x) > max_cells:
            x = x[torch.linspace(0, len(x) - 1, max_cells).long()]
        was_training = self.training
        self.eval()
        c, lib, tot = self.counts_from_lognorm(x)
        h = self.encoder(x)
        mu = lib[:, None] * torch.softmax(self.decoder(h), dim=-1)
        r = torch.stack([lib.log(), tot.log()], dim=1) - self.depth_head(h)
        self.depth_head[-1].bias.add_(
            r.mean(0)
        )  # the intercept at its ML value, then the covariance around it
        r = r - r.mean(0)
        cov = (r.T @ r) / len(r) + 1e-6 * torch.eye(2)
        chol = torch.linalg.cholesky(cov)
        self.depth_log_sd.copy_(chol.diagonal().log())
        self.depth_offdiag.copy_(chol[1, 0].reshape(1))
        log_theta = self.log_theta.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([log_theta], lr=0.05)
        with torch.enable_grad():
            for _ in range(n_iter):
                opt.zero_grad()
                loss = -nb_log_prob(c, mu, log_theta.clamp(-6.0, 12.0).exp()[None, :]).mean()
                loss.backward()
                opt.step()
        self.log_theta.copy_(log_theta.detach().clamp(-6.0, 12.0))
        self.train(was_training)

    def sample(self, z: Tensor, rng) -> Tensor:
        """Draw observed cells from the likelihood (``"nb"``) given standardised latents.

        Parameters
        ----------
        z
            ``(batch, n_latent)``.
        rng
            ``numpy.random.Generator`` for the draws.

        Returns
        -------
        ``(batch, n_input)`` log-normalised expression ``log1p(c T / l)`` with ``c ~ NB(l p(z), theta)``
        and ``(log l, log T)`` drawn from their log-normal given ``z``.
        """
        import numpy as np

        if self.likelihood != "nb":
            raise ValueError("sampling observations needs likelihood='nb'.")
        p, m = self._nb_params(z)
        eps = torch.as_tensor(rng.standard_normal((len(z), 2)), dtype=z.dtype)
        ld = m + eps @ self._chol().T
        lib, tot = ld[:, 0].exp(), ld[:, 1].exp()
        mu = (lib[:, None] * p).double().numpy()
        theta = self.log_theta.exp().double().numpy()[None, :]
        counts = rng.poisson(rng.gamma(theta, np.maximum(mu, 1e-12) / theta))
        scale = (tot / lib).double().numpy()[:, None]
        return torch.as_tensor(np.log1p(counts * scale), dtype=z.dtype)

    def encode(self, x: Tensor) -> Tensor:
        """Standardised latent of ``x`` (the diffusion operates on it).

        Parameters
        ----------
        x
            ``(batch, n_input)`` expression.

        Returns
        -------
        ``(batch, n_latent)``.
        """
        return (self.encoder(x) - self.latent_mean) / self.latent_std

    def decode(self, z: Tensor) -> Tensor:
        """Expression from a standardised latent.

        Parameters
        ----------
        z
            ``(batch, n_latent)``.

        Returns
        -------
        ``(batch, n_input)`` reconstruction (``"nb"``: ``log1p(p T)``, ``T`` at its predicted median).
        """
        if self.likelihood == "nb":
            p, m = self._nb_params(z)
            return torch.log1p(p * m[:, 1:2].exp())
        return self.decoder(z * self.latent_std + self.latent_mean)

    def loss(self, x: Tensor) -> Tensor:
        """Reconstruction loss with input dropout: mean squared error (``"mse"``), or the negative
        log-likelihood of the counts and the two totals per cell, divided by the number of genes (``"nb"``).

        Parameters
        ----------
        x
            ``(batch, n_input)`` expression.

        Returns
        -------
        Scalar loss.
        """
        h = self.encoder(self.input_dropout(x))
        if self.likelihood == "mse":
            return F.mse_loss(self.decoder(h), x)
        c, lib, tot = self.counts_from_lognorm(x)
        p, m = torch.softmax(self.decoder(h), dim=-1), self.depth_head(h)
        mu = lib[:, None] * p
        nb = nb_log_prob(c, mu, self.log_theta.exp()[None, :])
        r = torch.stack([lib.log(), tot.log()], dim=1) - m
        chol = self._chol()
        r1 = r[:, 0] / chol[0, 0]
        r2 = (r[:, 1] - chol[1, 0] * r1) / chol[1, 1]
        depth_nll = 0.5 * (r1**2 + r2**2) + self.depth_log_sd.sum()
        return (depth_nll - nb.sum(1)).mean() / x.shape[1]


class ScoreDiffusionModule(nn.Module):
    """Noise schedule + score network (+ optional autoencoder) with the denoising loss and guided ``eps``.

    The diffusion runs on standardised data: ``y = (x - data_mean) / data_std`` in expression space (the
    per-gene statistics are buffers set by the model), the standardised autoencoder latent otherwise.

    Parameters
    ----------
    n_input
        Number of genes.
    n_cats_per_field
        Categories per condition field.
    cond_keys
        Batch keys of the condition fields (integer codes, ``(batch, 1)`` float columns), in field order.
    space
        ``"expression"`` or ``"latent"``.
    n_latent
        Latent size for ``space="latent"``.
    n_steps
        Diffusion steps.
    schedule
        ``"cosine"`` or ``"linear"``.
    n_hidden, n_layers, n_emb, dropout, cond_dropout
        Passed to :class:`ScoreNet`.
    ae_hidden
        Width of the autoencoder.
    ae_likelihood
        Observation model of the autoencoder (:class:`ExpressionAutoencoder` ``likelihood``).
    """

    def __init__(
        self,
        n_input: int,
        n_cats_per_field: Sequence[int] = (),
        *,
        cond_keys: Sequence[str] = (),
        space: Literal["expression", "latent"] = "expression",
        n_latent: int = 64,
        n_steps: int = 1000,
        schedule: Literal["linear", "cosine"] = "cosine",
        n_hidden: int = 512,
        n_layers: int = 4,
        n_emb: int = 128,
        dropout: float = 0.0,
        cond_dropout: float = 0.1,
        ae_hidden: int = 512,
        ae_likelihood: Literal["mse", "nb"] = "mse",
    ) -> None:
        super().__init__()
        if space not in ("expression", "latent"):
            raise ValueError(f"space must be 'expression' or 'latent', got {space!r}.")
        self.space = space
        self.n_input = int(n_input)
        self.cond_keys = list(cond_keys)
        if len(self.cond_keys) != len(n_cats_per_field):
            raise ValueError("cond_keys and n_cats_per_field must have the same length.")
        self.schedule = NoiseSchedule(n_steps, kind=schedule)
        self.autoencoder = (
            ExpressionAutoencoder(n_input, n_latent, n_hidden=ae_hidden, likelihood=ae_likelihood)
            if space == "latent"
            else None
        )
        if ae_likelihood != "mse" and space != "latent":
            raise ValueError("ae_likelihood applies to space='latent' only.")
        n_diff = n_latent if space == "latent" else n_input
        self.net = ScoreNet(
            n_diff,
            n_cats_per_field,
            n_hidden=n_hidden,
            n_layers=n_layers,
            n_emb=n_emb,
            dropout=dropout,
            cond_dropout=cond_dropout,
        )
        # per-gene standardisation (expression space) and the range of x0 in diffusion space (for clipping);
        # set from the training data by the model
        self.register_buffer("data_mean", torch.zeros(n_input))
        self.register_buffer("data_std", torch.ones(n_input))
        self.register_buffer("clip_low", torch.full((n_diff,), -10.0))
        self.register_buffer("clip_high", torch.full((n_diff,), 10.0))

    @property
    def clip_range(self) -> tuple[Tensor, Tensor]:
        """Per-dimension ``(low, high)`` bounds of the clean diffused variable."""
        return self.clip_low, self.clip_high

    def conditions(self, batch: dict[str, Tensor]) -> Tensor:
        """``(batch, n_fields)`` long condition codes from a batch dict.

        Parameters
        ----------
        batch
            Batch with one ``(batch, 1)`` column per condition key.

        Returns
        -------
        Long tensor of codes (zero columns for an unconditional model).
        """
        x = batch["X"]
        if not self.cond_keys:
            return torch.zeros(x.shape[0], 0, dtype=torch.long, device=x.device)
        return torch.cat([batch[k].reshape(-1, 1).long() for k in self.cond_keys], dim=1)

    @property
    def n_diffusion(self) -> int:
        """Dimension of the diffused variable."""
        return self.net.n_input

    # ---------------------------------------------------------------- data <-> diffusion space
    def to_diffusion(self, x: Tensor) -> Tensor:
        """Expression to the diffused variable (standardised expression or latent).

        Parameters
        ----------
        x
            ``(batch, n_input)`` log-normalised expression.

        Returns
        -------
        ``(batch, n_diffusion)``.
        """
        if self.autoencoder is not None:
            return self.autoencoder.encode(x)
        return (x - self.data_mean) / self.data_std

    def from_diffusion(self, y: Tensor) -> Tensor:
        """Diffused variable back to expression.

        Parameters
        ----------
        y
            ``(batch, n_diffusion)``.

        Returns
        -------
        ``(batch, n_input)`` expression.
        """
        if self.autoencoder is not None:
            return self.autoencoder.decode(y)
        return y * self.data_std + self.data_mean

    def sample_observation(self, y: Tensor, rng) -> Tensor:
        """Draw observed cells (with measurement noise) from the diffused variable (``ae_likelihood="nb"``).

        Parameters
        ----------
        y
            ``(batch, n_diffusion)``.
        rng
            ``numpy.random.Generator``.

        Returns
        -------
        ``(batch, n_input)`` log-normalised expression.
        """
        if self.autoencoder is None or self.autoencoder.likelihood != "nb":
            raise ValueError("observation sampling needs space='latent' with ae_likelihood='nb'.")
        return self.autoencoder.sample(y, rng)

    # ---------------------------------------------------------------- training
    def loss(
        self, batch: dict[str, Tensor], *, stage: Literal["score", "autoencoder"] = "score"
    ) -> LossOutput:
        """Training loss of one stage.

        Parameters
        ----------
        batch
            ``{"X": (batch, n_input) expression, <cond_key>: (batch, 1) codes, ...}``.
        stage
            ``"score"``: denoising score matching; ``"autoencoder"``: reconstruction (``space="latent"``).

        Returns
        -------
        :class:`~scpredict.train.LossOutput` (metric ``mse``).
        """
        x = batch["X"]
        if stage == "autoencoder":
            if self.autoencoder is None:
                raise ValueError("stage='autoencoder' needs space='latent'.")
            mse = self.autoencoder.loss(x)
            name = "mse" if self.autoencoder.likelihood == "mse" else "nll"
            return LossOutput(loss=mse, metrics={name: mse.detach()}, n_obs=x.shape[0])
        mse = self.score_loss(x, self.conditions(batch))
        return LossOutput(loss=mse, metrics={"mse": mse.detach()}, n_obs=x.shape[0])

    def score_loss(self, x: Tensor, cond: Tensor) -> Tensor:
        """Denoising score-matching loss ``E ||eps - eps_theta(x_t, t, c)||^2`` (Ho et al. 2020).

        Parameters
        ----------
        x
            ``(batch, n_input)`` expression.
        cond
            ``(batch, n_fields)`` condition indices.

        Returns
        -------
        Scalar loss.
        """
        with torch.no_grad():
            y0 = self.to_diffusion(x)
        t = self.schedule.sample_timesteps(y0.shape[0], device=y0.device)
        noise = torch.randn_like(y0)
        y_t = self.schedule.q_sample(y0, t, noise)
        eps = self.net(y_t, t.float(), self.net.drop_conditions(cond))
        return F.mse_loss(eps, noise)

    # ---------------------------------------------------------------- sampling
    def guided_eps(self, cond: Tensor | None, guidance_scale: float = 1.0):
        """``eps`` function with classifier-free guidance for the samplers.

        ``eps = eps_uncond + w (eps_cond - eps_uncond)``: ``w = 1`` is the plain conditional model, ``w = 0``
        the unconditional one, ``w > 1`` sharpens the condition (Ho & Salimans 2022).

        Parameters
        ----------
        cond
            ``(batch, n_fields)`` condition indices; ``None`` for unconditional.
        guidance_scale
            Guidance weight ``w``.

        Returns
        -------
        A callable ``eps_fn(y_t, t)``.
        """

        def eps_fn(y: Tensor, t: Tensor) -> Tensor:
            if cond is None or cond.shape[1] == 0:
                return self.net(y, t, None)
            if guidance_scale == 1.0:
                return self.net(y, t, cond)
            both = self.net(torch.cat([y, y]), torch.cat([t, t]), torch.cat([cond, self.net.null_like(cond)]))
            e_c, e_u = both.chunk(2)
            return e_u + guidance_scale * (e_c - e_u)

        return eps_fn

    def design_eps(
        self,
        cond: Tensor | None,
        objective: Callable[[Tensor], Tensor],
        *,
        design_scale: float,
        guidance_scale: float = 1.0,
        trace: list[float] | None = None,
    ):
        """``eps`` function steered towards a phenotype (reconstruction guidance).

        At each step the clean estimate ``x0_hat(y_t)`` (Tweedie) is decoded to expression and scored by
        ``objective`` (higher is better, per cell); the noise prediction is shifted along the gradient,
        ``eps <- eps - design_scale * sqrt(1 - abar_t) * grad_{y_t} objective`` (classifier guidance,
        Dhariwal & Nichol 2021, with the objective on ``x0_hat`` as in Chung et al. 2023 / Bansal et al.
        2023), while the learned score keeps samples on the data manifold.

        Parameters
        ----------
        cond
            Condition codes or ``None``.
        objective
            ``objective(x) -> (batch,)`` on expression.
        design_scale
            Strength of the steering.
        guidance_scale
            Classifier-free guidance weight of the conditions.
        trace
            If given, the mean objective of ``x0_hat`` is appended at every call.

        Returns
        -------
        A callable ``eps_fn(y_t, t)``.
        """
        base = self.guided_eps(cond, guidance_scale)

        def eps_fn(y: Tensor, t: Tensor) -> Tensor:
            with torch.enable_grad():
                y = y.detach().requires_grad_(True)
                eps = base(y, t)
                x0 = self.schedule.predict_x0(y, t, eps)
                x0 = torch.maximum(torch.minimum(x0, self.clip_high), self.clip_low)
                score = objective(self.from_diffusion(x0))
                (grad,) = torch.autograd.grad(score.sum(), y)
            if trace is not None:
                trace.append(float(score.mean()))
            abar = self.schedule.alpha_bar(t).reshape(-1, 1)
            return (eps - design_scale * (1 - abar).sqrt() * grad).detach()

        return eps_fn
