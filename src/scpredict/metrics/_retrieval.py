"""Ranking / retrieval metrics (numpy), correct for any real-valued scores.

Each function takes ``y_true`` (relevance of each candidate: binary, or graded for NDCG) and ``y_score``
(higher = ranked earlier), either for one query (1-D, ``n_items``) or a batch (2-D, ``n_queries x
n_items``). Candidates are ordered by descending score with a *stable* sort, so ties keep the candidates'
input order. Unlike torchmetrics' retrieval metrics, which drop candidates scored ≤ 0, every candidate is
ranked whatever the sign of its score.

A query with no relevant candidate has no defined recall, AP, NDCG or reciprocal rank; it gives ``nan``
in ``reduction="none"`` and is left out of the mean (``nan`` when no query has a relevant candidate).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k", "mrr", "retrieval_summary"]

Reduction = Literal["mean", "none"]


def _prepare(y_true, y_score, k: int | None) -> tuple[np.ndarray, int, bool]:
    """Relevance sorted by descending score (n_queries x n_items), the cut-off, and whether input was 1-D."""
    t = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(y_score, dtype=np.float64)
    single = t.ndim == 1
    if single:
        t, s = t[None], s[None]
    if t.ndim != 2 or t.shape != s.shape:
        msg = f"y_true and y_score must have the same 1-D or 2-D shape, got {t.shape} and {s.shape}."
        raise ValueError(msg)
    if t.shape[1] == 0:
        msg = "There are no candidates to rank (n_items = 0)."
        raise ValueError(msg)
    if np.isnan(s).any() or np.isnan(t).any():
        msg = "y_score and y_true must not contain NaN."
        raise ValueError(msg)
    if (t < 0).any():
        msg = "Relevance (y_true) must be non-negative."
        raise ValueError(msg)
    if k is None:
        k = t.shape[1]
    if int(k) != k or k < 1:
        msg = f"k must be a positive integer, got {k!r}."
        raise ValueError(msg)
    order = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(t, order, axis=1), min(int(k), t.shape[1]), single


def _reduce(values: np.ndarray, reduction: Reduction, *, single: bool):
    if reduction not in ("mean", "none"):
        msg = f"reduction must be 'mean' or 'none', got {reduction!r}."
        raise ValueError(msg)
    if reduction == "none":
        return values
    if single:
        return float(values[0])
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def precision_at_k(y_true, y_score, *, k: int = 10, reduction: Reduction = "mean"):
    r"""Fraction of the top-``k`` candidates that are relevant.

    :math:`P@k = \frac{1}{k'} \sum_{i=1}^{k'} [rel_i > 0]` with :math:`k' = \min(k, n_{items})`.

    Parameters
    ----------
    y_true
        Relevance per candidate (> 0 = relevant), shape ``(n_items,)`` or ``(n_queries, n_items)``.
    y_score
        Scores, same shape; higher ranks first.
    k
        Cut-off.
    reduction
        ``"mean"`` over queries (a float) or ``"none"`` (one value per query).

    Returns
    -------
    float, or ndarray (n_queries,) with ``reduction="none"``.

    Examples
    --------
    >>> sp.metrics.precision_at_k([0, 1, 1], [-3.0, -1.0, -2.0], k=2)
    1.0
    """
    rel, k, single = _prepare(y_true, y_score, k)
    vals = (rel[:, :k] > 0).sum(1) / k
    return _reduce(vals.astype(np.float64), reduction, single=single)


def recall_at_k(y_true, y_score, *, k: int = 10, reduction: Reduction = "mean"):
    r"""Fraction of the relevant candidates found in the top ``k``.

    :math:`R@k = |\{i \le k: rel_i > 0\}| / |\{i: rel_i > 0\}|`; ``nan`` for a query without relevant items.

    Parameters
    ----------
    y_true
        Relevance per candidate (> 0 = relevant), shape ``(n_items,)`` or ``(n_queries, n_items)``.
    y_score
        Scores, same shape; higher ranks first.
    k
        Cut-off.
    reduction
        ``"mean"`` over queries with a relevant item, or ``"none"``.

    Returns
    -------
    float, or ndarray (n_queries,) with ``reduction="none"``.
    """
    rel, k, single = _prepare(y_true, y_score, k)
    n_rel = (rel > 0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        vals = np.where(n_rel > 0, (rel[:, :k] > 0).sum(1) / np.maximum(n_rel, 1), np.nan)
    return _reduce(vals, reduction, single=single)


def ndcg_at_k(y_true, y_score, *, k: int = 10, reduction: Reduction = "mean"):
    r"""Normalised discounted cumulative gain at ``k`` (Järvelin & Kekäläinen, ACM TOIS 2002).

    :math:`DCG@k = \sum_{i=1}^{k} rel_i / \log_2(i + 1)` (linear gain, as scikit-learn's ``ndcg_score``),
    divided by the DCG@k of the ideal ordering; ``nan`` for a query without relevant items.

    Parameters
    ----------
    y_true
        Relevance per candidate (binary or graded, ≥ 0), shape ``(n_items,)`` or ``(n_queries, n_items)``.
    y_score
        Scores, same shape; higher ranks first.
    k
        Cut-off.
    reduction
        ``"mean"`` over queries with a relevant item, or ``"none"``.

    Returns
    -------
    float, or ndarray (n_queries,) with ``reduction="none"``.
    """
    rel, k, single = _prepare(y_true, y_score, k)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (rel[:, :k] * discount).sum(1)
    ideal = -np.sort(-rel, axis=1)[:, :k]
    idcg = (ideal * discount).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        vals = np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), np.nan)
    return _reduce(vals, reduction, single=single)


def map_at_k(y_true, y_score, *, k: int = 10, reduction: Reduction = "mean"):
    r"""Mean average precision at ``k``.

    :math:`AP@k = \frac{1}{\min(k, R)} \sum_{i=1}^{k} P@i \cdot [rel_i > 0]`, with :math:`R` the number of
    relevant candidates (the convention of Kaggle's ``apk`` / ``ml_metrics``); its mean over queries is
    mAP@k. ``nan`` for a query without relevant items.

    Parameters
    ----------
    y_true
        Relevance per candidate (> 0 = relevant), shape ``(n_items,)`` or ``(n_queries, n_items)``.
    y_score
        Scores, same shape; higher ranks first.
    k
        Cut-off.
    reduction
        ``"mean"`` over queries with a relevant item, or ``"none"``.

    Returns
    -------
    float, or ndarray (n_queries,) with ``reduction="none"``.
    """
    rel, k, single = _prepare(y_true, y_score, k)
    hits = (rel[:, :k] > 0).astype(np.float64)
    prec = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    n_rel = (rel > 0).sum(1)
    denom = np.minimum(n_rel, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        vals = np.where(n_rel > 0, (prec * hits).sum(1) / np.maximum(denom, 1), np.nan)
    return _reduce(vals, reduction, single=single)


def mrr(y_true, y_score, *, k: int | None = None, reduction: Reduction = "mean"):
    r"""Mean reciprocal rank of the first relevant candidate.

    :math:`RR = 1 / \text{rank of the first relevant candidate}` (0 when it is below ``k``); ``nan`` for a
    query without relevant items.

    Parameters
    ----------
    y_true
        Relevance per candidate (> 0 = relevant), shape ``(n_items,)`` or ``(n_queries, n_items)``.
    y_score
        Scores, same shape; higher ranks first.
    k
        Optional cut-off (``None`` = the whole list).
    reduction
        ``"mean"`` over queries with a relevant item, or ``"none"``.

    Returns
    -------
    float, or ndarray (n_queries,) with ``reduction="none"``.

    Examples
    --------
    >>> sp.metrics.mrr([0, 0, 1], [-0.5, -0.1, -0.3])
    0.5
    """
    rel, k, single = _prepare(y_true, y_score, k)
    hit = rel > 0
    any_rel = hit.any(1)
    first = np.argmax(hit, axis=1)
    vals = np.where(any_rel, np.where(first < k, 1.0 / (first + 1), 0.0), np.nan)
    return _reduce(vals, reduction, single=single)


def retrieval_summary(
    y_true,
    y_score,
    *,
    k: int = 10,
    groups: dict[str, np.ndarray] | None = None,
):
    """All retrieval metrics at once, globally and per group of queries (cell line, drug, ...).

    Parameters
    ----------
    y_true
        Relevance, ``(n_queries, n_items)``.
    y_score
        Scores, ``(n_queries, n_items)``.
    k
        Cut-off for the @k metrics.
    groups
        ``{level: labels}`` with one label per query (e.g. ``{"cell_line": lines, "drug": drugs}``); each
        level adds one row per label.

    Returns
    -------
    DataFrame with columns ``level`` (``"global"`` or the group level), ``group``, ``n_queries``,
    ``precision@k``, ``recall@k``, ``ndcg@k``, ``map@k``, ``mrr``.
    """
    import pandas as pd

    t = np.atleast_2d(np.asarray(y_true, dtype=np.float64))
    s = np.atleast_2d(np.asarray(y_score, dtype=np.float64))
    per = {
        f"precision@{k}": precision_at_k(t, s, k=k, reduction="none"),
        f"recall@{k}": recall_at_k(t, s, k=k, reduction="none"),
        f"ndcg@{k}": ndcg_at_k(t, s, k=k, reduction="none"),
        f"map@{k}": map_at_k(t, s, k=k, reduction="none"),
        "mrr": mrr(t, s, reduction="none"),
    }
    frame = pd.DataFrame(per)

    def _row(level: str, group: str, mask: np.ndarray) -> dict:
        sub = frame[mask]
        return {
            "level": level,
            "group": group,
            "n_queries": int(mask.sum()),
            **sub.mean(skipna=True).to_dict(),
        }

    rows = [_row("global", "all", np.ones(len(frame), dtype=bool))]
    for level, labels in (groups or {}).items():
        labels = np.asarray(labels).astype(str)
        if len(labels) != len(frame):
            msg = f"groups[{level!r}] has {len(labels)} labels for {len(frame)} queries."
            raise ValueError(msg)
        for g in np.unique(labels):
            rows.append(_row(level, g, labels == g))
    return pd.DataFrame(rows)
