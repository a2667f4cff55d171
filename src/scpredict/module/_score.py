"""Class-conditional denoising network over cell embeddings: the SCORE model's network.

A DDPM (Ho et al., NeurIPS 2020) ε-prediction network ``ε_θ(x_t, t, y)`` over low-dimensional cell
embeddings (e.g. scTab's feature-transformer output, Fischer et al. 2024), conditioned on the cell type ``y``
with an extra "null" class so that one network also gives the unconditional model (classifier-free guidance,
Ho & Salimans 2022).

Classification follows the diffusion-classifier idea (Li et al., "Your Diffusion Model is Secretly a
Zero-Shot Classifier", ICCV 2023; Clark & Jaini, "Text-to-Image Diffusion Models are Zero-Shot
Classifiers", NeurIPS 2023) that the "Keeping SCORE" seed applies to scTab embeddings: the class score is the
negative expected denoising error ``−E_{t,ε} ‖ε − ε_θ(x_t, t, y)‖²``, a Monte-Carlo estimate of the class
conditional ELBO up to constants, evaluated with the *same* ``(t, ε)`` draws for every class so that the
comparison between classes has low variance. The model class turns the scores into probabilities with a
temperature-scaled softmax.

The noise schedule is :class:`scpredict.nn._diffusion.NoiseSchedule` and sampling uses its DDIM sampler.
Pure torch; never imports anndata.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..nn._diffusion import NoiseSchedule, ddim_sample
from ..train import LossOutput
from ._tabnet import TabNetModule

__all__ = ["ScoreModule", "EmbeddingScoreModule", "LinearEmbedding", "cell_normals", "timestep_embedding"]


def timestep_embedding(t: torch.Tensor, dim: int, *, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017; Ho et al. 2020).

    Parameters
    ----------
    t
        ``(n,)`` timesteps.
    dim
        Embedding width (even).
    max_period
        Longest wavelength.

    Returns
    -------
    ``(n, dim)`` tensor ``[cos(t·f_k), sin(t·f_k)]``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


_MASK64 = (1 << 64) - 1


def _splitmix64(z):
    """SplitMix64 finaliser (Steele et al. 2014) on a numpy ``uint64`` array: a bijective 64-bit mix."""
    import numpy as np

    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def cell_normals(x: torch.Tensor, n: int, *, seed: int = 0) -> torch.Tensor:
    """``n`` standard normal numbers per row of ``x``, a deterministic function of the row's values and ``seed``.

    Each row's float32 bit pattern is hashed (SplitMix64 mixing, column by column) into a 64-bit key; the
    key and a counter give uniform numbers (counter-based generation, as in Salmon et al. 2011), turned into
    normals by the Box–Muller transform. Rows with different values get independent-looking streams; equal
    rows get equal ones, wherever they are.

    Parameters
    ----------
    x
        ``(rows, d)`` values.
    n
        Normals per row.
    seed
        Changes every stream.

    Returns
    -------
    ``(rows, n)`` float32 tensor (on the CPU).
    """
    import numpy as np

    bits = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32).view(np.uint32).astype(np.uint64)
    with np.errstate(over="ignore"):
        key = np.full(bits.shape[0], np.uint64(int(seed) & _MASK64), dtype=np.uint64)
        for j in range(bits.shape[1]):
            key = _splitmix64(key ^ bits[:, j])
        m = (n + 1) // 2
        counters = _splitmix64(np.arange(2 * m, dtype=np.uint64) + np.uint64(0x5851F42D4C957F2D))
        u = _splitmix64(key[:, None] ^ counters[None, :])
    u = ((u >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53  # uniform in (0, 1)
    r = np.sqrt(-2.0 * np.log(u[:, :m]))
    angle = 2.0 * np.pi * u[:, m:]
    z = np.concatenate([r * np.cos(angle), r * np.sin(angle)], axis=1)[:, :n]
    return torch.from_numpy(z.astype(np.float32))


class _ResidualBlock(nn.Module):
    """Pre-norm MLP block with FiLM conditioning: ``h + W₂ σ(W₁ (LN(h)(1+s) + b))``."""

    def __init__(self, n_hidden: int, *, dropout_rate: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(n_hidden, elementwise_affine=False)
        self.film = nn.Linear(n_hidden, 2 * n_hidden)
        self.fc1 = nn.Linear(n_hidden, 2 * n_hidden)
        self.fc2 = nn.Linear(2 * n_hidden, n_hidden)
        self.dropout = nn.Dropout(dropout_rate)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:  # noqa: D102
        scale, shift = self.film(F.silu(cond)).chunk(2, dim=-1)
        return self.forward_film(h, scale, shift)

    def forward_film(self, h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """The block with precomputed FiLM ``scale``/``shift`` (broadcast against ``h``)."""
        z = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(self.dropout(F.silu(self.fc1(z))))


class ScoreModule(nn.Module):
    """ε-prediction network conditioned on timestep and class.

    Parameters
    ----------
    n_input
        Embedding width.
    n_classes
        Number of classes; index ``n_classes`` is the null (unconditional) class.
    n_timesteps
        Number of diffusion steps ``T``.
    noise_schedule
        ``"cosine"`` or ``"linear"`` (see :class:`~scpredict.nn._diffusion.NoiseSchedule`).
    n_hidden
        Width of the residual MLP.
    n_layers
        Number of residual blocks.
    n_time_embed
        Width of the sinusoidal timestep embedding.
    dropout_rate
        Dropout inside the blocks.
    p_uncond
        Probability of replacing a training label by the null class.
    gaussian_base
        Add the exact denoiser of a Gaussian per class to the network's output, ``ε_θ = ε_G + r_θ``, so that
        the network learns only the residual (it starts at zero: the untrained model is the Gaussian one). For
        ``x₀ ~ N(μ_y, Σ_y)`` and ``x_t = √ᾱ x₀ + √(1−ᾱ) ε`` the minimum-error noise prediction is
        ``ε_G = √(1−ᾱ) (ᾱ Σ_y + (1−ᾱ) I)⁻¹ (x_t − √ᾱ μ_y)`` (the posterior mean of ``ε``; the Gaussian score
        approximation of Wang & Vastola 2023). ``μ_y`` and ``Σ_y`` are buffers set by
        :meth:`set_class_gaussians`; the null class gets the Gaussian of all cells.
    """

    def __init__(
        self,
        n_input: int,
        n_classes: int,
        *,
        n_timesteps: int = 1000,
        noise_schedule: str = "cosine",
        n_hidden: int = 256,
        n_layers: int = 3,
        n_time_embed: int = 64,
        dropout_rate: float = 0.0,
        p_uncond: float = 0.1,
        gaussian_base: bool = False,
    ) -> None:
        super().__init__()
        self.n_input, self.n_classes = int(n_input), int(n_classes)
        self.gaussian_base = bool(gaussian_base)
        if self.gaussian_base:  # per class (+ null) mean and eigendecomposition of the covariance
            k, d = self.n_classes + 1, self.n_input
            self.register_buffer("g_mean", torch.zeros(k, d))
            self.register_buffer("g_evecs", torch.eye(d).expand(k, d, d).clone())
            self.register_buffer("g_evals", torch.ones(k, d))
        self.n_time_embed, self.p_uncond = int(n_time_embed), float(p_uncond)
        self.schedule = NoiseSchedule(n_timesteps, kind=noise_schedule)
        # standardisation of the embedding, set by the model from its training data
        self.register_buffer("x_mean", torch.zeros(self.n_input))
        self.register_buffer("x_std", torch.ones(self.n_input))
        self.time_mlp = nn.Sequential(
            nn.Linear(self.n_time_embed, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_hidden)
        )
        self.class_embedding = nn.Embedding(self.n_classes + 1, n_hidden)
        self.input = nn.Linear(self.n_input, n_hidden)
        self.blocks = nn.ModuleList(
            [_ResidualBlock(n_hidden, dropout_rate=dropout_rate) for _ in range(n_layers)]
        )
        self.out_norm = nn.LayerNorm(n_hidden)
        self.out = nn.Linear(n_hidden, self.n_input)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def n_timesteps(self) -> int:
        """Number of diffusion steps of the schedule."""
        return self.schedule.n_steps

    @property
    def null_class(self) -> int:
        """Index of the unconditional class."""
        return self.n_classes

    def set_standardization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the per-dimension mean and standard deviation used to standardise embeddings."""
        self.x_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.x_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6))

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding → standardised diffusion space."""
        return (x - self.x_mean) / self.x_std

    def unstandardize(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised diffusion space → embedding."""
        return z * self.x_std + self.x_mean

    @torch.no_grad()
    def set_class_gaussians(
        self, z: torch.Tensor, y: torch.Tensor, *, shrinkage: float | None = None
    ) -> None:
        """Fit the Gaussians of ``gaussian_base`` to standardised training embeddings.

        Each class covariance is shrunk towards the pooled within-class covariance,
        ``Σ_y = (n_y S_y + κ S_pooled) / (n_y + κ)`` (the posterior mean under a normal-inverse-Wishart prior
        centred on the pooled covariance; rare classes borrow the shape of the others), with ``κ`` =
        ``shrinkage`` (default: the embedding width). The null class gets the mean and covariance of all cells.

        Parameters
        ----------
        z
            ``(n, n_input)`` standardised embeddings of the training cells.
        y
            ``(n,)`` class indices.
        shrinkage
            ``κ``, in cells.
        """
        if not self.gaussian_base:
            msg = "set_class_gaussians needs a module built with gaussian_base=True."
            raise ValueError(msg)
        z, y = z.double(), y.long()
        d, c = z.shape[1], self.n_classes
        kappa = float(d if shrinkage is None else shrinkage)
        means = torch.zeros(c + 1, d, dtype=torch.float64)
        scatter = torch.zeros(c + 1, d, d, dtype=torch.float64)
        counts = torch.zeros(c + 1, dtype=torch.float64)
        for k in range(c):
            zk = z[y == k]
            counts[k] = len(zk)
            if len(zk):
                means[k] = zk.mean(0)
                r = zk - means[k]
                scatter[k] = r.T @ r
        pooled = scatter[:c].sum(0) / max(float(counts[:c].sum()) - int((counts[:c] > 0).sum()), 1.0)
        covs = (scatter[:c] + kappa * pooled) / (counts[:c, None, None] + kappa)
        means[c] = z.mean(0)
        r = z - means[c]
        total = r.T @ r / max(len(z) - 1, 1)
        covs = torch.cat([covs, total[None]]) + 1e-6 * torch.eye(d, dtype=torch.float64)
        evals, evecs = torch.linalg.eigh(covs)
        self.g_mean.copy_(means.float())
        self.g_evals.copy_(evals.clamp_min(1e-6).float())
        self.g_evecs.copy_(evecs.float())

    def gaussian_eps(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Exact noise prediction of the class Gaussians (see ``gaussian_base``).

        ``x_t`` is ``(n, d)`` with ``t`` and ``y`` ``(n,)``, or ``(n, k, d)`` with ``t`` ``(k,)`` or scalar and
        ``y`` ``(k,)`` (every cell under each of ``k`` classes).
        """
        a = self.schedule.alphas_cumprod.to(x_t.dtype)[t.long()]
        a = a[..., None]  # (n, 1) or (k, 1)
        y = y.long()
        mu, evecs, lam = self.g_mean[y], self.g_evecs[y], self.g_evals[y]
        diff = x_t - a.sqrt() * mu
        proj = torch.einsum("...d,...de->...e", diff, evecs) / (a * lam + 1 - a)
        return (1 - a).sqrt() * torch.einsum("...e,...de->...d", proj, evecs)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Predict the noise ``ε_θ(x_t, t, y)``; ``y == n_classes`` means unconditional."""
        cond = self.time_mlp(timestep_embedding(t, self.n_time_embed)) + self.class_embedding(y)
        h = self.input(x_t)
        for block in self.blocks:
            h = block(h, cond)
        eps = self.out(self.out_norm(h))
        if self.gaussian_base:
            eps = eps + self.gaussian_eps(x_t, t, y)
        return eps

    def denoising_loss(
        self, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Denoising loss ``E ‖ε − ε_θ(x_t, t, y)‖²`` (mean over dimensions) with label dropout.

        Parameters
        ----------
        x
            ``(n, n_input)`` embeddings (not yet standardised).
        y
            ``(n,)`` class indices.
        generator
            Random generator for ``t``, ``ε`` and label dropout.
        """
        x0 = self.standardize(x)
        n = x0.shape[0]
        t = torch.randint(0, self.n_timesteps, (n,), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        if self.training and self.p_uncond > 0:
            drop = torch.rand(n, device=x0.device, generator=generator) < self.p_uncond
            y = torch.where(drop, torch.full_like(y, self.null_class), y)
        eps = self(self.schedule.q_sample(x0, t, noise), t, y)
        return F.mse_loss(eps, noise)

    def eval_timesteps(self, n_eval_timesteps: int) -> torch.Tensor:
        """Evenly spaced timesteps (centres of ``n_eval_timesteps`` equal bins) used for scoring."""
        edges = torch.linspace(0, self.n_timesteps, n_eval_timesteps + 1, device=self.schedule.betas.device)
        return ((edges[:-1] + edges[1:]) / 2).long().clamp_max(self.n_timesteps - 1)

    def _eps_all_classes(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """``ε_θ(x_t, t, y)`` for every class ``y`` at one timestep: ``(n, n_classes, n_input)``.

        Same result as calling :meth:`forward` once per class, but the input projection is computed once per
        cell and the timestep/class conditioning (FiLM) once per class."""
        n, c = x_t.shape[0], self.n_classes
        classes = torch.arange(c, device=x_t.device)
        t_vec = torch.full((c,), int(t), device=x_t.device, dtype=torch.long)
        cond = self.time_mlp(timestep_embedding(t_vec, self.n_time_embed)) + self.class_embedding(classes)
        h = self.input(x_t)[:, None, :].expand(n, c, -1)  # (n, c, H)
        for block in self.blocks:
            scale, shift = block.film(F.silu(cond)).chunk(2, dim=-1)  # (c, H) each
            h = block.forward_film(h, scale, shift)
        eps = self.out(self.out_norm(h))
        if self.gaussian_base:
            eps = eps + self.gaussian_eps(x_t[:, None, :], t_vec, classes)
        return eps

    def scoring_noise(
        self, x: torch.Tensor, n_timesteps: int, n_noise: int, *, seed: int = 0
    ) -> torch.Tensor:
        """Noise draws for scoring each cell: ``(n, n_timesteps, n_noise, n_input)``, antithetic pairs ``(ε, −ε)``.

        A cell's draws are a deterministic function of the cell itself (its embedding values) and ``seed``
        (:func:`cell_normals`): independent between different cells, as fresh draws would be, and the same
        whatever else is in the query and in whatever order — so a cell's scores never depend on the other
        cells scored with it.
        """
        n_pairs = (n_noise + 1) // 2
        base = cell_normals(x, n_timesteps * n_pairs * self.n_input, seed=seed).to(x.device)
        base = base.reshape(x.shape[0], n_timesteps, n_pairs, self.n_input)
        draws = torch.stack([base, -base], dim=3).reshape(x.shape[0], n_timesteps, 2 * n_pairs, self.n_input)
        return draws[:, :, :n_noise]

    @torch.no_grad()
    def class_errors(
        self,
        x: torch.Tensor,
        *,
        n_eval_timesteps: int = 25,
        n_noise: int = 2,
        generator: torch.Generator | None = None,
        timesteps: torch.Tensor | None = None,
        per_timestep: bool = False,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Expected denoising error of every cell under every class.

        Variance reduction: the same timesteps and noise draws are used for all classes of a cell (common
        random numbers: only differences between classes matter for classification), and noise draws come in
        antithetic pairs ``(ε, −ε)``.

        Parameters
        ----------
        x
            ``(n, n_input)`` embeddings (not yet standardised).
        n_eval_timesteps
            Number of evenly spaced timesteps averaged over (ignored when ``timesteps`` is given).
        n_noise
            Noise draws per timestep (ignored when ``noise`` is given).
        generator
            Random generator for the noise (fix its seed for reproducible scores).
        timesteps
            Explicit integer timesteps to evaluate.
        per_timestep
            Return the errors of every timestep instead of their mean.
        noise
            ``(n, n_timesteps, n_noise, n_input)`` draws, e.g. from :meth:`scoring_noise`; ``None``: drawn from
            ``generator`` (fresh draws shared by the cells of this call).

        Returns
        -------
        ``(n, n_classes)`` mean squared denoising error (``(n, n_timesteps, n_classes)`` with
        ``per_timestep``); the SCORE class score is its negative.
        """
        x0 = self.standardize(x)
        n = x0.shape[0]
        ts = self.eval_timesteps(n_eval_timesteps) if timesteps is None else torch.as_tensor(timesteps)
        if noise is None:
            pairs = torch.randn((len(ts), (n_noise + 1) // 2, self.n_input), generator=generator)
            noise = torch.stack([pairs, -pairs], dim=2).reshape(len(ts), -1, self.n_input)[:, :n_noise]
            noise = noise.unsqueeze(0).expand(n, -1, -1, -1)
        if (
            noise.ndim != 4
            or noise.shape[0] != n
            or noise.shape[1] != len(ts)
            or noise.shape[3] != self.n_input
        ):
            msg = (
                f"noise must have shape ({n}, {len(ts)}, n_noise, {self.n_input}), got {tuple(noise.shape)}."
            )
            raise ValueError(msg)
        noise = noise.to(device=x0.device, dtype=x0.dtype)
        abar = self.schedule.alphas_cumprod
        out = x0.new_zeros(n, len(ts), self.n_classes)
        for k, t_val in enumerate(ts.tolist()):
            a = abar[int(t_val)].to(x0.dtype)
            for j in range(noise.shape[2]):
                eps_true = noise[:, k, j]
                x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps_true
                eps = self._eps_all_classes(x_t, int(t_val))  # (n, c, d)
                out[:, k] += (eps - eps_true[:, None, :]).pow(2).mean(dim=-1)
        out /= noise.shape[2]
        return out if per_timestep else out.mean(dim=1)

    @torch.no_grad()
    def sample(
        self,
        y: torch.Tensor,
        *,
        n_sampling_steps: int = 50,
        guidance_scale: float = 0.0,
        clip_x0: float | None = 10.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw embeddings of the given classes with deterministic DDIM sampling (Song et al., ICLR 2021).

        Parameters
        ----------
        y
            ``(n,)`` class indices (``n_classes`` = unconditional).
        n_sampling_steps
            Number of (strided) denoising steps.
        guidance_scale
            Classifier-free guidance weight ``w``: ``ε = (1+w) ε(x,t,y) − w ε(x,t,∅)``; 0 = plain conditional.
        clip_x0
            Clip the predicted clean sample to ``[−clip_x0, clip_x0]`` (standardised units) at each step.
        generator
            Random generator of the initial noise.

        Returns
        -------
        ``(n, n_input)`` samples in embedding space (un-standardised).
        """
        y = y.long()
        null = torch.full_like(y, self.null_class)

        def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            eps = self(x, t, y)
            if guidance_scale:
                eps = (1 + guidance_scale) * eps - guidance_scale * self(x, t, null)
            return eps

        x_t = torch.randn((y.shape[0], self.n_input), device=self.x_mean.device, generator=generator)
        x0 = ddim_sample(eps_fn, self.schedule, x_t, n_steps=n_sampling_steps, clip_x0=clip_x0)
        return self.unstandardize(x0)


class LinearEmbedding(nn.Module):
    """A fixed affine map of (log-normalised) expression, ``z = W x + b``: e.g. class logits.

    ``W`` and ``b`` are buffers (saved with the state dict, never trained by gradient descent): the model class
    fills them with :meth:`set_weights`, e.g. with the mean of the coefficients of cross-fitted logistic
    regressions (the mean of affine maps is itself an affine map).

    Parameters
    ----------
    n_input
        Number of genes.
    n_output
        Width of the embedding.
    log_normalize_input
        Normalise each cell to 10⁴ counts and apply ``log1p`` before the map (input declared as counts).
    """

    def __init__(self, n_input: int, n_output: int, *, log_normalize_input: bool = False) -> None:
        super().__init__()
        self.n_input, self.n_output = int(n_input), int(n_output)
        self.log_normalize_input = bool(log_normalize_input)
        self.register_buffer("weight", torch.zeros(self.n_output, self.n_input))
        self.register_buffer("bias", torch.zeros(self.n_output))

    def set_weights(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Store ``W`` (``(n_output, n_input)``) and ``b`` (``(n_output,)``)."""
        self.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        self.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"embedding": W x̃ + b}`` with ``x̃`` the (log-normalised) input (same interface as TabNet's)."""
        if self.log_normalize_input:
            x = torch.log1p(x * (1e4 / x.sum(dim=1, keepdim=True).clamp_min(1.0)))
        return {"embedding": F.linear(x, self.weight, self.bias)}


class EmbeddingScoreModule(nn.Module):
    """A :class:`ScoreModule` over cell embeddings, optionally with its own encoder of expression.

    With ``encoder_kwargs`` and ``encoder="tabnet"`` the embedding is the decision output of a
    :class:`~scpredict.module._tabnet.TabNetModule` trained first as a classifier (stage ``"encoder"``) and
    then frozen while the denoiser is trained (stage ``"diffusion"``), as in the "Keeping SCORE" pipeline
    (scTab embeddings → diffusion model). With ``encoder="linear"`` it is a :class:`LinearEmbedding` (a fixed
    affine map set by the model class, e.g. mean logistic-regression logits). Without ``encoder_kwargs``, the
    embedding is read from ``batch["embedding"]`` (an ``obsm`` matrix).

    Parameters
    ----------
    n_input
        Number of genes (input of the encoder).
    n_classes
        Number of classes (0: unconditional).
    n_embedding
        Width of an external embedding (ignored with ``encoder_kwargs``).
    encoder_kwargs
        Keyword arguments of the encoder — :class:`~scpredict.module._tabnet.TabNetModule` or
        :class:`LinearEmbedding` (``n_output``, ``log_normalize_input``) — or ``None`` for no encoder.
    encoder
        ``"tabnet"`` or ``"linear"``: the encoder built from ``encoder_kwargs``.
    **score_kwargs
        Keyword arguments of :class:`ScoreModule`.
    """

    def __init__(
        self,
        n_input: int,
        n_classes: int,
        *,
        n_embedding: int | None = None,
        encoder_kwargs: dict | None = None,
        encoder: str = "tabnet",
        **score_kwargs,
    ) -> None:
        super().__init__()
        if encoder not in ("tabnet", "linear"):
            msg = f"encoder must be 'tabnet' or 'linear', got {encoder!r}."
            raise ValueError(msg)
        self.encoder: TabNetModule | LinearEmbedding | None = None
        width = n_embedding
        if encoder_kwargs is not None and encoder == "tabnet":
            self.encoder = TabNetModule(n_input, max(n_classes, 1), **encoder_kwargs)
            width = self.encoder.n_d
        elif encoder_kwargs is not None:
            self.encoder = LinearEmbedding(n_input, **encoder_kwargs)
            width = self.encoder.n_output
        if width is None:
            msg = "pass n_embedding (the width of the obsm embedding) or encoder_kwargs."
            raise ValueError(msg)
        self.score = ScoreModule(int(width), n_classes, **score_kwargs)
        #: (t, ε) draws per cell in the validation loss
        self.n_val_draws = 4

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The embedding of a batch: encoder output of ``batch["X"]`` or ``batch["embedding"]``."""
        if self.encoder is None:
            return batch["embedding"]
        return self.encoder.encode(batch["X"])["embedding"]

    def _labels(self, batch: dict[str, torch.Tensor], n: int, device: torch.device) -> torch.Tensor:
        if "labels" in batch and self.score.n_classes > 0:
            return batch["labels"].long().squeeze(-1)
        return torch.full((n,), self.score.null_class, dtype=torch.long, device=device)

    def loss(self, batch: dict[str, torch.Tensor], *, stage: str = "diffusion") -> LossOutput:
        """Stage ``"encoder"``: the TabNet encoder's classification loss; stage ``"diffusion"``: denoising loss
        on ``batch["embedding"]`` when the batch carries one, otherwise on the (frozen, eval-mode) encoder
        output of ``batch["X"]``."""
        if stage == "encoder":
            if not isinstance(self.encoder, TabNetModule):
                msg = "stage='encoder' needs a module built with a TabNet encoder (encoder_kwargs)."
                raise ValueError(msg)
            return self.encoder.loss(batch)
        if "embedding" in batch:  # an obsm embedding, or embeddings the model class computed (cross-fitted)
            z = batch["embedding"]
        elif self.encoder is not None:
            self.encoder.eval()
            with torch.no_grad():
                z = self.embed(batch)
        else:
            msg = "stage='diffusion' needs batch['embedding'] or a module built with an encoder."
            raise ValueError(msg)
        y = self._labels(batch, z.shape[0], z.device)
        if self.training:
            loss = self.score.denoising_loss(z, y)
        else:
            # validation: the same (t, ε) draws every epoch and several of them per cell, so that early
            # stopping and best-epoch selection compare epochs on a low-variance, fixed estimate
            gen = torch.Generator(device=z.device).manual_seed(0)
            loss = torch.stack(
                [self.score.denoising_loss(z, y, generator=gen) for _ in range(self.n_val_draws)]
            ).mean()
        return LossOutput(loss=loss, metrics={"denoising_mse": loss.detach()}, n_obs=z.shape[0])
