"""Classification metrics: accuracy, F1 (per class, macro, weighted), calibration, hierarchical scoring.

Pure numpy/pandas. Labels are compared as strings, so categorical, object and numeric label arrays mix freely
(an integral float label such as ``1.0`` is the string ``"1"``, like the integer ``1``).
The set of classes scored is the set of labels in the truth (a class the model was never trained on counts,
with F1 = 0; a predicted label absent from the truth, such as ``"unknown"``, only costs recall of the true
class), as in scTab's evaluation (Fischer et al. 2024).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "accuracy",
    "per_class_f1",
    "macro_f1",
    "weighted_f1",
    "expected_calibration_error",
    "confusion_matrix",
    "hierarchical_predictions",
    "classification_report",
]


def _label(v: object) -> str:
    """A label as a string; an integral float (``1.0``, as pandas stores integer labels next to NaN) as ``"1"``."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _as_str(x: Iterable) -> np.ndarray:
    arr = np.asarray(
        pd.Series(list(x) if not isinstance(x, (np.ndarray, pd.Series, pd.Index)) else x), dtype=object
    )
    if pd.isna(arr).any():
        msg = f"labels contain {int(pd.isna(arr).sum())} missing values; drop or fill them first."
        raise ValueError(msg)
    if pd.api.types.infer_dtype(arr, skipna=False) in ("string", "integer", "boolean", "empty"):
        return arr.astype(str)  # no float labels: nothing to normalise (the common case, vectorised)
    return np.array([_label(v) for v in arr], dtype=str)


def _pair(y_true: Iterable, y_pred: Iterable) -> tuple[np.ndarray, np.ndarray]:
    t, p = _as_str(y_true), _as_str(y_pred)
    if t.shape != p.shape:
        msg = f"y_true and y_pred differ in length ({t.shape[0]} vs {p.shape[0]})."
        raise ValueError(msg)
    if t.size == 0:
        msg = "cannot score an empty set of cells."
        raise ValueError(msg)
    return t, p


def accuracy(y_true: Iterable, y_pred: Iterable) -> float:
    """Fraction of cells whose predicted label equals the true label.

    Parameters
    ----------
    y_true
        True labels.
    y_pred
        Predicted labels.

    Returns
    -------
    Accuracy in ``[0, 1]``.
    """
    t, p = _pair(y_true, y_pred)
    return float(np.mean(t == p))


def per_class_f1(y_true: Iterable, y_pred: Iterable, *, labels: Sequence[str] | None = None) -> pd.Series:
    """F1 score of each class, ``2·TP / (2·TP + FP + FN)`` (0 when the class is neither true nor predicted).

    Parameters
    ----------
    y_true
        True labels.
    y_pred
        Predicted labels.
    labels
        Classes to score; defaults to the sorted labels present in ``y_true``.

    Returns
    -------
    F1 per class, indexed by label.
    """
    t, p = _pair(y_true, y_pred)
    labels = np.unique(t) if labels is None else np.asarray(labels, dtype=str)
    out = {}
    for c in labels:
        tp = np.sum((t == c) & (p == c))
        fp = np.sum((t != c) & (p == c))
        fn = np.sum((t == c) & (p != c))
        denom = 2 * tp + fp + fn
        out[str(c)] = float(2 * tp / denom) if denom else 0.0
    return pd.Series(out, name="f1", dtype=float)


def macro_f1(y_true: Iterable, y_pred: Iterable, *, labels: Sequence[str] | None = None) -> float:
    """Unweighted mean of :func:`per_class_f1` over the classes of the truth (or ``labels``).

    Parameters
    ----------
    y_true
        True labels.
    y_pred
        Predicted labels.
    labels
        Classes to average over; defaults to the labels present in ``y_true``.

    Returns
    -------
    Macro F1 in ``[0, 1]``.
    """
    return float(per_class_f1(y_true, y_pred, labels=labels).mean())


