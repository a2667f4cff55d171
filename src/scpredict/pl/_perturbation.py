"""Plots of perturbation-prediction results: model comparison and predicted-vs-true changes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp_sparse
from anndata import AnnData

from .._utils import check_keys, get_array

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["metric_comparison", "perturbation_scatter"]


def metric_comparison(
    results: pd.DataFrame,
    *,
    metric: str,
    models: Sequence[str] | None = None,
    ax: Axes | None = None,
    **scatter_kwargs,
) -> Axes:
    """Compare models on one metric: a box per model over perturbations, with one dot per perturbation.

    Parameters
    ----------
    results
        Tidy table of :func:`scpredict.tl.benchmark_perturbation_models` (columns ``model``, ``perturbation``,
        ``metric``, ``value``).
    metric
        Metric to show (e.g. ``"pearson_delta"``).
    models
        Models to show, in order (default: all, in table order).
    ax
        Axes to draw on (default: a new figure).
    **scatter_kwargs
        Passed to ``ax.scatter`` for the dots.

    Returns
    -------
    The Axes.

    Examples
    --------
    >>> import pandas as pd, scpredict as sp
    >>> df = pd.DataFrame({"model": ["a", "a", "b", "b"], "perturbation": ["P1", "P2"] * 2,
    ...                    "metric": "mae", "value": [0.1, 0.2, 0.3, 0.2]})
    >>> ax = sp.pl.metric_comparison(df, metric="mae")
    """
    import matplotlib.pyplot as plt

    missing = {"model", "perturbation", "metric", "value"} - set(results.columns)
    if missing:
        raise KeyError(
            f"results lacks columns {sorted(missing)}; pass the table of benchmark_perturbation_models."
        )
    sub = results[results["metric"] == metric]
    if sub.empty:
        raise ValueError(
            f"metric {metric!r} is not in results (metrics: {sorted(results['metric'].unique())})."
        )
    order = list(models) if models is not None else list(dict.fromkeys(sub["model"]))
    unknown = sorted(set(order) - set(sub["model"]))
    if unknown:
        raise ValueError(f"models {unknown} are not in results (models: {sorted(sub['model'].unique())}).")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 * len(order) + 2, 3.5))
    data = [sub.loc[sub["model"] == m, "value"].dropna().to_numpy() for m in order]
    ax.boxplot(data, showfliers=False, widths=0.5)
    ax.set_xticks(np.arange(1, len(order) + 1), order)
    rng = np.random.default_rng(0)
    kw = {"s": 12, "alpha": 0.7, "color": "k", "zorder": 3} | scatter_kwargs
    for i, vals in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, size=len(vals)), vals, **kw)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per perturbation")
    return ax


def perturbation_scatter(
    adata: AnnData,
    *,
    key: str,
    perturbation: str,
    n_de_genes: int = 20,
    layer: str | None = None,
    ax: Axes | None = None,
    **scatter_kwargs,
) -> Axes:
    """Predicted vs true change against control (Δ = mean − control mean) of one perturbation, gene by gene,
    with its top DE genes highlighted.

    Parameters
    ----------
    adata
        Cells with measured expression (``layer``) and predictions in ``adata.layers[key]``, written by a
        perturbation model's ``predict(adata, key_added=key)`` (which records the perturbation column and
        control label in ``adata.uns[key]['params']``).
    key
        The ``key_added`` of the predictions.
    perturbation
        Perturbation to show.
    n_de_genes
        Number of DE genes highlighted: the ranking cached by :func:`scpredict.tl.evaluate_perturbations` when
        present, otherwise the genes with the largest true |Δ|.
    layer
        Layer of the measured expression (``None`` = ``X``).
    ax
        Axes to draw on (default: a new figure).
    **scatter_kwargs
        Passed to ``ax.scatter`` for all genes.

    Returns
    -------
    The Axes.
    """
    import matplotlib.pyplot as plt

    if key not in adata.layers or key not in adata.uns:
        raise KeyError(
            f"adata.layers[{key!r}] / adata.uns[{key!r}] not found; run model.predict(adata, key_added={key!r})."
        )
    params = adata.uns[key].get("params", {})
    pkey, control = params.get("perturbation_key"), params.get("control", "control")
    if pkey is None:
        raise KeyError(
            f"adata.uns[{key!r}]['params'] lacks 'perturbation_key'; was it written by a perturbation model?"
        )
    check_keys(adata, obs=[pkey])
    labels = adata.obs[pkey].astype(str).to_numpy()
    for lab in (perturbation, control):
        if lab not in set(labels):
            raise ValueError(f"{lab!r} has no cells in adata.obs[{pkey!r}].")

    def mean(x, rows):
        m = x[rows].mean(0)
        return np.asarray(m).ravel()

    x = get_array(adata, layer=layer)
    x = x.tocsr() if sp_sparse.issparse(x) else np.asarray(x)
    pred = np.asarray(adata.layers[key])
    is_p, is_c = labels == perturbation, labels == control
    ctrl = mean(x, is_c)
    true_d = mean(x, is_p) - ctrl
    pred_d = mean(pred, is_p) - ctrl
    ok = np.isfinite(pred_d)
    de = None
    cache = adata.uns.get("_scpredict_de_genes")
    if isinstance(cache, dict) and "ranking" in cache:
        ranking = json.loads(cache["ranking"])
        names = next((v for k, v in ranking.items() if k.split("|")[0] == perturbation), None)
        if names is not None:
            de = adata.var_names.get_indexer(names[:n_de_genes])
            de = de[de >= 0]
    if de is None:
        de = np.argsort(-np.abs(true_d))[:n_de_genes]
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    kw = {"s": 6, "color": "0.6", "alpha": 0.6} | scatter_kwargs
    ax.scatter(true_d[ok], pred_d[ok], **kw)
    ax.scatter(true_d[de], pred_d[de], s=18, color="C3", label=f"top {len(de)} DE genes", zorder=3)
    lim = np.nanmax(np.abs(np.concatenate([true_d, pred_d[ok]]))) * 1.05 or 1.0
    ax.plot([-lim, lim], [-lim, lim], color="k", lw=0.8, ls="--")
    ax.axhline(0, color="0.8", lw=0.5)
    ax.axvline(0, color="0.8", lw=0.5)
    r = np.corrcoef(true_d[ok], pred_d[ok])[0, 1] if ok.sum() > 1 and np.std(pred_d[ok]) > 0 else np.nan
    ax.set_xlabel("true Δ (vs control)")
    ax.set_ylabel(f"predicted Δ ({key})")
    ax.set_title(f"{perturbation}: Pearson Δ = {r:.2f}")
    ax.legend(loc="upper left", frameon=False, fontsize=8)
    return ax
