"""Selective scans, Mamba blocks, NB likelihood and Fourier features (scpredict.nn)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import nbinom

from scpredict.nn._fourier import FourierFeatures
from scpredict.nn._likelihood import nb_log_prob, nb_nll
from scpredict.nn._mamba import BiMamba, BiMambaBlock, Mamba, Mamba2
from scpredict.nn._scan import causal_conv1d, resolve_backend, selective_scan, ssd_chunk_scan

F64 = torch.float64


def _naive_mamba1(u, delta, A, B, C, D, z, delta_bias):
    """Mamba-1 recurrence written out token by token (Gu & Dao 2023, eq. 2a-2b with ZOH on A, Euler on B)."""
    delta = F.softplus(delta + delta_bias[:, None])
    b, d, length = u.shape
    h = torch.zeros(b, d, A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(length):
        dA = torch.exp(delta[:, :, t, None] * A)
        h = dA * h + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) + D[:, None] * u
    return y * F.silu(z)


def _naive_mamba2(x, dt, A, B, C, D, dt_bias):
    """Mamba-2 recurrence with a scalar decay per head, token by token."""
    dt = F.softplus(dt + dt_bias)
    b, length, h, p = x.shape
    k = h // B.shape[2]
    B, C = B.repeat_interleave(k, dim=2), C.repeat_interleave(k, dim=2)
    state = torch.zeros(b, h, p, B.shape[-1], dtype=x.dtype)
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t, :, None, None] * A[:, None, None])
        state = decay * state + dt[:, t, :, None, None] * x[:, t, :, :, None] * B[:, t, :, None, :]
        ys.append((state * C[:, t, :, None, :]).sum(-1))
    return torch.stack(ys, dim=1) + D[:, None] * x


def _leaves(*shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, dtype=F64, generator=gen).requires_grad_() for s in shapes]


@pytest.mark.parametrize("chunk_size", [1, 8, 64])
def test_selective_scan_matches_naive_outputs_and_gradients(chunk_size):
    b, d, n, length = 2, 5, 4, 37
    u, delta, B, C, z, A_log, D, bias = _leaves(
        (b, d, length), (b, d, length), (b, n, length), (b, n, length), (b, d, length), (d, n), (d,), (d,)
    )
    leaves = [u, delta, B, C, z, A_log, D, bias]
    ref = _naive_mamba1(u, delta, -torch.exp(A_log), B, C, D, z, bias)
    out = selective_scan(
        u,
        delta,
        A=-torch.exp(A_log),
        B=B,
        C=C,
        D=D,
        z=z,
        delta_bias=bias,
        delta_softplus=True,
        chunk_size=chunk_size,
        backend="torch",
    )
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    g = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(ref, leaves, g), strict=True):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("chunk_size", "groups"), [(8, 1), (16, 2), (64, 1)])
def test_ssd_matches_naive_outputs_and_gradients(chunk_size, groups):
    b, length, h, p, n = 2, 29, 4, 3, 5
    x, dt, B, C, D, bias = _leaves(
        (b, length, h, p), (b, length, h), (b, length, groups, n), (b, length, groups, n), (h,), (h,), seed=1
    )
    A = -torch.linspace(0.2, 3.0, h, dtype=F64)
    leaves = [x, dt, B, C, D, bias]
    ref = _naive_mamba2(x, dt, A, B, C, D, bias)
    out = ssd_chunk_scan(x, dt, A=A, B=B, C=C, chunk_size=chunk_size, D=D, dt_bias=bias, dt_softplus=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    g = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(ref, leaves, g), strict=True):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=0)


def test_ssd_initial_and_final_states_continue_the_scan():
    b, length, h, p, n = 2, 29, 4, 3, 5
    x, dt, B, C, D, bias = _leaves(
        (b, length, h, p), (b, length, h), (b, length, 2, n), (b, length, 2, n), (h,), (h,), seed=3
    )
    A = -torch.linspace(0.2, 3.0, h, dtype=F64)
    leaves = [x, dt, B, C, D, bias]
    ref = _naive_mamba2(x, dt, A, B, C, D, bias)
    kw = {"A": A, "chunk_size": 8, "D": D, "dt_bias": bias, "dt_softplus": True}
    cut = 13  # not a multiple of the chunk size
    y1, state = ssd_chunk_scan(
        x[:, :cut], dt[:, :cut], B=B[:, :cut], C=C[:, :cut], return_final_states=True, **kw
    )
    assert state.shape == (b, h, p, n)
    y2 = ssd_chunk_scan(x[:, cut:], dt[:, cut:], B=B[:, cut:], C=C[:, cut:], initial_states=state, **kw)
    out = torch.cat([y1, y2], dim=1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    g = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(ref, leaves, g), strict=True):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=0)


def test_mamba2_segments_equal_one_pass(monkeypatch):
    import scpredict.nn._mamba as mamba_module

    lengths = []

    def spy(x, *args, **kwargs):
        lengths.append(x.shape[1])
        return ssd_chunk_scan(x, *args, **kwargs)

    monkeypatch.setattr(mamba_module, "ssd_chunk_scan", spy)
    torch.manual_seed(0)
    seg = Mamba2(16, d_state=8, headdim=8, chunk_size=8, segment_length=11).double()
    one = Mamba2(16, d_state=8, headdim=8, chunk_size=8, segment_length=None).double()
    one.load_state_dict(seg.state_dict())
    x = torch.randn(2, 40, 16, dtype=F64, requires_grad=True)
    out_seg, out_one = seg(x), one(x)
    torch.testing.assert_close(out_seg, out_one, atol=1e-10, rtol=0)
    g = torch.randn_like(out_one)
    gs = torch.autograd.grad(out_seg, [x, *seg.parameters()], g)
    go = torch.autograd.grad(out_one, [x, *one.parameters()], g)
    for a, r in zip(gs, go, strict=True):  # A_log goes through float32 (as in mamba_ssm): rtol 1e-6
        torch.testing.assert_close(a, r, atol=1e-8, rtol=1e-6)
    assert lengths == [10, 10, 10, 10, 40]  # four equal segments, then the one pass


def test_causal_conv1d_equals_conv1d_and_is_causal():
    x, w, bias = _leaves((2, 6, 15), (6, 1, 4), (6,), seed=2)
    ref = F.silu(F.conv1d(x, w, bias, padding=3, groups=6)[..., :15])
    out = causal_conv1d(x, w, bias, activation="silu")
    torch.testing.assert_close(out, ref)
    x2 = x.detach().clone()
    x2[..., 10] += 1.0
    changed = (causal_conv1d(x2, w, bias) - out).abs().amax(dim=(0, 1)) > 0
    assert not changed[:10].any() and changed[10:14].all()


@pytest.mark.parametrize("ssm", ["mamba1", "mamba2"])
def test_reverse_direction_carries_later_tokens_to_earlier_positions(ssm):
    torch.manual_seed(0)
    kw = {"d_state": 8} if ssm == "mamba1" else {"d_state": 8, "headdim": 8, "chunk_size": 8}
    uni = (Mamba if ssm == "mamba1" else Mamba2)(16, **kw).double()
    bi = BiMamba(16, ssm=ssm, shared_weights=False, **kw).double()
    x = torch.randn(2, 40, 16, dtype=F64)
    x2 = x.clone()
    x2[:, -1] += 3.0  # change only the last token
    uni_diff = (uni(x2) - uni(x)).abs().amax(dim=(0, 2))
    bi_diff = (bi(x2) - bi(x)).abs().amax(dim=(0, 2))
    assert uni_diff[:-1].max() == 0  # a forward scan is causal
    assert bi_diff[0] > 1e-6  # the reverse scan reaches position 0
    # and the reverse branch alone is anti-causal: a change at token 0 never reaches later positions
    x3 = x.clone()
    x3[:, 0] += 3.0
    rev = bi.rev
    diff_rev = (rev(x3.flip(1)).flip(1) - rev(x.flip(1)).flip(1)).abs().amax(dim=(0, 2))
    assert diff_rev[1:].max() == 0 and diff_rev[0] > 0


def test_shared_weights_bimamba_equals_two_explicit_scans():
    torch.manual_seed(0)
    bi = BiMamba(16, d_state=4, shared_weights=True).double()
    x = torch.randn(3, 21, 16, dtype=F64)
    expected = bi.fwd(x) + bi.fwd(x.flip(1)).flip(1)
    torch.testing.assert_close(bi(x), expected)
    assert bi.rev is None


def test_parameter_names_and_shapes_match_mamba_ssm():
    m = Mamba(64, d_state=16, d_conv=4, expand=2)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {  # mamba_ssm.Mamba(d_model=64) state dict
        "in_proj.weight": (256, 64),
        "conv1d.weight": (128, 1, 4),
        "conv1d.bias": (128,),
        "x_proj.weight": (4 + 32, 128),
        "dt_proj.weight": (128, 4),
        "dt_proj.bias": (128,),
        "A_log": (128, 16),
        "D": (128,),
        "out_proj.weight": (64, 128),
    }
    m2 = Mamba2(64, d_state=16, headdim=32)
    shapes2 = {k: tuple(v.shape) for k, v in m2.state_dict().items()}
    assert shapes2 == {  # mamba_ssm.Mamba2(d_model=64, d_state=16, headdim=32): 4 heads, 1 group
        "dt_bias": (4,),
        "A_log": (4,),
        "D": (4,),
        "in_proj.weight": (2 * 128 + 2 * 16 + 4, 64),
        "conv1d.weight": (128 + 32, 1, 4),
        "conv1d.bias": (128 + 32,),
        "norm.weight": (128,),
        "out_proj.weight": (64, 128),
    }
    # softplus(dt bias) is initialised in [dt_min, dt_max]
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001


def test_cpu_tensors_take_the_torch_path_without_importing_kernels():
    x = torch.zeros(1, 2, 3)
    assert resolve_backend(x, "auto") == "torch"
    assert resolve_backend(x, "torch", kernel="ssd") == "torch"
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        resolve_backend(x, "cuda")
    with pytest.raises(ValueError, match="backend must be"):
        resolve_backend(x, "gpu")  # type: ignore[arg-type]
    assert "mamba_ssm" not in sys.modules and "causal_conv1d" not in sys.modules
    blk = BiMambaBlock(8, d_state=4, backend="cuda")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        blk(torch.zeros(1, 5, 8))


def test_scan_backward_is_linear_in_length():
    """No per-token autograd nodes: the graph of a long scan has a constant number of nodes."""

    def n_nodes(length):
        u = torch.randn(1, 4, length, requires_grad=True)
        y = selective_scan(
            u,
            torch.randn(1, 4, length),
            A=-torch.ones(4, 2),
            B=torch.randn(1, 2, length),
            C=torch.randn(1, 2, length),
            delta_softplus=True,
            chunk_size=16,
        )
        seen, stack = set(), [y.grad_fn]
        while stack:
            fn = stack.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            stack.extend(f for f, _ in fn.next_functions)
        return len(seen)

    assert n_nodes(64) == n_nodes(1024)


def test_nb_log_prob_equals_scipy():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 200, size=50).astype(np.float64)
    mu = rng.uniform(0.01, 100, size=50)
    theta = rng.uniform(0.05, 50, size=50)
    ours = nb_log_prob(
        torch.tensor(x), log_mu=torch.tensor(np.log(mu)), log_theta=torch.tensor(np.log(theta))
    )
    np.testing.assert_allclose(
        ours.numpy(), nbinom.logpmf(x, theta, theta / (theta + mu)), rtol=1e-10, atol=1e-10
    )


def test_nb_nll_library_size_scales_the_mean():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 30, size=(4, 6)).astype(np.float64)
    mean_log = np.log(rng.uniform(0.1, 5, size=6))
    disp_log = np.log(rng.uniform(0.5, 5, size=6))
    lib = np.array([0.5, 1.0, 2.0, 4.0])
    nll = nb_nll(
        torch.tensor(x),
        torch.tensor(mean_log),
        torch.tensor(disp_log),
        library_size=torch.tensor(lib),
        reduction="none",
    )
    mu = lib[:, None] * np.exp(mean_log)
    theta = np.exp(disp_log)
    np.testing.assert_allclose(nll.numpy(), -nbinom.logpmf(x, theta, theta / (theta + mu)), rtol=1e-10)
    assert float(nb_nll(torch.tensor(x), torch.tensor(mean_log), torch.tensor(disp_log))) == pytest.approx(
        float(
            -nb_log_prob(
                torch.tensor(x), log_mu=torch.tensor(mean_log), log_theta=torch.tensor(disp_log)
            ).mean()
        )
    )


def test_fourier_features_shape_and_values():
    ff = FourierFeatures(4, max_frequency=8.0)
    x = torch.tensor([0.0, 0.125, 0.5])
    out = ff(x)
    assert out.shape == (3, 8) and ff.n_features == 8
    torch.testing.assert_close(ff.frequencies, torch.tensor([1.0, 2.0, 4.0, 8.0]))
    torch.testing.assert_close(out[:, 0], torch.sin(2 * torch.pi * x))
    torch.testing.assert_close(out[:, 7], torch.cos(2 * torch.pi * 8 * x))
