"""Plots for drug screens: long-tail counts per drug, cell line and pair."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from anndata import AnnData

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["imbalance"]

_LABELS = {"drug": "drugs", "cell_line": "cell lines", "pair": "(drug, cell line) pairs"}


def imbalance(
    adata: AnnData,
    *,
    key: str = "imbalance",
    levels: Sequence[str] = ("drug", "cell_line", "pair"),
    min_cells: int | None = None,
    ax: Axes | None = None,
    **plot_kwargs,
) -> Axes:
    """Long-tail plot of the cell counts written by :func:`scpredict.tl.imbalance`.

    One line per level: groups sorted by count, x = rank as a fraction of the groups (so levels with
    different numbers of groups share the axis), y = cells (log scale).

    Parameters
    ----------
    adata
        AnnData on which :func:`scpredict.tl.imbalance` was run.
    key
        The ``key_added`` used there.
    levels
        Which of ``"drug"``, ``"cell_line"``, ``"pair"`` to draw.
    min_cells
        Draw this threshold (e.g. the one given to :func:`scpredict.pp.filter_pairs`) as a dashed line.
    ax
        Axes to draw into; a new figure when ``None``.
    **plot_kwargs
        Passed to ``Axes.plot``.

    Returns
    -------
    The Axes.
    """
    import matplotlib.pyplot as plt

    if key not in adata.uns or "pair" not in adata.uns[key]:
        msg = f"adata.uns[{key!r}] has no imbalance tables; run sp.tl.imbalance(adata, key_added={key!r}) first."
        raise KeyError(msg)
    res = adata.uns[key]
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    for level in levels:
        if level not in _LABELS:
            msg = f"levels must be among {list(_LABELS)}, got {level!r}."
            raise ValueError(msg)
        counts = np.sort(np.asarray(res[level]["n_cells"], dtype=float))[::-1]
        x = (np.arange(len(counts)) + 0.5) / len(counts)
        ax.plot(
            x,
            np.maximum(counts, 0.5),
            marker="." if len(counts) < 50 else None,
            label=f"{_LABELS[level]} ({len(counts)})",
            **plot_kwargs,
        )
    if min_cells is not None:
        ax.axhline(min_cells, color="0.3", linestyle="--", linewidth=1, label=f"min_cells = {min_cells}")
    ax.set_yscale("log")
    ax.set_xlabel("rank (fraction of groups)")
    ax.set_ylabel("cells")
    ax.set_title("Cells per drug, cell line and pair")
    ax.legend(frameon=False, fontsize="small")
    return ax
