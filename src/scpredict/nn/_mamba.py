"""Mamba, Mamba-2 and bidirectional Mamba blocks.

:class:`Mamba` and :class:`Mamba2` use the parameter names and shapes of ``mamba_ssm.Mamba`` and
``mamba_ssm.Mamba2`` (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``; Mamba-2:
``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``, ``D``, ``norm``, ``out_proj``), so a state dict moves between
this pure-PyTorch implementation and the fused CUDA one unchanged. The scans dispatch to the CUDA kernels when
the tensors are on CUDA and ``mamba_ssm`` / ``causal_conv1d`` import (see :mod:`scpredict.nn._scan`).

:class:`BiMamba` runs one scan left-to-right and one right-to-left and adds them (as in Caduceus; Schiff et al.,
"Caduceus: Bi-Directional Equivariant Long-Range DNA Sequence Modeling", 2024), so every position sees the
whole sequence. :class:`BiMambaBlock` wraps it with a pre-RMSNorm and a residual connection.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._scan import Backend, causal_conv1d, resolve_backend, selective_scan, ssd_chunk_scan

__all__ = ["BiMamba", "BiMambaBlock", "GatedRMSNorm", "Mamba", "Mamba2"]


def _inverse_softplus_dt(n: int, *, dt_min: float, dt_max: float, dt_init_floor: float) -> torch.Tensor:
    """Bias whose softplus is log-uniform in ``[dt_min, dt_max]`` (the Mamba initialisation)."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


class Mamba(nn.Module):
    """Mamba-1 mixer (Gu & Dao 2023), a drop-in for ``mamba_ssm.Mamba``.

    Parameters
    ----------
    d_model
        Width of the input and output.
    d_state
        State size ``N`` per channel.
    d_conv
        Width of the causal depthwise convolution.
    expand
        Inner width is ``expand * d_model``.
    dt_rank
        Rank of the step-size projection; ``"auto"`` is ``ceil(d_model / 16)``.
    dt_min, dt_max, dt_init_floor
        Range of the initial step sizes.
    chunk_size
        Chunk length of the CPU scan.
    backend
        ``"auto"`` (CUDA kernels when possible), ``"torch"`` or ``"cuda"``.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | Literal["auto"] = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        chunk_size: int = 128,
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.chunk_size, self.backend = chunk_size, backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=True
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        with torch.no_grad():
            self.dt_proj.bias.copy_(
                _inverse_softplus_dt(self.d_inner, dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor)
            )
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Mix along the sequence, left to right.

        Parameters
        ----------
        hidden_states
            ``(batch, length, d_model)``.

        Returns
        -------
        torch.Tensor
            ``(batch, length, d_model)``; position ``t`` depends on positions ``<= t`` only.
        """
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (b, 2 d_inner, l)
        x, z = xz.chunk(2, dim=1)
        x = causal_conv1d(x, self.conv1d.weight, self.conv1d.bias, activation="silu", backend=self.backend)
        x_dbl = self.x_proj(x.transpose(1, 2))  # (b, l, dt_rank + 2 n)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # bias goes in as delta_bias
        y = selective_scan(
            x,
            dt,
            A=-torch.exp(self.A_log.float()),
            B=B.transpose(1, 2),
            C=C.transpose(1, 2),
            D=self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            chunk_size=self.chunk_size,
            backend=self.backend,
        )
        return self.out_proj(y.transpose(1, 2))


