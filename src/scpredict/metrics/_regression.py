"""Row-wise regression metrics between predicted and true profiles (vectorised numpy).

Every function takes ``pred`` and ``true`` of shape (n_genes,) or (n_profiles, n_genes) and returns a float or
an array (n_profiles,): one value per profile (per perturbation), computed over genes.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["mse", "mae", "pearson", "r2_mean", "r2_scgen"]


def _pair(pred: ArrayLike, true: ArrayLike) -> tuple[np.ndarray, np.ndarray, bool]:
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"pred and true must have the same shape, got {p.shape} and {t.shape}.")
    if p.ndim not in (1, 2):
        raise ValueError(f"expected 1-D (genes) or 2-D (profiles x genes) arrays, got {p.ndim}-D.")
    if p.shape[-1] == 0:
        raise ValueError("pred and true have no genes.")
    single = p.ndim == 1
    return np.atleast_2d(p), np.atleast_2d(t), single


def _out(values: np.ndarray, *, single: bool) -> float | np.ndarray:
    return float(values[0]) if single else values


def mse(pred: ArrayLike, true: ArrayLike) -> float | np.ndarray:
    """Mean squared error over genes, per profile.

    .. math:: \\mathrm{MSE} = \\frac{1}{G}\\sum_g (\\hat y_g - y_g)^2

    Parameters
    ----------
    pred, true
        Predicted and true mean profiles, (n_genes,) or (n_profiles, n_genes).

    Returns
    -------
    A float for 1-D input, else an array (n_profiles,).

    Examples
    --------
    >>> mse([1.0, 2.0], [1.0, 4.0])
    2.0
    """
    p, t, single = _pair(pred, true)
    return _out(np.mean((p - t) ** 2, axis=1), single=single)


def mae(pred: ArrayLike, true: ArrayLike) -> float | np.ndarray:
    """Mean absolute error over genes, per profile (cell-eval / Virtual Cell Challenge ``mae`` on means).

    .. math:: \\mathrm{MAE} = \\frac{1}{G}\\sum_g |\\hat y_g - y_g|

    Parameters
    ----------
    pred, true
        Predicted and true mean profiles, (n_genes,) or (n_profiles, n_genes).

    Returns
    -------
    A float for 1-D input, else an array (n_profiles,).

    Examples
    --------
    >>> mae([1.0, 2.0], [2.0, 4.0])
    1.5
    """
    p, t, single = _pair(pred, true)
    return _out(np.mean(np.abs(p - t), axis=1), single=single)


def _rowwise_pearson(
    p: np.ndarray, t: np.ndarray, *, scale_p: np.ndarray | None = None, scale_t: np.ndarray | None = None
) -> np.ndarray:
    """Pearson r of each row pair; NaN where a row is constant. ``scale_*`` (per row): magnitude of the values a
    row was derived from (e.g. the profiles behind a Δ); a row whose spread is below float32 rounding of that
    magnitude (RMS deviation ≤ 1e-6 · scale) counts as constant."""
    pc = p - p.mean(axis=1, keepdims=True)
    tc = t - t.mean(axis=1, keepdims=True)
    ssp, sst = np.sum(pc**2, axis=1), np.sum(tc**2, axis=1)
    n = p.shape[1]
    flat = np.zeros(len(p), dtype=bool)
    if scale_p is not None:
        flat |= np.sqrt(ssp / n) <= 1e-6 * np.maximum(scale_p, 1.0)
    if scale_t is not None:
        flat |= np.sqrt(sst / n) <= 1e-6 * np.maximum(scale_t, 1.0)
    num = np.sum(pc * tc, axis=1)
    den = np.sqrt(ssp * sst)
    ok = (den > 0) & ~flat
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(ok, num / np.where(ok, den, 1.0), np.nan)
    return np.clip(r, -1.0, 1.0)


def pearson(pred: ArrayLike, true: ArrayLike) -> float | np.ndarray:
    """Pearson correlation over genes between predicted and true mean expression, per profile.

    .. math:: r = \\frac{\\sum_g (\\hat y_g-\\bar{\\hat y})(y_g-\\bar y)}
                  {\\sqrt{\\sum_g (\\hat y_g-\\bar{\\hat y})^2 \\sum_g (y_g-\\bar y)^2}}

    GEARS (Roohani et al., Nat Biotechnol 2024) ``pearson``. NaN when either profile is constant.

    Parameters
    ----------
    pred, true
        Predicted and true mean profiles, (n_genes,) or (n_profiles, n_genes).

    Returns
    -------
    A float for 1-D input, else an array (n_profiles,).

    Examples
    --------
    >>> pearson([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    1.0
    """
    p, t, single = _pair(pred, true)
    return _out(_rowwise_pearson(p, t), single=single)


def r2_mean(pred: ArrayLike, true: ArrayLike) -> float | np.ndarray:
    """Coefficient of determination of the mean profile over genes (CPA's ``r2_mean``), per profile.

    .. math:: R^2 = 1 - \\frac{\\sum_g (y_g - \\hat y_g)^2}{\\sum_g (y_g - \\bar y)^2}

    As ``sklearn.metrics.r2_score(true_mean, pred_mean)`` (Lotfollahi et al., Mol Syst Biol 2023, CPA): 1 for
    a perfect prediction of a constant truth, 0 for an imperfect one.

    Parameters
    ----------
    pred, true
        Predicted and true mean profiles, (n_genes,) or (n_profiles, n_genes).

    Returns
    -------
    A float for 1-D input, else an array (n_profiles,).

    Examples
    --------
    >>> r2_mean([1.0, 2.0, 4.0], [1.0, 2.0, 3.0])
    0.5
    """
    p, t, single = _pair(pred, true)
    ss_res = np.sum((t - p) ** 2, axis=1)
    ss_tot = np.sum((t - t.mean(axis=1, keepdims=True)) ** 2, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(
            ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.where(ss_res == 0, 1.0, 0.0)
        )
    return _out(r2, single=single)


def r2_scgen(pred: ArrayLike, true: ArrayLike) -> float | np.ndarray:
    """Squared Pearson correlation of the mean profiles over genes (scGen's R², Lotfollahi et al., Nat Methods
    2019: ``scipy.stats.linregress(true_mean, pred_mean).rvalue ** 2``), per profile.

    .. math:: R^2_{\\mathrm{scGen}} = r(\\hat y, y)^2

    Parameters
    ----------
    pred, true
        Predicted and true mean profiles, (n_genes,) or (n_profiles, n_genes).

    Returns
    -------
    A float for 1-D input, else an array (n_profiles,).

    Examples
    --------
    >>> round(r2_scgen([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]), 3)
    0.25
    """
    p, t, single = _pair(pred, true)
    return _out(_rowwise_pearson(p, t) ** 2, single=single)
