"""Plot the additive per-field contributions written by ``ContextCycleAE.contributions``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes

__all__ = ["context_contributions"]


def context_contributions(
    adata: AnnData,
    *,
    key: str = "contributions",
    by: Literal["field", "category", "epoch"] = "field",
    field: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Mean L2 norm of each head's contribution, per field, per category or over training epochs.

    Reads ``adata.uns[key]`` as written by :meth:`scpredict.models.ContextCycleAE.contributions`.

    Parameters
    ----------
    adata
        AnnData holding ``uns[key]``.
    key
        The ``key_added`` used with ``contributions``.
    by
        ``"field"``: one bar per head (base and each field). ``"category"``: one bar per category of ``field``
        (of every field when ``field`` is None). ``"epoch"``: one line per head (or per category of ``field``)
        over training epochs.
    field
        Restrict ``"category"`` / ``"epoch"`` to this field.
    ax
        Axes to draw on (a new figure when None).

    Returns
    -------
    The matplotlib Axes.

    Examples
    --------
    >>> model.contributions(adata, key_added="contributions")  # doctest: +SKIP
    >>> sp.pl.context_contributions(adata, by="category", field="assay")  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    if key not in adata.uns or "l2_field" not in adata.uns[key]:
        msg = f"adata.uns[{key!r}] has no contribution summary; run model.contributions(adata, key_added={key!r})."
        raise KeyError(msg)
    entry = adata.uns[key]
    options = ("field", "category", "epoch")
    if by not in options:
        msg = f"by must be one of {options}, got {by!r}."
        raise ValueError(msg)
    fields = [f for f in entry["l2_field"] if f != "base"]
    if field is not None and field not in fields:
        msg = f"field {field!r} is not in adata.uns[{key!r}] (fields: {fields})."
        raise KeyError(msg)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    if by == "field":
        names = list(entry["l2_field"])
        values = [float(entry["l2_field"][n]) for n in names]
        ax.bar(names, values, color=["0.6"] + [f"C{i}" for i in range(len(names) - 1)])
        ax.set_ylabel("mean L2 of contribution")
        ax.set_title("contribution per head")
    elif by == "category":
        labels, values, colors = [], [], []
        for i, f in enumerate(fields):
            if field is not None and f != field:
                continue
            for cat, v in entry["l2_category"][f].items():
                labels.append(cat if field is not None else f"{f}: {cat}")
                values.append(float(v))
                colors.append(f"C{i}")
        ax.bar(np.arange(len(values)), values, color=colors)
        ax.set_xticks(np.arange(len(values)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("mean L2 of contribution")
        ax.set_title(f"contribution per category{'' if field is None else f' of {field}'}")
    else:
        hist = entry.get("history", {})
        if not hist or "epoch" not in hist:
            msg = f"adata.uns[{key!r}]['history'] is empty: the model has no training history."
            raise ValueError(msg)
        epochs = np.asarray(hist["epoch"])
        if field is None:
            ax.plot(epochs, hist["base"], color="0.5", label="base")
            for i, f in enumerate(fields):
                if f in hist.get("fields", {}):
                    ax.plot(epochs, hist["fields"][f], color=f"C{i}", label=f)
        else:
            for cat, vals in hist.get("categories", {}).get(field, {}).items():
                ax.plot(epochs, vals, label=cat)
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean L2 of contribution")
        ax.set_yscale("log")
        ax.legend(fontsize=7, frameon=False)
        ax.set_title("contributions over training" + ("" if field is None else f" ({field})"))
    return ax
