"""Training curves."""

from __future__ import annotations

from typing import Any

__all__ = ["training_history"]


def training_history(model: Any, *, metrics: list[str] | None = None, ax=None, logy: bool = False):
    """Plot a model's per-epoch training and validation metrics.

    Parameters
    ----------
    model
        A trained scpredict model (reads ``model.history``).
    metrics
        Metric base names to show (e.g. ``["loss", "r2"]``); by default every metric, train and validation
        paired on one panel each.
    ax
        Draw into this Axes (only when one metric is shown).
    logy
        Log-scale y axis.

    Returns
    -------
    The Figure (several panels) or the Axes (one panel or ``ax`` given).
    """
    import matplotlib.pyplot as plt

    hist = getattr(model, "history", None)
    if not hist:
        raise ValueError("this model has no training history; train it first.")
    bases: dict[str, list[str]] = {}
    for key in hist:
        base = key.split("_", 1)[1] if key.startswith(("train_", "validation_")) else key
        bases.setdefault(base, []).append(key)
    names = metrics or sorted(bases, key=lambda b: (b != "loss", b))
    missing = [m for m in names if m not in bases]
    if missing:
        raise KeyError(f"metrics {missing} not in model.history (available: {sorted(bases)}).")
    if ax is not None and len(names) != 1:
        raise ValueError("pass ax= only when plotting one metric (metrics=[...]).")
    if ax is None:
        fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.0), squeeze=False)
        axes = axes[0]
    else:
        fig, axes = None, [ax]
    for a, base in zip(axes, names, strict=True):
        for key in sorted(bases[base]):
            df = hist[key]
            a.plot(df.index, df.iloc[:, 0], label=key.split("_")[0] if key != base else key, marker=".")
        a.set_xlabel("epoch")
        a.set_ylabel(base)
        if logy:
            a.set_yscale("log")
        a.legend(frameon=False)
    if fig is not None:
        fig.tight_layout()
        return fig
    return axes[0]
