"""Plots of classifier results: comparison bars, confusion matrix, embeddings coloured by truth/prediction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .._utils import check_keys

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["classifier_comparison", "confusion_matrix", "embedding"]


def classifier_comparison(
    results: pd.DataFrame,
    *,
    metrics: Sequence[str] = ("macro_f1", "accuracy"),
    ax: Axes | None = None,
) -> Axes:
    """Grouped bars of metrics per model, with ± sd error bars for repeated comparisons.

    Parameters
    ----------
    results
        Output of :func:`scpredict.tl.compare_classifiers` (columns ``<metric>``) or of
        :func:`scpredict.tl.repeated_comparison` (columns ``<metric>_mean`` and ``<metric>_sd``).
    metrics
        Metrics to show.
    ax
        Axes to draw on (a new figure otherwise).

    Returns
    -------
    The Axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 + 0.9 * len(results) * max(1, len(metrics)) / 2, 3.2))
    width = 0.8 / max(1, len(metrics))
    x = np.arange(len(results))
    for i, m in enumerate(metrics):
        if m in results.columns:
            mean, sd = results[m].to_numpy(float), None
        elif f"{m}_mean" in results.columns:
            mean, sd = results[f"{m}_mean"].to_numpy(float), results[f"{m}_sd"].to_numpy(float)
        else:
            msg = f"metric {m!r} is not a column of results (columns: {list(results.columns)[:12]})."
            raise KeyError(msg)
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, mean, width, yerr=sd, capsize=3, label=m)
    ax.set_xticks(x, [str(i) for i in results.index], rotation=30, ha="right")
    bounded = {"accuracy", "macro_f1", "weighted_f1", "ece"}
    if all(m in bounded or m.startswith("f1:") for m in metrics):  # scores in [0, 1]
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("score")
    else:  # e.g. train_s or predict_cells_per_s: let the data set the range
        ax.set_ylim(bottom=0)
        ax.set_ylabel("value")
    ax.legend(frameon=False, fontsize=8)
    return ax


def confusion_matrix(
    adata: AnnData,
    *,
    key: str,
    labels_key: str,
    normalize: bool = True,
    ax: Axes | None = None,
    cmap: str = "Blues",
) -> Axes:
    """Heatmap of true (rows) against predicted (columns) labels.

    Parameters
    ----------
    adata
        Cells with predictions in ``obs[key]`` (cells with a missing prediction are skipped).
    key
        ``obs`` column of predicted labels (``key_added`` of a model's ``predict``).
    labels_key
        ``obs`` column of true labels.
    normalize
        Show row fractions instead of counts.
    ax
        Axes to draw on.
    cmap
        Colour map.

    Returns
    -------
    The Axes.
    """
    import matplotlib.pyplot as plt

    from ..metrics._classification import confusion_matrix as _cm

    check_keys(adata, obs=[labels_key])
    if key not in adata.obs.columns:
        msg = f"adata.obs[{key!r}] does not exist; run a model's predict(adata, key_added={key!r}) first."
        raise KeyError(msg)
    ok = adata.obs[key].notna().to_numpy()
    table = _cm(adata.obs[labels_key][ok], adata.obs[key][ok], normalize=normalize)
    if ax is None:
        size = 1.5 + 0.35 * max(table.shape)
        _, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(table.to_numpy(float), cmap=cmap, vmin=0, vmax=1 if normalize else None, aspect="auto")
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(table.shape[0]), table.index, fontsize=7)
    ax.set_xlabel(f"predicted ({key})")
    ax.set_ylabel(f"true ({labels_key})")
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax


def embedding(
    adata: AnnData,
    *,
    basis: str,
    labels_key: str,
    key: str | None = None,
    method: Literal["umap", "tsne", "none"] = "umap",
    seed: int = 0,
    point_size: float = 6.0,
    **layout_kwargs: Any,
) -> Figure:
    """2-D map of an embedding coloured by the true labels and, beside it, by the predicted labels.

    The seed's Figure 4A (t-SNE/UMAP of scTab test embeddings). The 2-D layout is computed here and not
    stored (``method="none"`` plots the first two columns of ``obsm[basis]`` as they are).

    Parameters
    ----------
    adata
        Cells (e.g. the test set).
    basis
        ``obsm`` key of the embedding (e.g. written from ``model.get_embedding(adata)``).
    labels_key
        ``obs`` column of true labels.
    key
        ``obs`` column of predicted labels (``None``: one panel with the truth only).
    method
        ``"umap"`` (umap-learn), ``"tsne"`` (scikit-learn) or ``"none"``.
    seed
        Random seed of the layout.
    point_size
        Marker size.
    **layout_kwargs
        Passed to ``umap.UMAP`` or ``sklearn.manifold.TSNE``.

    Returns
    -------
    The Figure (one or two panels).
    """
    import matplotlib.pyplot as plt

    check_keys(adata, obs=[labels_key], obsm=[basis])
    if key and key not in adata.obs.columns:  # cells without a prediction (NaN) are drawn as "NA"
        msg = f"adata.obs[{key!r}] does not exist (obs columns: {list(adata.obs.columns)[:20]})."
        raise KeyError(msg)
    x = np.asarray(adata.obsm[basis], dtype=np.float32)
    if method == "umap":
        import umap

        xy = umap.UMAP(random_state=seed, **layout_kwargs).fit_transform(x)
    elif method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = layout_kwargs.pop("perplexity", min(30.0, max(2.0, (x.shape[0] - 1) / 3)))
        xy = TSNE(random_state=seed, perplexity=perplexity, **layout_kwargs).fit_transform(x)
    elif method == "none":
        xy = x[:, :2]
    else:
        msg = f"method must be 'umap', 'tsne' or 'none', got {method!r}."
        raise ValueError(msg)
    columns = [(labels_key, "truth")] + ([(key, "prediction")] if key else [])
    fig, axes = plt.subplots(1, len(columns), figsize=(5 * len(columns) + 1.5, 4.2), squeeze=False)
    truth = adata.obs[labels_key].astype(str)
    cats = sorted(set(truth) | (set(adata.obs[key].dropna().astype(str)) if key else set()))
    cmap = plt.get_cmap("tab20" if len(cats) > 10 else "tab10")
    colors = {c: cmap(i % cmap.N) for i, c in enumerate(cats)}
    for ax, (col, title) in zip(axes[0], columns, strict=True):
        values = adata.obs[col].astype(object).where(adata.obs[col].notna(), "NA").astype(str).to_numpy()
        for c in cats:
            sel = values == c
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=point_size, color=colors[c], label=c, linewidths=0)
        ax.set_title(f"{title} ({col})")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{method.upper()} 1" if method != "none" else f"{basis} 1")
        ax.set_ylabel(f"{method.upper()} 2" if method != "none" else f"{basis} 2")
    axes[0, -1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False, markerscale=2)
    fig.tight_layout()
    return fig