def weighted_f1(y_true: Iterable, y_pred: Iterable) -> float:
    """Mean of :func:`per_class_f1` weighted by each class's number of true cells.

    Parameters
    ----------
    y_true
        True labels.
    y_pred
        Predicted labels.

    Returns
    -------
    Weighted F1 in ``[0, 1]``.
    """
    t, _ = _pair(y_true, y_pred)
    f1 = per_class_f1(y_true, y_pred)
    support = pd.Series(t).value_counts().reindex(f1.index).to_numpy(dtype=float)
    return float(np.sum(f1.to_numpy() * support) / support.sum())


def expected_calibration_error(
    y_true: Iterable,
    proba: np.ndarray,
    *,
    classes: Sequence[str],
    n_bins: int = 15,
    y_pred: Iterable | None = None,
) -> float:
    """Top-label expected calibration error (Guo et al., ICML 2017).

    Cells are binned by their highest probability into ``n_bins`` equal-width bins on ``[0, 1]``;
    ``ECE = Σ_b |B_b|/n · |accuracy(B_b) − mean confidence(B_b)|``. A cell whose true label is not among
    ``classes`` counts as wrongly predicted. The confidence is always the highest probability; what counts as
    correct is ``classes[argmax]`` equal to the truth, or ``y_pred`` equal to it when given (e.g. the
    hierarchy-adjusted predictions of :func:`hierarchical_predictions`, so that calibration is scored by the
    same rule as accuracy).

    Parameters
    ----------
    y_true
        True labels.
    proba
        ``(n_cells, n_classes)`` class probabilities.
    classes
        Label of each column of ``proba``.
    n_bins
        Number of confidence bins.
    y_pred
        Optional predicted labels that decide correctness instead of ``classes[argmax]``.

    Returns
    -------
    ECE in ``[0, 1]``.
    """
    t = _as_str(y_true)
    proba = np.asarray(proba, dtype=float)
    classes = np.asarray(classes, dtype=str)
    if proba.ndim != 2 or proba.shape != (t.shape[0], classes.shape[0]):
        msg = f"proba must have shape (n_cells, n_classes) = ({t.shape[0]}, {classes.shape[0]}), got {proba.shape}."
        raise ValueError(msg)
    if not np.isfinite(proba).all():
        msg = "proba contains NaN or infinite values."
        raise ValueError(msg)
    conf = proba.max(axis=1)
    if y_pred is None:
        correct = classes[proba.argmax(axis=1)] == t
    else:
        t, p = _pair(t, y_pred)
        correct = p == t
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)  # right-closed bins (lo, hi]
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def confusion_matrix(
    y_true: Iterable, y_pred: Iterable, *, labels: Sequence[str] | None = None, normalize: bool = False
) -> pd.DataFrame:
    """Counts of (true, predicted) label pairs.

    Parameters
    ----------
    y_true
        True labels.
    y_pred
        Predicted labels.
    labels
        Row order (true labels); defaults to the sorted labels of ``y_true``. Columns are these labels followed
        by any other predicted label (e.g. ``"unknown"``), sorted.
    normalize
        Divide each row by its total (fraction of each true class predicted as each label).

    Returns
    -------
    DataFrame with true labels as index and predicted labels as columns.
    """
    t, p = _pair(y_true, y_pred)
    rows = list(np.unique(t)) if labels is None else [str(c) for c in labels]
    cols = rows + sorted(set(np.unique(p)) - set(rows))
    table = pd.crosstab(pd.Categorical(t, categories=rows), pd.Categorical(p, categories=cols), dropna=False)
    table = table.reindex(index=rows, columns=cols, fill_value=0)
    table.index.name, table.columns.name = "true", "predicted"
    if normalize:
        table = table.div(table.sum(axis=1).replace(0, 1), axis=0)
    return table


