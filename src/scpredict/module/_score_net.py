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

__all__ = ["ExpressionAutoencoder", "ScoreDiffusionModule", "ScoreNet", "sinusoidal_embedding"]


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
    """

    def __init__(
        self,
        n_input: int,
        n_latent: int = 64,
        *,
        n_hidden: int = 512,
        n_layers: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()

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
        ``(batch, n_input)`` reconstruction.
        """
        return self.decoder(z * self.latent_std + self.latent_mean)

    def loss(self, x: Tensor) -> Tensor:
        """Mean squared reconstruction error with input dropout.

        Parameters
        ----------
        x
            ``(batch, n_input)`` expression.

        Returns
        -------
        Scalar loss.
        """
        return F.mse_loss(self.decoder(self.encoder(self.input_dropout(x))), x)


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
            ExpressionAutoencoder(n_input, n_latent, n_hidden=ae_hidden) if space == "latent" else None
        )
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
            return LossOutput(loss=mse, metrics={"mse": mse.detach()}, n_obs=x.shape[0])
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
