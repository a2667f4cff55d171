"""Perturbation-prediction metrics (GEARS/scGPT, CPA, scGen, Ahlmann-Eltze et al., cell-eval / Virtual Cell
Challenge), vectorised over perturbations.

Conventions: profiles are *means of log-normalized expression*; ``pred``/``true`` are (n_genes,) or
(n_perturbations, n_genes); ``control`` is the mean control profile of the same covariate, (n_genes,) or one
row per perturbation; Δ = profile − control. ``de_genes`` holds, per perturbation, gene indices ordered from
most to least differentially expressed (as :func:`scpredict.tl.evaluate_perturbations` computes them once per
dataset with scanpy's ``rank_genes_groups`` against the control, ranked by ``|score|``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp_sparse
from numpy.typing import ArrayLike

from ._regression import _pair, _rowwise_pearson, mse, r2_mean

__all__ = [
    "DEResult",
    "mse_de20",
    "pearson_delta",
    "pearson_delta_de20",
    "r2_mean_de",
    "l2_top1000",
    "direction_de20",
    "wilcoxon_de",
    "des",
    "pds",
    "vcc_score",
]


# ---------------------------------------------------------------------------------------------- helpers
def _control(control: ArrayLike, shape: tuple[int, int]) -> np.ndarray:
    c = np.asarray(control, dtype=np.float64)
    c = np.atleast_2d(c)
    if c.shape[1] != shape[1] or c.shape[0] not in (1, shape[0]):
        raise ValueError(
            f"control must be (n_genes,) or (n_profiles, n_genes) matching {shape}, got {c.shape}."
        )
    return np.broadcast_to(c, shape)


def _top(
    de_genes: ArrayLike | Sequence[Sequence[int]], *, n_rows: int, n_genes: int, k: int
) -> list[np.ndarray]:
    """First ``k`` DE gene indices of each row."""
    if k < 1:
        raise ValueError(f"the number of DE genes must be >= 1, got {k}.")
    if isinstance(de_genes, np.ndarray) and de_genes.ndim == 1 and n_rows == 1:
        rows = [de_genes]
    elif isinstance(de_genes, np.ndarray) and de_genes.ndim == 2:
        rows = list(de_genes)
    else:
        seq = list(de_genes)  # type: ignore[arg-type]
        rows = (
            [np.asarray(seq)] if n_rows == 1 and seq and np.isscalar(seq[0]) else [np.asarray(r) for r in seq]
        )
    if len(rows) != n_rows:
        raise ValueError(f"de_genes has {len(rows)} rows but there are {n_rows} profiles.")
    out = []
    for r in rows:
        r = np.asarray(r, dtype=np.int64)[:k]
        if r.size == 0:
            raise ValueError("a perturbation has no DE genes.")
        if r.min() < 0 or r.max() >= n_genes:
            raise ValueError(f"de_genes indices must lie in [0, {n_genes}).")
        out.append(r)
    return out


def _per_row(fn, p: np.ndarray, t: np.ndarray, *, idx: list[np.ndarray], single: bool):
    vals = np.array([float(fn(p[i, g], t[i, g])) for i, g in enumerate(idx)])
    return float(vals[0]) if single else vals


# ---------------------------------------------------------------------------------------------- GEARS/CPA
def mse_de20(
    pred: ArrayLike, true: ArrayLike, *, de_genes: ArrayLike | Sequence[Sequence[int]], n_genes: int = 20
) -> float | np.ndarray:
    """MSE over the top-20 DE genes of each perturbation (GEARS ``mse_de``, Roohani et al., Nat Biotechnol 2024).

    .. math:: \\frac{1}{20}\\sum_{g \\in \\mathrm{DE}_{20}} (\\hat y_g - y_g)^2

    Parameters
    ----------
    pred, true
        Predicted and true mean profiles, (n_genes,) or (n_perturbations, n_genes).
    de_genes
        Per perturbation, gene indices ranked by differential expression (most DE first).
    n_genes
        How many top DE genes to use.

    Returns
    -------
    A float for 1-D input, else an array (n_perturbations,).

    Examples
    --------
    >>> mse_de20([0.0, 1.0, 5.0], [0.0, 3.0, 5.0], de_genes=[1, 2], n_genes=2)
    2.0
    """
    p, t, single = _pair(pred, true)
    idx = _top(de_genes, n_rows=p.shape[0], n_genes=p.shape[1], k=n_genes)
    return _per_row(mse, p, t, idx=idx, single=single)


def pearson_delta(pred: ArrayLike, true: ArrayLike, control: ArrayLike) -> float | np.ndarray:
    """Pearson correlation of predicted and true changes against control (GEARS/scGPT ``pearson_delta``).

    .. math:: r(\\hat y - c,\\; y - c)

    NaN when a Δ is constant, counting differences within float32 rounding of the profiles as 0 (e.g. the
    control baseline, whose Δ is 0 up to rounding).

    Parameters
    ----------
    pred, true
        Predicted and true mean profiles, (n_genes,) or (n_perturbations, n_genes).
    control
        Mean control profile (same covariate), (n_genes,) or one row per perturbation.

    Returns
    -------
    A float for 1-D input, else an array (n_perturbations,).

    Examples
    --------
    >>> pearson_delta([2.0, 1.0, 3.0], [3.0, 1.0, 5.0], [1.0, 1.0, 1.0])
    1.0
    """
    p, t, single = _pair(pred, true)
    c = _control(control, p.shape)
    mag_p = np.maximum(np.abs(p).max(axis=1), np.abs(c).max(axis=1))
    mag_t = np.maximum(np.abs(t).max(axis=1), np.abs(c).max(axis=1))
    r = _rowwise_pearson(p - c, t - c, scale_p=mag_p, scale_t=mag_t)
    return float(r[0]) if single else r


def pearson_delta_de20(
    pred: ArrayLike,
    true: ArrayLike,
    control: ArrayLike,
    *,
    de_genes: ArrayLike | Sequence[Sequence[int]],
    n_genes: int = 20,
) -> float | np.ndarray:
    """Pearson correlation of Δ over the top-20 DE genes (GEARS/scGPT ``pearson_de_delta``).

    .. math:: r\\big((\\hat y - c)_{\\mathrm{DE}_{20}},\\; (y - c)_{\\mathrm{DE}_{20}}\\big)

    Parameters
    ----------
    pred, true
        Predicted and true mean profiles, (n_genes,) or (n_perturbations, n_genes).
    control
        Mean control profile, (n_genes,) or one row per perturbation.
    de_genes
        Per perturbation, gene indices ranked by differential expression (most DE first).
    n_genes
        How many top DE genes to use.

    Returns
    -------
    A float for 1-D input, else an array (n_perturbations,).

    Examples
    --------
    >>> pearson_delta_de20([9.0, 2.0, 3.0], [0.0, 2.0, 3.0], [1.0, 1.0, 1.0], de_genes=[1, 2], n_genes=2)
    1.0
    """
    p, t, single = _pair(pred, true)
    c = _control(control, p.shape)
    idx = _top(de_genes, n_rows=p.shape[0], n_genes=p.shape[1], k=n_genes)
    vals = np.array(
        [
            _rowwise_pearson(
                (p[i] - c[i])[g][None],
                (t[i] - c[i])[g][None],
                scale_p=np.array([max(np.abs(p[i, g]).max(), np.abs(c[i, g]).max())]),
                scale_t=np.array([max(np.abs(t[i, g]).max(), np.abs(c[i, g]).max())]),
            )[0]
            for i, g in enumerate(idx)
        ]
    )
    return float(vals[0]) if single else vals


def r2_mean_de(
    pred: ArrayLike, true: ArrayLike, *, de_genes: ArrayLike | Sequence[Sequence[int]], k: int = 50
) -> float | np.ndarray:
    """CPA's ``r2_mean_de``: :func:`~scpredict.metrics.r2_mean` restricted to the top-``k`` DE genes
    (Lotfollahi et al., Mol Syst Biol 2023).

    .. math:: 1 - \\frac{\\sum_{g\\in \\mathrm{DE}_k} (y_g - \\hat y_g)^2}{\\sum_{g\\in \\mathrm{DE}_k} (y_g - \\bar y_{\\mathrm{DE}_k})^2}

    Parameters
    ----------
    pred, true
        Predicted and true mean profiles, (n_genes,) or (n_perturbations, n_genes).
    de_genes
        Per perturbation, gene indices ranked by differential expression (most DE first).
    k
        Number of top DE genes.

    Returns
    -------
    A float for 1-D input, else an array (n_perturbations,).

    Examples
    --------
    >>> r2_mean_de([7.0, 1.0, 2.0, 4.0], [0.0, 1.0, 2.0, 3.0], de_genes=[1, 2, 3], k=3)
    0.5
    """
    p, t, single = _pair(pred, true)
    idx = _top(de_genes, n_rows=p.shape[0], n_genes=p.shape[1], k=k)
    return _per_row(r2_mean, p, t, idx=idx, single=single)


def l2_top1000(
    pred: ArrayLike, true: ArrayLike, control: ArrayLike, *, n_top: int = 1000
) -> float | np.ndarray:
    """L2 distance between predicted and true profiles over the ``n_top`` genes most expressed in the control
    (Ahlmann-Eltze, Huber & Anders, Nat Methods 2025).

    .. math:: \\sqrt{\\sum_{g \\in \\mathrm{top}_{1000}(c)} (\\hat y_g - y_g)^2}

    (equal to the distance between the predicted and true Δ). With fewer genes than ``n_top``, all are used.

    Parameters
    ----------
    pred, true
        Predicted and true mean profiles, (n_genes,) or (n_perturbations, n_genes).
    control
        Mean control profile, (n_genes,) or one row per perturbation (selects the genes).
    n_top
        Number of most expressed control genes.

    Returns
    -------
    A float for 1-D input, else an array (n_perturbations,).

    Examples
    --------
    >>> l2_top1000([3.0, 0.0, 9.0], [0.0, 4.0, 9.0], [5.0, 4.0, 0.0], n_top=2)
    5.0
    """
    p, t, single = _pair(pred, true)
    c = _control(control, p.shape)
    n = min(int(n_top), p.shape[1])
    top = np.argsort(-c, axis=1, kind="stable")[:, :n]
    d = np.take_along_axis(p - t, top, axis=1)
    vals = np.sqrt(np.sum(d**2, axis=1))
    return float(vals[0]) if single else vals


def direction_de20(
    pred: ArrayLike,
    true: ArrayLike,
    control: ArrayLike,
    *,
    de_genes: ArrayLike | Sequence[Sequence[int]],
    n_genes: int = 20,
) -> float | np.ndarray:
    """Fraction of the top-20 DE genes whose predicted change has the true sign (GEARS
    ``frac_correct_direction_20``).

    .. math:: \\frac{1}{20}\\sum_{g\\in \\mathrm{DE}_{20}} [\\operatorname{sign}(\\hat y_g - c_g) =
              \\operatorname{sign}(y_g - c_g)]

    Parameters
    ----------
    pred, true
        Predicted and true mean profiles, (n_genes,) or (n_perturbations, n_genes).
    control
        Mean control profile, (n_genes,) or one row per perturbation.
    de_genes
        Per perturbation, gene indices ranked by differential expression (most DE first).
    n_genes
        How many top DE genes to use.

    Returns
    -------
    A float for 1-D input, else an array (n_perturbations,).

    Examples
    --------
    >>> direction_de20([2.0, 0.0, 3.0], [3.0, 2.0, 0.0], [1.0, 1.0, 1.0], de_genes=[0, 1, 2], n_genes=3)
    0.3333333333333333
    """
    p, t, single = _pair(pred, true)
    c = _control(control, p.shape)
    idx = _top(de_genes, n_rows=p.shape[0], n_genes=p.shape[1], k=n_genes)
    vals = np.array(
        [np.mean(np.sign(p[i, g] - c[i, g]) == np.sign(t[i, g] - c[i, g])) for i, g in enumerate(idx)]
    )
    return float(vals[0]) if single else vals


# ---------------------------------------------------------------------------------------------- cell-eval
class DEResult(NamedTuple):
    """Per-gene differential expression of one group against the control (:func:`wilcoxon_de`).

    Attributes
    ----------
    log2fc
        log2 fold change of the pseudobulk means, (n_genes,).
    pvalue
        Two-sided Mann–Whitney U p-value, (n_genes,).
    fdr
        Benjamini–Hochberg adjusted p-value, (n_genes,).
    """

    log2fc: np.ndarray
    pvalue: np.ndarray
    fdr: np.ndarray


def _dense(x) -> np.ndarray:
    if sp_sparse.issparse(x):
        x = x.toarray()
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def wilcoxon_de(cells: ArrayLike, control: ArrayLike, *, is_log1p: bool = True) -> DEResult:
    """Differential expression of ``cells`` against ``control`` cells, gene by gene, as cell-eval computes it
    (through pdex; Arc Institute, Virtual Cell Challenge 2025).

    - p-value: two-sided Mann–Whitney U test, normal approximation with tie correction and continuity
      correction (``scipy.stats.mannwhitneyu(..., method="asymptotic")``); 1 for genes constant in both groups;
    - FDR: Benjamini–Hochberg over the genes of this comparison;
    - fold change: pseudobulk geometric means in count space, ``m = expm1(mean(X))`` for log1p data (``X``) or
      ``expm1(mean(log1p(X)))`` otherwise; ``log2fc = log2(m_cells / m_control)``, 0 where both are 0. Means are
      taken in the data's floating dtype, as pdex does.

    Parameters
    ----------
    cells
        Cells × genes of the group (dense or sparse).
    control
        Cells × genes of the control group.
    is_log1p
        Whether the values are log1p-normalized.

    Returns
    -------
    :class:`DEResult` with ``log2fc``, ``pvalue`` and ``fdr`` per gene.

    Examples
    --------
    >>> import numpy as np
    >>> res = wilcoxon_de(np.array([[3.0], [4.0], [5.0]]), np.array([[0.0], [1.0], [2.0]]))
    >>> round(float(res.pvalue[0]), 4)
    0.0809
    """
    x = _dense(cells)
    y = _dense(control)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"cells and control must be (n_cells, n_genes) with the same genes, got {x.shape}, {y.shape}."
        )
    if len(x) == 0 or len(y) == 0:
        raise ValueError("cells and control must each hold at least one cell.")

    def bulk(m: np.ndarray) -> np.ndarray:
        mean = m.mean(axis=0) if is_log1p else np.log1p(m).mean(axis=0)
        return np.expm1(mean)

    bx, by = bulk(x), bulk(y)
    with np.errstate(divide="ignore", invalid="ignore"):
        lfc = np.log2(bx / by)
    lfc[np.isnan(lfc)] = 0.0
    constant = (np.ptp(np.vstack([x, y]), axis=0) == 0) if len(x) + len(y) > 1 else np.ones(x.shape[1], bool)
    pval = np.ones(x.shape[1])
    test = ~constant
    if test.any():
        from scipy import stats

        res = stats.mannwhitneyu(
            x[:, test].astype(np.float64),
            y[:, test].astype(np.float64),
            axis=0,
            method="asymptotic",
            use_continuity=True,
            alternative="two-sided",
        )
        pval[test] = np.clip(res.pvalue, 0.0, 1.0)
    from scipy import stats

    fdr = stats.false_discovery_control(pval) if pval.size else pval
    return DEResult(
        log2fc=np.asarray(lfc, dtype=np.float64), pvalue=pval, fdr=np.asarray(fdr, dtype=np.float64)
    )


def _ranked_significant(res: DEResult, threshold: float) -> np.ndarray:
    sig = np.flatnonzero(np.asarray(res.fdr, dtype=np.float32) < threshold)
    # rank by |log2FC| descending; cell-eval stores it as float32 and breaks ties by gene order
    key = np.abs(np.asarray(res.log2fc)[sig]).astype(np.float32)
    return sig[np.argsort(-key, kind="stable")]


def des(true: DEResult, pred: DEResult, *, fdr_threshold: float = 0.05) -> float:
    """Differential expression score: overlap of the significant DE genes (cell-eval ``overlap_at_N``, the DES
    of the Virtual Cell Challenge, Roohani et al., Cell 2025).

    With S_true and S_pred the genes with FDR < ``fdr_threshold`` in the true and predicted DE (each against its
    own control cells, :func:`wilcoxon_de`), both ordered by |log2FC| (descending) and k = |S_true|:

    .. math:: \\mathrm{DES} = \\frac{|\\mathrm{top}_k(S_{true}) \\cap \\mathrm{top}_k(S_{pred})|}{k}

    and 0 when the truth has no significant gene.

    Parameters
    ----------
    true
        DE of the real perturbed cells against the real controls.
    pred
        DE of the predicted cells against the (predicted) controls.
    fdr_threshold
        Significance level of the BH-adjusted p-values.

    Returns
    -------
    The score in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> t = DEResult(np.array([3.0, -2.0, 1.0, 0.1]), np.zeros(4), np.array([0.01, 0.01, 0.01, 0.5]))
    >>> p = DEResult(np.array([0.5, 4.0, 0.0, 3.0]), np.zeros(4), np.array([0.01, 0.01, 0.5, 0.01]))
    >>> round(des(t, p), 4)
    0.6667
    """
    real = _ranked_significant(true, fdr_threshold)
    if real.size == 0:
        return 0.0
    predicted = _ranked_significant(pred, fdr_threshold)[: real.size]
    return float(np.intersect1d(real, predicted).size / real.size)


def pds(
    pred_delta: ArrayLike,
    true_delta: ArrayLike,
    *,
    exclude: ArrayLike | None = None,
) -> np.ndarray:
    """Perturbation discrimination score (cell-eval ``discrimination_score_l1``, the PDS of the Virtual Cell
    Challenge).

    For perturbation p, the L1 distance of its predicted Δ to every true Δ, d_pq = Σ_g |Δ̂_pg − Δ_qg| (genes in
    ``exclude[p]`` left out, e.g. the target gene); with rank_p = #{q : d_pq < d_pp} and N perturbations:

    .. math:: \\mathrm{PDS}_p = 1 - \\frac{\\mathrm{rank}_p}{N}

    1 when the prediction is closest to its own true effect, 1/N when it is the farthest.

    Parameters
    ----------
    pred_delta, true_delta
        Predicted and true Δ (mean − control mean), (n_perturbations, n_genes), rows in the same order.
    exclude
        Optional boolean (n_perturbations, n_genes): genes left out of row p's distances (cell-eval leaves out
        the gene whose name equals the perturbation label).

    Returns
    -------
    Array (n_perturbations,).

    Examples
    --------
    >>> pds([[0.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]).tolist()
    [0.5, 0.5]
    """
    p = np.atleast_2d(np.asarray(pred_delta, dtype=np.float64))
    t = np.atleast_2d(np.asarray(true_delta, dtype=np.float64))
    if p.shape != t.shape:
        raise ValueError(f"pred_delta and true_delta must have the same shape, got {p.shape} and {t.shape}.")
    n = p.shape[0]
    mask = np.ones_like(p, dtype=bool) if exclude is None else ~np.asarray(exclude, dtype=bool)
    if mask.shape != p.shape:
        raise ValueError(f"exclude must have shape {p.shape}, got {mask.shape}.")
    out = np.empty(n)
    for i in range(n):
        keep = mask[i]
        d = np.abs(t[:, keep] - p[i, keep]).sum(axis=1)
        out[i] = 1.0 - np.sum(d < d[i]) / n
    return out


def vcc_score(
    *,
    des: float | ArrayLike,
    pds: float | ArrayLike,
    mae: float | ArrayLike,
    des_baseline: float | ArrayLike,
    pds_baseline: float | ArrayLike,
    mae_baseline: float | ArrayLike,
) -> float:
    """Virtual Cell Challenge overall score (cell-eval ``score_agg_metrics``): each metric, averaged over
    perturbations, scaled against a baseline's (the mean-of-perturbation-means), clipped at 0, then averaged.

    .. math:: s_{DES} = \\frac{DES - DES_0}{1 - DES_0},\\quad s_{PDS} = \\frac{PDS - PDS_0}{1 - PDS_0},\\quad
              s_{MAE} = 1 - \\frac{MAE}{MAE_0},\\qquad
              \\mathrm{score} = \\tfrac{1}{3}\\sum \\max(s, 0)

    (NaN scaled values count as 0, as in cell-eval).

    Parameters
    ----------
    des, pds, mae
        The model's values (per perturbation or already averaged).
    des_baseline, pds_baseline, mae_baseline
        The baseline's values.

    Returns
    -------
    The score (0 = no better than the baseline; 1 = perfect).

    Examples
    --------
    >>> vcc_score(des=0.5, pds=1.0, mae=0.1, des_baseline=0.0, pds_baseline=0.5, mae_baseline=0.2)
    0.6666666666666666
    """

    def avg(v) -> np.float64:
        return np.float64(np.mean(np.asarray(v, dtype=np.float64)))

    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.array(
            [
                (avg(des) - avg(des_baseline)) / (1.0 - avg(des_baseline)),
                (avg(pds) - avg(pds_baseline)) / (1.0 - avg(pds_baseline)),
                1.0 - avg(mae) / avg(mae_baseline),
            ]
        )
    scaled[np.isnan(scaled)] = 0.0
    return float(np.clip(scaled, 0.0, None).mean())