def _descendants(hierarchy: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    children = {str(k): {str(c) for c in v} for k, v in hierarchy.items()}
    out: dict[str, set[str]] = {}

    def visit(node: str, path: tuple[str, ...]) -> set[str]:
        if node in out:
            return out[node]
        if node in path:
            msg = f"the hierarchy has a cycle through {node!r}."
            raise ValueError(msg)
        acc: set[str] = set()
        for c in children.get(node, ()):
            acc |= {c} | visit(c, (*path, node))
        out[node] = acc
        return acc

    for node in children:
        visit(node, ())
    return out


def hierarchical_predictions(
    y_true: Iterable, y_pred: Iterable, *, hierarchy: Mapping[str, Iterable[str]]
) -> np.ndarray:
    """Predictions with "subtype of the truth" counted as correct (scTab's hierarchical scoring).

    A prediction that is a descendant of the true label in ``hierarchy`` (e.g. truth "T cell", prediction
    "CD4 T cell") is replaced by the true label; all other predictions are left unchanged, so the result can be
    passed to any metric here.

    Parameters
    ----------
    y_true
        True labels.
    y_pred
        Predicted labels.
    hierarchy
        Parent → children table (transitive: grandchildren count too).

    Returns
    -------
    Adjusted predictions (string array).
    """
    t, p = _pair(y_true, y_pred)
    desc = _descendants(hierarchy)
    out = p.astype(object)  # a true parent may be longer than every predicted label (fixed-width strings)
    for i, (ti, pi) in enumerate(zip(t, p, strict=True)):
        if ti != pi and pi in desc.get(ti, ()):
            out[i] = ti
    return out.astype(str)


def classification_report(
    y_true: Iterable,
    y_pred: Iterable,
    *,
    proba: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    hierarchy: Mapping[str, Iterable[str]] | None = None,
    n_bins: int = 15,
) -> dict:
    """All classification metrics at once.

    Parameters
    ----------
    y_true
        True labels.
    y_pred
        Predicted labels.
    proba
        Optional ``(n_cells, n_classes)`` probabilities for the calibration error.
    classes
        Column labels of ``proba`` (the model's classes); needed with ``proba``, and used to report true labels
        the model does not know.
    hierarchy
        Optional parent → children table; predictions of a subtype of the truth then count as correct (in the
        calibration error too, where the top-probability class decides).
    n_bins
        Bins of the calibration error.

    Returns
    -------
    ``{"accuracy", "macro_f1", "weighted_f1", "per_class_f1" (Series), "ece" (NaN without proba),
    "n_cells", "unseen_labels" (true labels not among ``classes``, sorted), "n_unseen" (cells with such a
    label), "frac_unknown" (fraction predicted ``"unknown"``)}``.
    """
    t, p = _pair(y_true, y_pred)
    if hierarchy is not None:
        p = hierarchical_predictions(t, p, hierarchy=hierarchy)
    calib_pred = None
    if proba is not None and classes is not None and hierarchy is not None:
        # calibration by the same rule as accuracy: a subtype of the truth counts as correct
        top = np.asarray(classes, dtype=str)[np.asarray(proba).argmax(axis=1)]
        calib_pred = hierarchical_predictions(t, top, hierarchy=hierarchy)
    unseen: list[str] = []
    if classes is not None:
        known = set(np.asarray(classes, dtype=str))
        unseen = sorted(set(np.unique(t)) - known)
    if proba is not None and classes is None:
        msg = "pass classes= (the column labels of proba) together with proba."
        raise ValueError(msg)
    return {
        "accuracy": accuracy(t, p),
        "macro_f1": macro_f1(t, p),
        "weighted_f1": weighted_f1(t, p),
        "per_class_f1": per_class_f1(t, p),
        "ece": expected_calibration_error(t, proba, classes=classes, n_bins=n_bins, y_pred=calib_pred)
        if proba is not None
        else np.nan,
        "n_cells": int(t.shape[0]),
        "unseen_labels": unseen,
        "n_unseen": int(np.isin(t, unseen).sum()),
        "frac_unknown": float(np.mean(p == "unknown")),
    }
