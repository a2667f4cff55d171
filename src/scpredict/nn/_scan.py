"""Selective state-space scans: Mamba-1 selective scan and Mamba-2 SSD, pure PyTorch with CUDA dispatch.

Two scans are provided, each with the calling convention of its fused CUDA kernel in ``mamba_ssm`` so that one
set of weights serves both paths:

* :func:`selective_scan` (Mamba-1; Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State
  Spaces", 2023). On CPU it is a sequential scan wrapped in a custom :class:`torch.autograd.Function`: the forward
  pass stores only the hidden state at chunk boundaries, the backward pass recomputes each chunk's states and runs
  the adjoint recurrence backwards. Memory is O(L·D) (not O(L·D·N)) and time is linear in L.
* :func:`ssd_chunk_scan` (Mamba-2 "state space duality"; Dao & Gu, "Transformers are SSMs", 2024). The chunked
  formulation of the paper's ``ssd_minimal_discrete``: quadratic attention-like products inside chunks of
  ``chunk_size`` tokens, a linear recurrence between chunks; no Python loop over tokens, plain autograd.

On CUDA tensors, when ``mamba_ssm`` / ``causal_conv1d`` import, :func:`selective_scan`, :func:`ssd_chunk_scan`
and :func:`causal_conv1d` call ``selective_scan_fn``, ``mamba_chunk_scan_combined`` and ``causal_conv1d_fn``.
Those packages are imported lazily, on the first CUDA call, never at import time.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "causal_conv1d",
    "cuda_kernels",
    "resolve_backend",
    "selective_scan",
    "ssd_chunk_scan",
]

Backend = Literal["auto", "torch", "cuda"]
_KERNELS = ("selective_scan", "ssd", "conv1d")
_INSTALL_HINT = (
    'install the fused kernels with `pip install "scpredict[mamba]"` (mamba-ssm and causal-conv1d, which need '
    "CUDA and a matching torch build), or pass backend='torch'"
)


@functools.lru_cache(maxsize=1)
def cuda_kernels() -> SimpleNamespace:
    """Import the fused CUDA kernels of ``mamba_ssm`` and ``causal_conv1d`` if they are installed.

    The import happens once, on first call, and never at ``import scpredict``. Failures of any kind (missing
    package, CUDA library mismatch) leave the corresponding slot ``None``.

    Returns
    -------
    SimpleNamespace
        ``selective_scan`` (``mamba_ssm``'s ``selective_scan_fn``), ``ssd`` (``mamba_chunk_scan_combined``)
        and ``conv1d`` (``causal_conv1d_fn``); each is ``None`` when unavailable.
    """
    found: dict[str, object | None] = dict.fromkeys(_KERNELS)
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        found["selective_scan"] = selective_scan_fn
    except Exception:  # noqa: BLE001 - any import failure (ImportError, OSError, RuntimeError) means "absent"
        pass
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

        found["ssd"] = mamba_chunk_scan_combined
    except Exception:  # noqa: BLE001
        pass
    try:
        from causal_conv1d import causal_conv1d_fn

        found["conv1d"] = causal_conv1d_fn
    except Exception:  # noqa: BLE001
        pass
    return SimpleNamespace(**found)


def resolve_backend(x: torch.Tensor, backend: Backend = "auto", *, kernel: str = "selective_scan") -> str:
    """Decide whether a call runs the pure-PyTorch path or a fused CUDA kernel.

    Parameters
    ----------
    x
        A tensor of the call (its device decides).
    backend
        ``"auto"``: the CUDA kernel when ``x`` is on CUDA and the kernel imports, else PyTorch. ``"torch"``:
        always PyTorch. ``"cuda"``: the kernel, with an error if ``x`` is not on CUDA or the kernel is missing.
    kernel
        One of ``"selective_scan"``, ``"ssd"``, ``"conv1d"``.

    Returns
    -------
    str
        ``"torch"`` or ``"cuda"``.
    """
    if kernel not in _KERNELS:
        msg = f"kernel must be one of {_KERNELS}, got {kernel!r}."
        raise ValueError(msg)
    if backend == "torch":
        return "torch"
    if backend not in ("auto", "cuda"):
        msg = f"backend must be 'auto', 'torch' or 'cuda', got {backend!r}."
        raise ValueError(msg)
    if not x.is_cuda:
        if backend == "cuda":
            msg = f"backend='cuda' needs CUDA tensors, but the input is on {x.device}; use backend='auto'."
            raise ValueError(msg)
        return "torch"
    if getattr(cuda_kernels(), kernel) is None:
        if backend == "cuda":
            msg = f"backend='cuda' was requested but the fused {kernel!r} kernel does not import; {_INSTALL_HINT}."
            raise ImportError(msg)
        return "torch"
    return "cuda"


# --------------------------------------------------------------------------------------------------- conv


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: Literal["silu"] | None = "silu",
    backend: Backend = "auto",
) -> torch.Tensor:
    """Depthwise causal 1-d convolution (the short convolution of a Mamba block).

    Parameters
    ----------
    x
        ``(batch, channels, length)``.
    weight
        ``(channels, 1, width)``, as in ``nn.Conv1d(channels, channels, width, groups=channels).weight``.
    bias
        ``(channels,)`` or ``None``.
    activation
        ``"silu"`` or ``None``.
    backend
        See :func:`resolve_backend`.

    Returns
    -------
    torch.Tensor
        ``(batch, channels, length)``; position ``t`` sees inputs ``t - width + 1 .. t`` only.
    """
    if resolve_backend(x, backend, kernel="conv1d") == "cuda":
        return cuda_kernels().conv1d(x.contiguous(), weight.squeeze(1), bias, activation=activation)
    # W shifted multiply-adds instead of F.conv1d: PyTorch's CPU depthwise-convolution backward is ~50x slower
    width, length = weight.shape[-1], x.shape[-1]
    xp = F.pad(x, (width - 1, 0))
    out = xp[..., width - 1 :] * weight[:, 0, width - 1, None]
    for k in range(width - 1):
        out = out + xp[..., k : k + length] * weight[:, 0, k, None]
    if bias is not None:
        out = out + bias[:, None]
    return F.silu(out) if activation == "silu" else out


# ------------------------------------------------------------------------------------ Mamba-1 selective scan


def _chunk_states(  # noqa: PLR0917 - private kernel, positional like its math
    delta: torch.Tensor, u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, h0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states of one chunk, time-major.

    ``delta, u``: ``(T, b, d)``; ``A``: ``(d, n)``; ``B``: ``(T, b, n)``; ``h0``: ``(b, d, n)`` (state before the
    chunk). Returns ``hs`` with ``hs[t] = exp(delta_t A) * hs[t-1] + delta_t u_t B_t`` and ``dA = exp(delta A)``,
    both ``(T, b, d, n)``. The loop runs one fused in-place op per token on a contiguous slab (no autograd).
    """
    T, b, d = delta.shape
    dA = torch.empty(T, b, d, A.shape[1], dtype=delta.dtype, device=delta.device)
    torch.mul(delta.unsqueeze(-1), A, out=dA).exp_()
    hs = torch.empty_like(dA)  # delta_t u_t B_t, overwritten in place by the states
    torch.mul((delta * u).unsqueeze(-1), B.unsqueeze(2), out=hs)
    prev = h0
    for a_t, h_t in zip(dA.unbind(0), hs.unbind(0), strict=True):
        h_t.addcmul_(a_t, prev)
        prev = h_t
    return hs, dA


class _SelectiveScanFn(torch.autograd.Function):
    """``y_t = C_t · h_t`` with ``h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t`` (no D, no gate), O(L) memory."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk_size):  # noqa: PLR0917 - autograd.Function API is positional
        # u, delta: (b, d, l); A: (d, n); B, C: (b, n, l)  ->  time-major views (l, b, ·)
        ut, dt, Bt, Ct = (t.permute(2, 0, 1).contiguous() for t in (u, delta, B, C))
        length, batch, d = ut.shape
        starts = list(range(0, length, chunk_size))
        h = u.new_zeros(batch, d, A.shape[1])
        h0s = u.new_empty(len(starts), batch, d, A.shape[1])
        y = u.new_empty(length, batch, d)
        for i, t0 in enumerate(starts):
            t1 = min(t0 + chunk_size, length)
            h0s[i] = h
            hs, _ = _chunk_states(dt[t0:t1], ut[t0:t1], A, Bt[t0:t1], h)
            y[t0:t1] = torch.einsum("tbdn,tbn->tbd", hs, Ct[t0:t1])
            h = hs[-1].clone()
        ctx.save_for_backward(u, delta, A, B, C, h0s)
        ctx.chunk_size = chunk_size
        return y.permute(1, 2, 0).contiguous()

    @staticmethod
    def backward(ctx, gy):
        u, delta, A, B, C, h0s = ctx.saved_tensors
        chunk_size = ctx.chunk_size
        ut, dt, Bt, Ct, gyt = (t.permute(2, 0, 1).contiguous() for t in (u, delta, B, C, gy))
        length = ut.shape[0]
        gu, gdelta = torch.empty_like(ut), torch.empty_like(dt)
        gB, gC = torch.empty_like(Bt), torch.empty_like(Ct)
        gA = torch.zeros_like(A)
        carry = torch.zeros_like(h0s[0])  # dL/dh at the last token of the chunk, coming from later chunks
        starts = list(range(0, length, chunk_size))
        for i in reversed(range(len(starts))):
            t0 = starts[i]
            t1 = min(t0 + chunk_size, length)
            d_c, u_c, B_c, C_c, gy_c = dt[t0:t1], ut[t0:t1], Bt[t0:t1], Ct[t0:t1], gyt[t0:t1]
            hs, dA = _chunk_states(d_c, u_c, A, B_c, h0s[i])
            gC[t0:t1] = torch.einsum("tbd,tbdn->tbn", gy_c, hs)
            # adjoint recurrence: G_t = gy_t C_t + exp(Δ_{t+1} A) G_{t+1}
            G = torch.empty_like(hs)
            torch.mul(gy_c.unsqueeze(-1), C_c.unsqueeze(2), out=G)
            Gs, dAs = G.unbind(0), dA.unbind(0)
            Gs[-1].add_(carry)
            for t in range(len(Gs) - 2, -1, -1):
                Gs[t].addcmul_(dAs[t + 1], Gs[t + 1])
            carry = dAs[0] * Gs[0]
            # through dA_t = exp(Δ_t A): dL/ddA_t = G_t h_{t-1}
            hprev = torch.cat([h0s[i].unsqueeze(0), hs[:-1]], dim=0)
            gdA = hprev.mul_(G).mul_(dA)  # G_t h_{t-1} exp(Δ_t A), reusing hprev's memory
            del hs, dA
            gd = torch.einsum("tbdn,dn->tbd", gdA, A)
            gA += torch.einsum("tbdn,tbd->dn", gdA, d_c)
            del gdA
            # through Δ_t u_t B_t
            GB = torch.einsum("tbdn,tbn->tbd", G, B_c)
            gB[t0:t1] = torch.einsum("tbdn,tbd->tbn", G, d_c * u_c)
            gdelta[t0:t1] = gd + GB * u_c
            gu[t0:t1] = GB * d_c
        return (
            gu.permute(1, 2, 0),
            gdelta.permute(1, 2, 0),
            gA,
            gB.permute(1, 2, 0),
            gC.permute(1, 2, 0),
            None,
        )


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    *,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int = 128,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Mamba-1 selective scan (same semantics as ``mamba_ssm``'s ``selective_scan_fn``).

    With ``Δ = softplus(delta + delta_bias)`` (softplus only if ``delta_softplus``), for every channel ``d``::

        h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t        (state of size N per channel)
        y_t = C_t · h_t + D u_t,   out = y ⊙ silu(z)     (gate only when z is given)

    Parameters
    ----------
    u
        Input, ``(batch, d, length)``.
    delta
        Step sizes before bias/softplus, ``(batch, d, length)``.
    A
        State matrix (diagonal), ``(d, n)``; negative for a stable scan (``-exp(A_log)``).
    B, C
        Input-dependent input and output projections, ``(batch, n, length)``.
    D
        Skip connection, ``(d,)``.
    z
        Gate, ``(batch, d, length)``.
    delta_bias
        ``(d,)``, added to ``delta`` before the softplus.
    delta_softplus
        Apply softplus to ``delta + delta_bias``.
    chunk_size
        Tokens per chunk of the CPU scan (memory ``O(chunk_size · d · n)`` for the working set).
    backend
        ``"auto"``, ``"torch"`` or ``"cuda"``; see :func:`resolve_backend`.

    Returns
    -------
    torch.Tensor
        ``(batch, d, length)``, in the dtype of ``u``.
    """
    if resolve_backend(u, backend, kernel="selective_scan") == "cuda":
        return cuda_kernels().selective_scan(
            u.contiguous(),
            delta.contiguous(),
            A.contiguous(),
            B.contiguous(),
            C.contiguous(),
            D,
            z,
            delta_bias,
            delta_softplus,
        )
    dtype = u.dtype
    work = torch.promote_types(dtype, torch.float32)
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    y = _SelectiveScanFn.apply(
        u.to(work), delta.to(work), A.to(work), B.to(work), C.to(work), max(int(chunk_size), 1)
    )
    if D is not None:
        y = y + u.to(work) * D[:, None].to(work)
    if z is not None:
        y = y * F.silu(z.to(work))
    return y.to(dtype)


# ------------------------------------------------------------------------------------------ Mamba-2 SSD


def ssd_chunk_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    *,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 64,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
    backend: Backend = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 scan by state space duality (same semantics as ``mamba_chunk_scan_combined``).

    With a scalar ``A`` per head and ``Δ = softplus(dt + dt_bias)``::

        h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_tᵀ       (state (headdim, n) per head)
        y_t = h_t C_t + D x_t

    computed chunk by chunk: inside a chunk as a masked (attention-like) product, across chunks by a recurrence
    on chunk states (Dao & Gu 2024, section 6 / ``ssd_minimal_discrete``).

    Parameters
    ----------
    x
        ``(batch, length, heads, headdim)``.
    dt
        ``(batch, length, heads)``.
    A
        ``(heads,)``, negative.
    B, C
        ``(batch, length, groups, n)``; heads are split evenly over groups.
    chunk_size
        Tokens per chunk.
    D
        ``(heads,)`` or ``(heads, headdim)`` skip connection.
    dt_bias
        ``(heads,)``, added to ``dt`` before the softplus.
    dt_softplus
        Apply softplus to ``dt + dt_bias``.
    initial_states
        ``(batch, heads, headdim, n)`` state before the first token (default zeros); with
        ``return_final_states`` this lets a long sequence be scanned segment by segment.
    return_final_states
        Also return the state after the last token.
    backend
        ``"auto"``, ``"torch"`` or ``"cuda"``; see :func:`resolve_backend`.

    Returns
    -------
    torch.Tensor or tuple
        ``y``, ``(batch, length, heads, headdim)``; with ``return_final_states``, ``(y, final_states)`` with
        ``final_states`` of shape ``(batch, heads, headdim, n)``.
    """
    if resolve_backend(x, backend, kernel="ssd") == "cuda":
        return cuda_kernels().ssd(
            x,
            dt,
            A,
            B,
            C,
            chunk_size,
            D=D,
            dt_bias=dt_bias,
            dt_softplus=dt_softplus,
            initial_states=initial_states,
            return_final_states=return_final_states,
        )
    dtype = x.dtype
    work = torch.promote_types(dtype, torch.float32)
    x, dt, A, B, C = (t.to(work) for t in (x, dt, A, B, C))
    batch, length, heads, headdim = x.shape
    groups, n = B.shape[2], B.shape[3]
    if heads % groups:
        msg = f"the number of heads ({heads}) must be divisible by the number of groups ({groups})."
        raise ValueError(msg)
    k = heads // groups
    if dt_bias is not None:
        dt = dt + dt_bias.to(work)
    if dt_softplus:
        dt = F.softplus(dt)
    T = int(chunk_size)
    pad = (-length) % T
    xd = x * dt.unsqueeze(-1)  # Δ x
    a = dt * A  # log decay per token, (b, l, h)
    if pad:  # zero input and zero log-decay at the end: causal, so earlier outputs are unchanged
        xd, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xd, B, C))
        a = F.pad(a, (0, 0, 0, pad))
    c = (length + pad) // T
    xd = xd.reshape(batch, c, T, groups, k, headdim)
    B = B.reshape(batch, c, T, groups, n)
    C = C.reshape(batch, c, T, groups, n)
    a_cum = torch.cumsum(a.reshape(batch, c, T, groups, k).permute(0, 3, 4, 1, 2), dim=-1)  # (b, g, k, c, T)
    # 1. inside each chunk: y_l = sum_{s<=l} (C_l . B_s) exp(a_cum_l - a_cum_s) Δ_s x_s
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device))
    decay = (a_cum.unsqueeze(-1) - a_cum.unsqueeze(-2)).masked_fill(~causal, float("-inf")).exp()
    scores = torch.einsum("bclgn,bcsgn->bgcls", C, B).unsqueeze(2) * decay  # (b, g, k, c, T, T)
    y = torch.einsum("bgkcls,bcsgkp->bclgkp", scores, xd)
    del scores, decay
    # 2. state at the end of each chunk from that chunk's inputs
    to_end = torch.exp(a_cum[..., -1:] - a_cum).permute(0, 3, 4, 1, 2).unsqueeze(-1)  # (b, c, T, g, k, 1)
    states = torch.einsum("bclgkp,bclgn->bcgkpn", xd * to_end, B)
    # 3. recurrence across chunks (one step per chunk; unbind/stack keep autograd linear)
    chunk_decay = torch.exp(a_cum[..., -1]).unsqueeze(-1).unsqueeze(-1)  # (b, g, k, c, 1, 1)
    if initial_states is None:
        prev = torch.zeros_like(states[:, 0])
    else:
        prev = initial_states.to(work).reshape(batch, groups, k, headdim, n)
    entering = []
    for s_c, d_c in zip(states.unbind(1), chunk_decay.unbind(3), strict=True):
        entering.append(prev)
        prev = d_c * prev + s_c
    entering = torch.stack(entering, dim=1)  # state before each chunk, (b, c, g, k, p, n)
    # 4. contribution of the entering state: C_l h exp(a_cum_l)
    from_start = torch.exp(a_cum).permute(0, 3, 4, 1, 2).unsqueeze(-1)  # (b, c, T, g, k, 1)
    y = y + torch.einsum("bclgn,bcgkpn->bclgkp", C, entering) * from_start
    y = y.reshape(batch, c * T, heads, headdim)[:, :length]
    if D is not None:
        Dw = D.to(work)
        y = y + x * (Dw[:, None] if Dw.ndim == 1 else Dw)
    if return_final_states:  # padded tokens decay by exp(0) = 1 and add nothing: prev is the state at the end
        return y.to(dtype), prev.reshape(batch, heads, headdim, n).to(dtype)
    return y.to(dtype)
