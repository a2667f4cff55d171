"""Variance-preserving diffusion: noise schedules and reverse-time samplers.

The forward process is the discrete DDPM chain of Ho et al. (2020),
``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)``, which is the discretisation of the variance-preserving
SDE ``dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw`` of Song et al. (2021, "Score-based generative modeling through
stochastic differential equations"). Schedules: linear (Ho et al. 2020) and cosine (Nichol & Dhariwal 2021,
"Improved denoising diffusion probabilistic models").

Samplers take an ``eps_fn(x_t, t) -> eps`` callable (the noise prediction; the score is
``-eps / sqrt(1 - abar_t)``), so classifier-free guidance (Ho & Salimans 2022) and gradient guidance are
composed by the caller. Steps are chosen at sampling time on a sub-sequence of the training steps:

- :func:`ddpm_sample`: ancestral sampling with the respaced DDPM posterior (Ho et al. 2020; Nichol & Dhariwal
  2021 for respacing);
- :func:`ddim_sample`: DDIM (Song, Meng & Ermon 2021); ``eta=0`` is the deterministic sampler, a first-order
  solver of the probability-flow ODE; :func:`ddim_invert` runs it forwards (data to noise);
- :func:`euler_maruyama_sample`: Euler–Maruyama on the reverse VP-SDE, or Euler on the probability-flow ODE
  (``ode=True``).

Time convention: index ``t`` in ``0 .. n_steps - 1`` is diffusion step ``t + 1``; ``t`` may be a float tensor
(continuous time ``s = (t + 1) / n_steps``) wherever ``abar`` is needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = [
    "NoiseSchedule",
    "ddim_invert",
    "ddim_sample",
    "ddpm_sample",
    "euler_maruyama_sample",
    "sample",
    "sampling_timesteps",
]

EpsFn = Callable[[Tensor, Tensor], Tensor]
#: bound of ``x0_hat``: a symmetric float, or per-dimension ``(low, high)`` tensors
Clip = float | tuple[Tensor, Tensor] | None


def _clip(x0: Tensor, clip: Clip) -> Tensor:
    if clip is None:
        return x0
    if isinstance(clip, tuple):
        return torch.maximum(torch.minimum(x0, clip[1]), clip[0])
    return x0.clamp(-clip, clip)


def _cosine_betas(n_steps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    steps = torch.arange(n_steps + 1, dtype=torch.float64)
    f = torch.cos(((steps / n_steps) + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    betas = 1.0 - abar[1:] / abar[:-1]
    return betas.clamp(max=max_beta)


def _linear_betas(n_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    # scaled so that a schedule with fewer steps has the same end-to-end noise level as Ho et al.'s T=1000
    scale = 1000.0 / n_steps
    return torch.linspace(beta_start * scale, min(beta_end * scale, 0.999), n_steps, dtype=torch.float64)


class NoiseSchedule(nn.Module):
    """Discrete variance-preserving (DDPM) noise schedule.

    An ``nn.Module`` with non-persistent buffers, so it moves with ``.to(device)`` of its parent module and
    adds nothing to a ``state_dict``.

    Parameters
    ----------
    n_steps
        Number of diffusion steps ``T``.
    kind
        ``"cosine"`` (Nichol & Dhariwal 2021) or ``"linear"`` (Ho et al. 2020, ``beta`` from 1e-4 to 0.02
        at ``T = 1000``, rescaled by ``1000 / T``).

    Attributes
    ----------
    betas
        ``(T,)`` per-step noise variances ``beta_t``.
    alphas
        ``(T,)`` ``1 - beta_t``.
    alphas_cumprod
        ``(T,)`` ``abar_t = prod_{s <= t} alpha_s``.
    """

    betas: Tensor
    alphas: Tensor
    alphas_cumprod: Tensor

    def __init__(self, n_steps: int = 1000, kind: Literal["linear", "cosine"] = "cosine") -> None:
        super().__init__()
        if n_steps < 2:
            raise ValueError(f"n_steps must be at least 2, got {n_steps}.")
        if kind == "cosine":
            betas = _cosine_betas(n_steps)
        elif kind == "linear":
            betas = _linear_betas(n_steps)
        else:
            raise ValueError(f"kind must be 'linear' or 'cosine', got {kind!r}.")
        self.n_steps = int(n_steps)
        self.kind = kind
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas", alphas.float(), persistent=False)
        self.register_buffer("alphas_cumprod", abar.float(), persistent=False)
        # log abar with index -1 (abar = 1) prepended, for fractional-step interpolation
        self.register_buffer("_log_abar_pad", torch.cat([abar.new_zeros(1), abar.log()]), persistent=False)
        self.register_buffer("_beta_cont", (-torch.log1p(-betas) * n_steps).float(), persistent=False)

    #: sampling starts at the last step whose ``abar`` is at least this (the cosine schedule ends at ~1e-7,
    #: where ``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)`` amplifies any error in ``eps`` a thousandfold)
    min_alpha_bar: float = 1e-4

    @property
    def t_max(self) -> int:
        """Default first (noisiest) sampling step: the last index with ``abar >= min_alpha_bar``."""
        ok = torch.nonzero(self.alphas_cumprod >= self.min_alpha_bar)
        return int(ok[-1]) if len(ok) else 0

    def extra_repr(self) -> str:
        return f"n_steps={self.n_steps}, kind={self.kind!r}"

    # ------------------------------------------------------------------ closed forms
    def alpha_bar(self, t: Tensor | int | float) -> Tensor:
        """``abar`` at (possibly fractional) step indices ``t``, log-linearly interpolated between steps.

        Parameters
        ----------
        t
            Step indices in ``[0, T - 1]``; values below 0 interpolate towards ``abar = 1`` at ``t = -1``.

        Returns
        -------
        Tensor of ``abar_t`` with the shape of ``t`` (float32).
        """
        t = torch.as_tensor(t, device=self.alphas_cumprod.device)
        if not torch.is_floating_point(t):
            return self.alphas_cumprod[t.long()]
        # samplers pass one value per batch: interpolate the distinct values only
        uniq, inverse = torch.unique(t.detach(), return_inverse=True)
        pos = (uniq.double() + 1.0).clamp(0.0, float(self.n_steps))
        lo = pos.floor().long().clamp(max=self.n_steps - 1)
        frac = pos - lo.double()
        log_abar = self._log_abar_pad
        out = log_abar[lo] * (1 - frac) + log_abar[(lo + 1).clamp(max=self.n_steps)] * frac
        return out.exp().float()[inverse]

    def _expand(self, values: Tensor, x: Tensor) -> Tensor:
        if values.dim() == 0:
            values = values.expand(x.shape[0])
        return values.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))

    def q_sample(self, x0: Tensor, t: Tensor | int, noise: Tensor | None = None) -> Tensor:
        """Sample ``x_t ~ q(x_t | x_0)`` in closed form: ``sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise``.

        Parameters
        ----------
        x0
            Clean data, ``(batch, ...)``.
        t
            Step indices, an int or a ``(batch,)`` tensor.
        noise
            Standard normal noise shaped like ``x0``; drawn when ``None``.

        Returns
        -------
        The noised ``x_t`` (shape of ``x0``).
        """
        if noise is None:
            noise = torch.randn_like(x0)
        abar = self._expand(self.alpha_bar(t), x0)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def predict_x0(self, x_t: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
        """Tweedie / DDIM estimate ``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``.

        Parameters
        ----------
        x_t
            Noised data.
        t
            Step indices.
        eps
            Predicted noise.

        Returns
        -------
        Estimated clean data.
        """
        abar = self._expand(self.alpha_bar(t), x_t)
        return (x_t - (1.0 - abar).sqrt() * eps) / abar.sqrt()

    def predict_eps(self, x_t: Tensor, t: Tensor | int, x0: Tensor) -> Tensor:
        """Noise implied by ``x_t`` and a clean estimate ``x0``.

        Parameters
        ----------
        x_t
            Noised data.
        t
            Step indices.
        x0
            Clean data (estimate).

        Returns
        -------
        ``(x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)``.
        """
        abar = self._expand(self.alpha_bar(t), x_t)
        return (x_t - abar.sqrt() * x0) / (1.0 - abar).sqrt()

    def score_from_eps(self, eps: Tensor, t: Tensor | int) -> Tensor:
        """Score ``grad_x log p_t(x) = -eps / sqrt(1 - abar_t)``.

        Parameters
        ----------
        eps
            Predicted noise.
        t
            Step indices.

        Returns
        -------
        The score, shaped like ``eps``.
        """
        abar = self._expand(self.alpha_bar(t), eps)
        return -eps / (1.0 - abar).sqrt()

    def continuous_beta(self, t: Tensor) -> Tensor:
        """VP-SDE drift coefficient ``beta(s) = -d log abar / ds`` with ``s = (t + 1) / T`` (per unit time).

        Parameters
        ----------
        t
            (Fractional) step indices.

        Returns
        -------
        ``beta(s)`` (float32), shape of ``t``.
        """
        t = torch.as_tensor(t, device=self.betas.device)
        idx = t.round().long().clamp(0, self.n_steps - 1)
        return self._beta_cont[idx]

    def sample_timesteps(self, n: int, *, device: torch.device | str | None = None) -> Tensor:
        """Uniform training timesteps.

        Parameters
        ----------
        n
            Batch size.
        device
            Device of the result.

        Returns
        -------
        ``(n,)`` long tensor in ``[0, T - 1]``.
        """
        return torch.randint(0, self.n_steps, (n,), device=device or self.betas.device)


# ---------------------------------------------------------------------- samplers
def sampling_timesteps(
    schedule: NoiseSchedule, n_steps: int | None = None, *, t_start: int | None = None
) -> list[int]:
    """Decreasing sub-sequence of training steps used by a sampler.

    Parameters
    ----------
    schedule
        The noise schedule.
    n_steps
        Number of sampling steps (``None``: every training step from ``t_start``).
    t_start
        First (noisiest) step index; default :attr:`NoiseSchedule.t_max`.

    Returns
    -------
    Distinct step indices, decreasing, starting at ``t_start``.
    """
    t_start = schedule.t_max if t_start is None else int(t_start)
    if not 0 <= t_start < schedule.n_steps:
        raise ValueError(f"t_start must be in [0, {schedule.n_steps - 1}], got {t_start}.")
    n = t_start + 1 if n_steps is None else max(1, min(int(n_steps), t_start + 1))
    grid = torch.linspace(0, t_start, n, dtype=torch.float64).round().long().unique()
    return [int(v) for v in grid.flip(0)]


def _tvec(t: int, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


def _abar(schedule: NoiseSchedule, t: int, x: Tensor) -> Tensor:
    if t < 0:
        return torch.ones((), device=x.device, dtype=x.dtype)
    return schedule.alphas_cumprod[t].to(x.dtype)


def ddpm_sample(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x_t: Tensor,
    *,
    n_steps: int | None = None,
    t_start: int | None = None,
    generator: torch.Generator | None = None,
    clip_x0: Clip = None,
) -> Tensor:
    """Ancestral DDPM sampling with a (respaced) posterior ``q(x_s | x_t, x0_hat)``.

    Parameters
    ----------
    eps_fn
        ``eps_fn(x_t, t) -> eps`` with ``t`` a ``(batch,)`` float tensor of step indices.
    schedule
        The noise schedule.
    x_t
        Start state at ``t_start`` (pure noise for generation).
    n_steps
        Number of sampling steps (default: all steps from ``t_start``).
    t_start
        Step index of ``x_t`` (default :attr:`NoiseSchedule.t_max`).
    generator
        Random generator for the added noise.
    clip_x0
        If set, clamp ``x0_hat`` at each step to ``[-clip_x0, clip_x0]`` or to per-dimension ``(low, high)``.

    Returns
    -------
    The sample at ``t = -1`` (data).
    """
    steps = sampling_timesteps(schedule, n_steps, t_start=t_start)
    x = x_t
    for i, t in enumerate(steps):
        s = steps[i + 1] if i + 1 < len(steps) else -1
        abar_t, abar_s = _abar(schedule, t, x), _abar(schedule, s, x)
        eps = eps_fn(x, _tvec(t, x))
        x0 = (x - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
        x0 = _clip(x0, clip_x0)
        beta = 1 - abar_t / abar_s  # respaced beta from s to t
        mean = (abar_s.sqrt() * beta / (1 - abar_t)) * x0 + (
            (1 - beta).sqrt() * (1 - abar_s) / (1 - abar_t)
        ) * x
        if s >= 0:
            var = beta * (1 - abar_s) / (1 - abar_t)
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = mean + var.sqrt() * noise
        else:
            x = mean
    return x


def ddim_sample(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x_t: Tensor,
    *,
    n_steps: int | None = 50,
    t_start: int | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    clip_x0: Clip = None,
) -> Tensor:
    """DDIM sampling (Song, Meng & Ermon 2021); ``eta=0`` is deterministic (probability-flow ODE).

    Parameters
    ----------
    eps_fn
        ``eps_fn(x_t, t) -> eps``.
    schedule
        The noise schedule.
    x_t
        Start state at ``t_start``.
    n_steps
        Number of sampling steps.
    t_start
        Step index of ``x_t`` (default :attr:`NoiseSchedule.t_max`).
    eta
        Stochasticity: 0 deterministic, 1 matches DDPM's posterior variance.
    generator
        Random generator (used when ``eta > 0``).
    clip_x0
        If set, clamp ``x0_hat`` at each step.

    Returns
    -------
    The sample at ``t = -1`` (data).
    """
    steps = sampling_timesteps(schedule, n_steps, t_start=t_start)
    x = x_t
    for i, t in enumerate(steps):
        s = steps[i + 1] if i + 1 < len(steps) else -1
        abar_t, abar_s = _abar(schedule, t, x), _abar(schedule, s, x)
        eps = eps_fn(x, _tvec(t, x))
        x0 = (x - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
        if clip_x0 is not None:
            x0 = _clip(x0, clip_x0)
            eps = (x - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()
        sigma = eta * ((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)).clamp(min=0).sqrt()
        x = abar_s.sqrt() * x0 + (1 - abar_s - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and s >= 0:
            x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x


def ddim_invert(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x0: Tensor,
    *,
    n_steps: int | None = 50,
    t_end: int | None = None,
    n_fixed_point: int = 0,
) -> Tensor:
    """Deterministic DDIM inversion: integrate the probability-flow ODE from data to ``t_end``.

    Running :func:`ddim_sample` with the same ``eps_fn``, ``n_steps`` and ``t_start=t_end`` returns
    (approximately) ``x0``.

    Parameters
    ----------
    eps_fn
        ``eps_fn(x_t, t) -> eps``.
    schedule
        The noise schedule.
    x0
        Data to invert.
    n_steps
        Number of steps (the same grid as :func:`ddim_sample`).
    t_end
        Step index to stop at (default :attr:`NoiseSchedule.t_max`).
    n_fixed_point
        Fixed-point refinements per step: the noise is re-predicted at the new, noisier point, so that the
        DDIM sampling step from it returns exactly to the previous point once converged (exact inversion in
        the spirit of Pan et al. 2023, "Effective real image editing with accelerated iterative diffusion
        inversion"); 0 is the plain approximation.

    Returns
    -------
    The latent ``x_{t_end}``.
    """
    steps = sampling_timesteps(schedule, n_steps, t_start=t_end)[::-1]  # increasing
    x = x0
    prev = -1
    for t in steps:
        abar_s, abar_t = _abar(schedule, prev, x), _abar(schedule, t, x)
        # the noise is predicted at the less-noisy point (the standard DDIM-inversion approximation)
        eps = eps_fn(x, _tvec(max(prev, 0), x))
        x0_hat = (x - (1 - abar_s).sqrt() * eps) / abar_s.sqrt()
        x_new = abar_t.sqrt() * x0_hat + (1 - abar_t).sqrt() * eps
        for _ in range(n_fixed_point):
            eps = eps_fn(x_new, _tvec(t, x))
            x0_hat = (x - (1 - abar_s).sqrt() * eps) / abar_s.sqrt()
            x_new = abar_t.sqrt() * x0_hat + (1 - abar_t).sqrt() * eps
        x = x_new
        prev = t
    return x


def euler_maruyama_sample(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x_t: Tensor,
    *,
    n_steps: int | None = 200,
    t_start: int | None = None,
    ode: bool = False,
    generator: torch.Generator | None = None,
    clip_x0: Clip = None,
) -> Tensor:
    """Euler–Maruyama on the reverse VP-SDE (or Euler on the probability-flow ODE with ``ode=True``).

    Reverse SDE (Song et al. 2021): ``dx = [-1/2 beta x - beta score] ds + sqrt(beta) dw_bar`` integrated from
    ``s = (t_start + 1) / T`` to ``s = 0``; the ODE uses half the score term and no noise.

    Parameters
    ----------
    eps_fn
        ``eps_fn(x_t, t) -> eps``.
    schedule
        The noise schedule.
    x_t
        Start state at ``t_start``.
    n_steps
        Number of integration steps.
    t_start
        Step index of ``x_t`` (default :attr:`NoiseSchedule.t_max`).
    ode
        Integrate the deterministic probability-flow ODE instead of the SDE.
    generator
        Random generator for the Brownian increments.
    clip_x0
        If set, clamp the implied ``x0_hat`` at each step (the score is recomputed from it).

    Returns
    -------
    The sample at ``s = 0``; the last step is a Tweedie denoising step.
    """
    t_start = schedule.t_max if t_start is None else int(t_start)
    n = t_start + 1 if n_steps is None else int(n_steps)
    # continuous index grid from t_start down to 0 (index -1 is s = 0)
    grid = torch.linspace(float(t_start), 0.0, n + 1, dtype=torch.float64)
    x = x_t
    for i in range(n):
        t_now, t_next = float(grid[i]), float(grid[i + 1])
        ds = (t_now - t_next) / schedule.n_steps  # positive; time runs backwards
        tv = _tvec(0, x).fill_(t_now)
        eps = eps_fn(x, tv)
        abar = schedule.alpha_bar(tv).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        if clip_x0 is not None:
            x0 = _clip((x - (1 - abar).sqrt() * eps) / abar.sqrt(), clip_x0)
            eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
        score = -eps / (1 - abar).sqrt()
        beta = schedule.continuous_beta(tv).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        if ode:
            x = x + (0.5 * beta * x + 0.5 * beta * score) * ds
        else:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + (0.5 * beta * x + beta * score) * ds + (beta * ds).sqrt() * noise
    # final denoising step from index 0 to data (Tweedie)
    eps = eps_fn(x, _tvec(0, x))
    x0 = schedule.predict_x0(x, 0, eps)
    return _clip(x0, clip_x0)


def sample(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x_t: Tensor,
    *,
    method: Literal["ddpm", "ddim", "sde", "ode"] = "ddim",
    n_steps: int | None = 50,
    t_start: int | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    clip_x0: Clip = None,
) -> Tensor:
    """Dispatch to one of the samplers.

    Parameters
    ----------
    eps_fn
        ``eps_fn(x_t, t) -> eps``.
    schedule
        The noise schedule.
    x_t
        Start state at ``t_start``.
    method
        ``"ddpm"`` (ancestral), ``"ddim"``, ``"sde"`` (Euler–Maruyama) or ``"ode"`` (Euler, probability flow).
    n_steps
        Number of sampling steps.
    t_start
        Step index of ``x_t`` (default :attr:`NoiseSchedule.t_max`).
    eta
        DDIM stochasticity.
    generator
        Random generator.

    Returns
    -------
    The sample (data).
    """
    kw = {"n_steps": n_steps, "t_start": t_start, "generator": generator, "clip_x0": clip_x0}
    if method == "ddpm":
        return ddpm_sample(eps_fn, schedule, x_t, **kw)
    if method == "ddim":
        return ddim_sample(eps_fn, schedule, x_t, eta=eta, **kw)
    if method in ("sde", "ode"):
        return euler_maruyama_sample(eps_fn, schedule, x_t, ode=method == "ode", **kw)
    raise ValueError(f"method must be one of 'ddpm', 'ddim', 'sde', 'ode', got {method!r}.")