class GatedRMSNorm(nn.Module):
    """``RMSNorm(x ⊙ silu(z)) · weight``: ``mamba_ssm``'s ``RMSNormGated`` with ``norm_before_gate=False``.

    Parameters
    ----------
    d
        Width.
    eps
        Added to the mean square.
    """

    def __init__(self, d: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Gate, then normalise.

        Parameters
        ----------
        x
            ``(..., d)``.
        z
            Gate, ``(..., d)``.

        Returns
        -------
        torch.Tensor
            ``(..., d)``.
        """
        x = x * F.silu(z)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Mamba2(nn.Module):
    """Mamba-2 mixer (Dao & Gu 2024), a drop-in for ``mamba_ssm.Mamba2`` with ``ngroups`` groups.

    Parameters
    ----------
    d_model
        Width of the input and output.
    d_state
        State size per head.
    d_conv
        Width of the causal depthwise convolution over ``x``, ``B``, ``C``.
    expand
        Inner width is ``expand * d_model``.
    headdim
        Channels per head; ``expand * d_model`` must be divisible by it.
    ngroups
        Groups sharing ``B`` and ``C``.
    A_init_range
        ``-A`` is drawn uniformly from this range.
    dt_min, dt_max, dt_init_floor
        Range of the initial step sizes.
    chunk_size
        Chunk length of the SSD scan.
    segment_length
        On the PyTorch path, sequences longer than this run in equal segments of at most this many tokens
        (projections, convolution and scan per segment, the scan state and the convolution's last inputs
        carried across), which keeps the working set of every operation cache-sized so that time stays linear
        in the length (~2x faster at 16k tokens on a 2-core CPU); the result equals one pass. ``None``: one
        pass.
    backend
        ``"auto"``, ``"torch"`` or ``"cuda"``.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 32,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        chunk_size: int = 64,
        segment_length: int | None = 2048,
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model
        self.segment_length = segment_length
        if self.d_inner % headdim:
            msg = f"expand * d_model = {self.d_inner} must be divisible by headdim = {headdim}."
            raise ValueError(msg)
        self.headdim, self.nheads, self.ngroups = headdim, self.d_inner // headdim, ngroups
        if self.nheads % ngroups:
            msg = f"the number of heads ({self.nheads}) must be divisible by ngroups = {ngroups}."
            raise ValueError(msg)
        self.chunk_size, self.backend = chunk_size, backend
        d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=False)
        conv_dim = self.d_inner + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1, bias=True)
        self.dt_bias = nn.Parameter(
            _inverse_softplus_dt(self.nheads, dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor)
        )
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(*A_init_range)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = GatedRMSNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Mix along the sequence, left to right.

        Parameters
        ----------
        hidden_states
            ``(batch, length, d_model)``.

        Returns
        -------
        torch.Tensor
            ``(batch, length, d_model)``; position ``t`` depends on positions ``<= t`` only.
        """
        length = hidden_states.shape[1]
        seg = self.segment_length
        if (
            seg is None
            or length <= seg
            or resolve_backend(hidden_states, self.backend, kernel="ssd") == "cuda"
        ):
            return self._segment(hidden_states, None, None, carry=False)[0]
        seg = -(-length // -(-length // seg))  # equal segments of at most segment_length tokens
        outs, state, halo = [], None, None
        for start in range(0, length, seg):
            out, state, halo = self._segment(hidden_states[:, start : start + seg], state, halo, carry=True)
            outs.append(out)
        return torch.cat(outs, dim=1)

    def _segment(
        self,
        hidden_states: torch.Tensor,
        state: torch.Tensor | None,
        halo: torch.Tensor | None,
        *,
        carry: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """One segment: output and, with ``carry``, the scan state after it and the last ``d_conv - 1``
        convolution inputs (what the next segment needs)."""
        batch, length, _ = hidden_states.shape
        gn = self.ngroups * self.d_state
        z, xBC, dt = torch.split(
            self.in_proj(hidden_states), [self.d_inner, self.d_inner + 2 * gn, self.nheads], dim=-1
        )
        xBC = xBC.transpose(1, 2)
        if halo is not None:  # the previous segment's last inputs: the convolution sees across the boundary
            xBC = torch.cat([halo, xBC], dim=-1)
        next_halo = xBC[..., -(self.d_conv - 1) :] if carry and self.d_conv > 1 else None
        xBC = causal_conv1d(
            xBC, self.conv1d.weight, self.conv1d.bias, activation="silu", backend=self.backend
        )
        if halo is not None:
            xBC = xBC[..., halo.shape[-1] :]
        x, B, C = torch.split(xBC.transpose(1, 2), [self.d_inner, gn, gn], dim=-1)
        y = ssd_chunk_scan(
            x.reshape(batch, length, self.nheads, self.headdim),
            dt,
            A=-torch.exp(self.A_log.float()),
            B=B.reshape(batch, length, self.ngroups, self.d_state),
            C=C.reshape(batch, length, self.ngroups, self.d_state),
            chunk_size=self.chunk_size,
            D=self.D,
            dt_bias=self.dt_bias,
            dt_softplus=True,
            initial_states=state,
            return_final_states=carry,
            backend=self.backend,
        )
        y, state = y if carry else (y, None)
        y = self.norm(y.reshape(batch, length, self.d_inner), z)
        return self.out_proj(y), state, next_halo


class BiMamba(nn.Module):
    """Bidirectional Mamba mixer: a left-to-right scan plus a right-to-left scan, summed.

    Parameters
    ----------
    d_model
        Width.
    ssm
        ``"mamba1"`` (:class:`Mamba`, selective scan) or ``"mamba2"`` (:class:`Mamba2`, SSD).
    shared_weights
        One mixer for both directions (the two scans run as one batch) or two separate mixers
        (``fwd`` and ``rev``).
    **mixer_kwargs
        Passed to :class:`Mamba` / :class:`Mamba2`.
    """

    def __init__(
        self,
        d_model: int,
        *,
        ssm: Literal["mamba1", "mamba2"] = "mamba1",
        shared_weights: bool = True,
        **mixer_kwargs,
    ) -> None:
        super().__init__()
        if ssm not in ("mamba1", "mamba2"):
            msg = f"ssm must be 'mamba1' or 'mamba2', got {ssm!r}."
            raise ValueError(msg)
        cls = Mamba if ssm == "mamba1" else Mamba2
        self.ssm, self.shared_weights = ssm, shared_weights
        self.fwd = cls(d_model, **mixer_kwargs)
        self.rev = None if shared_weights else cls(d_model, **mixer_kwargs)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Mix along the sequence in both directions.

        Parameters
        ----------
        hidden_states
            ``(batch, length, d_model)``.

        Returns
        -------
        torch.Tensor
            ``(batch, length, d_model)``; every position depends on the whole sequence.
        """
        flipped = hidden_states.flip(1)
        if self.rev is None:
            out = self.fwd(torch.cat([hidden_states, flipped], dim=0))
            out_f, out_r = out.chunk(2, dim=0)
        else:
            out_f, out_r = self.fwd(hidden_states), self.rev(flipped)
        return out_f + out_r.flip(1)


class BiMambaBlock(nn.Module):
    """Pre-norm residual block: ``x + dropout(BiMamba(RMSNorm(x)))``.

    Parameters
    ----------
    d_model
        Width.
    ssm
        ``"mamba1"`` or ``"mamba2"``.
    shared_weights
        Share the mixer between the two directions.
    dropout_rate
        Dropout on the mixer output.
    norm_eps
        RMSNorm epsilon.
    **mixer_kwargs
        Passed to :class:`Mamba` / :class:`Mamba2`.
    """

    def __init__(
        self,
        d_model: int,
        *,
        ssm: Literal["mamba1", "mamba2"] = "mamba1",
        shared_weights: bool = True,
        dropout_rate: float = 0.0,
        norm_eps: float = 1e-5,
        **mixer_kwargs,
    ) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(d_model, eps=norm_eps)
        self.mixer = BiMamba(d_model, ssm=ssm, shared_weights=shared_weights, **mixer_kwargs)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Parameters
        ----------
        hidden_states
            ``(batch, length, d_model)``.

        Returns
        -------
        torch.Tensor
            ``(batch, length, d_model)``.
        """
        return hidden_states + self.dropout(self.mixer(self.norm(hidden_states)))
