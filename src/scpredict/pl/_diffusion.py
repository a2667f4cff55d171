"""Plots for diffusion models: real vs generated cells, progress of an inverse design."""

from __future__ import annotations

from typing import Any

import numpy as np
from anndata import AnnData

__all__ = ["design_progress", "real_vs_generated"]


def _dense(x: Any) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)


def real_vs_generated(
    real: AnnData,
    generated: AnnData,
    *,
    layer: str | None = None,
    color: str | None = None,
    basis: str = "umap",
    n_pcs: int = 30,
    max_cells: int = 3000,
    seed: int = 0,
    ax=None,
):
    """UMAP (or PCA) of real and generated cells together, coloured by origin or by an ``obs`` column.

    Genes are matched by name (the intersection). The joint embedding is computed on a copy; neither input is
    modified.

    Parameters
    ----------
    real
        Real cells (log-normalized).
    generated
        Generated cells, e.g. from :meth:`~scpredict.models.ScoreDiffusion.generate`.
    layer
        Layer of ``real`` to use (``None`` = ``X``); ``generated.X`` is used.
    color
        ``obs`` column present in both to colour by (markers then tell real ``o`` from generated ``x``);
        default: colour by origin.
    basis
        ``"umap"`` (scanpy) or ``"pca"``.
    n_pcs
        Principal components (and the UMAP input).
    max_cells
        Cells per origin kept (random subsample) to keep the UMAP fast.
    seed
        Seed of the subsampling and the UMAP.
    ax
        Matplotlib Axes to draw into (default: a new figure).

    Returns
    -------
    The Axes.
    """
    import matplotlib.pyplot as plt

    genes = real.var_names.intersection(generated.var_names)
    if len(genes) == 0:
        raise ValueError("real and generated share no genes (matched by var_names).")
    if basis not in ("umap", "pca"):
        raise ValueError(f"basis must be 'umap' or 'pca', got {basis!r}.")
    if color is not None:
        for name, a in (("real", real), ("generated", generated)):
            if color not in a.obs.columns:
                raise KeyError(f"{name}.obs[{color!r}] does not exist.")
    rng = np.random.default_rng(seed)
    ri = rng.permutation(real.n_obs)[:max_cells]
    gi = rng.permutation(generated.n_obs)[:max_cells]
    xr = real[:, genes].layers[layer] if layer is not None else real[:, genes].X
    xr, xg = _dense(xr)[ri], _dense(generated[:, genes].X)[gi]
    x = np.vstack([xr, xg])
    mean = xr.mean(0)
    _, _, vt = np.linalg.svd(xr - mean, full_matrices=False)
    pcs = (x - mean) @ vt[: min(n_pcs, vt.shape[0])].T
    if basis == "umap":
        import scanpy as sc

        tmp = AnnData(X=np.zeros((len(x), 1), dtype=np.float32), obsm={"X_pca": pcs})
        sc.pp.neighbors(tmp, use_rep="X_pca", random_state=seed)
        sc.tl.umap(tmp, random_state=seed)
        emb = tmp.obsm["X_umap"]
    else:
        emb = pcs[:, :2]
    origin = np.r_[np.zeros(len(xr), dtype=bool), np.ones(len(xg), dtype=bool)]
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.0))
    if color is None:
        for is_gen, label, c in ((False, "real", "tab:blue"), (True, "generated", "tab:orange")):
            m = origin == is_gen
            ax.scatter(emb[m, 0], emb[m, 1], s=4, alpha=0.6, c=c, label=f"{label} ({m.sum()})", linewidths=0)
    else:
        labels = np.r_[
            real.obs[color].astype(str).to_numpy()[ri], generated.obs[color].astype(str).to_numpy()[gi]
        ]
        cats = sorted(set(labels))
        cmap = plt.get_cmap("tab20")
        for k, cat in enumerate(cats):
            for is_gen, marker in ((False, "o"), (True, "x")):
                m = (labels == cat) & (origin == is_gen)
                ax.scatter(emb[m, 0], emb[m, 1], s=6, alpha=0.6, color=cmap(k % 20), marker=marker,
                           label=cat if not is_gen else None, linewidths=0.5 if is_gen else 0)  # fmt: skip
    ax.set_xlabel(f"{basis.upper()}1")
    ax.set_ylabel(f"{basis.upper()}2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("real (o) vs generated (x)" if color else "real vs generated")
    ax.legend(frameon=False, fontsize=7, markerscale=2)
    return ax


def design_progress(designed: AnnData, *, key: str = "design", ax=None):
    """Objective of the denoised estimate along the guided sampling of an inverse design, and the final
    target-match scores.

    Parameters
    ----------
    designed
        Output of :meth:`~scpredict.models.ScoreDiffusion.design` (reads ``uns[key]['progress']`` and
        ``obs['target_match']``).
    key
        ``uns`` key of the design record.
    ax
        Axes for the progress curve (default: a new figure with a second panel, the target-match histogram).

    Returns
    -------
    The Figure (two panels) or the Axes (``ax`` given).
    """
    import matplotlib.pyplot as plt

    if key not in designed.uns or "progress" not in designed.uns[key]:
        raise KeyError(
            f"designed.uns[{key!r}]['progress'] not found; pass the output of ScoreDiffusion.design."
        )
    prog = designed.uns[key]["progress"]
    steps, obj = np.asarray(prog["step"]), np.asarray(prog["objective"])
    fig = None
    if ax is None:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
    ax.plot(np.arange(len(obj)), obj, marker=".")
    ax.set_xlabel("sampling step (noise → data)")
    ax.set_ylabel("objective of denoised estimate")
    if len(steps):
        ax.set_title(f"guided sampling, t = {steps[0]} → {steps[-1]}")
    if fig is None:
        return ax
    ax2.hist(designed.obs["target_match"].to_numpy(), bins=30, color="tab:green")
    ax2.set_xlabel("target match per designed cell")
    ax2.set_ylabel("cells")
    fig.tight_layout()
    return fig
