"""Reusable torch building blocks (selective scan, Mamba blocks, likelihoods, noise schedules, ...).

Importing this namespace imports torch; ``import scpredict`` does not import it.
"""

from ._diffusion import NoiseSchedule, ddim_invert, ddim_sample, ddpm_sample, euler_maruyama_sample
from ._fourier import FourierFeatures
from ._likelihood import nb_log_prob, nb_nll
from ._mamba import BiMamba, BiMambaBlock, GatedRMSNorm, Mamba, Mamba2
from ._scan import causal_conv1d, cuda_kernels, resolve_backend, selective_scan, ssd_chunk_scan

__all__ = [
    "BiMamba",
    "BiMambaBlock",
    "FourierFeatures",
    "GatedRMSNorm",
    "Mamba",
    "Mamba2",
    "NoiseSchedule",
    "causal_conv1d",
    "cuda_kernels",
    "ddim_invert",
    "ddim_sample",
    "ddpm_sample",
    "euler_maruyama_sample",
    "nb_log_prob",
    "nb_nll",
    "resolve_backend",
    "selective_scan",
    "ssd_chunk_scan",
]
