"""Compare cell-type classifiers on one split, or over repeated random subsets (mean ± sd)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._utils import check_keys, record_provenance

__all__ = ["compare_classifiers", "repeated_comparison"]

_METRICS = ("accuracy", "macro_f1", "weighted_f1", "ece", "train_s", "predict_cells_per_s")


_SETUP_KEYS = ("layer", "scale", "embedding_key")


def _spec(value: Any) -> tuple[Any, dict, dict, dict]:
    """``Model`` | ``(Model, init_kwargs)`` | ``(Model, init_kwargs, train_kwargs)`` |
    ``(Model, init_kwargs, train_kwargs, setup_kwargs)`` → the four parts."""
    if not isinstance(value, tuple):
        return value, {}, {}, {}
    if not 1 <= len(value) <= 4:
        msg = f"a model spec is (class, init_kwargs, train_kwargs, setup_kwargs) at most, got {len(value)} items."
        raise ValueError(msg)
    parts = [dict(v) if v is not None else {} for v in value[1:]] + [{}] * (4 - len(value))
    bad = set(parts[2]) - set(_SETUP_KEYS)
    if bad:
        msg = f"setup_kwargs may only override {list(_SETUP_KEYS)}, got {sorted(bad)}."
        raise ValueError(msg)
    return value[0], parts[0], parts[1], parts[2]


def _resolve(cls: Any) -> Any:
    if isinstance(cls, str):
        from .. import models

        return getattr(models, cls)
    return cls


def compare_classifiers(
    adata: AnnData,
    models: Mapping[str, Any],
    *,
    labels_key: str,
    split_key: str = "split",
    train: str = "train",
    validation: str | None = "val",
    test: str = "test",
    layer: str | None = None,
    scale: str = "counts",
    embedding_key: str | None = None,
    hierarchy: Mapping[str, Sequence[str]] | None = None,
    key_added: str | None = "classifier_comparison",
) -> pd.DataFrame:
    """Train every classifier on the training cells and score it on the test cells.

    Parameters
    ----------
    adata
        Cells with labels and a split column.
    models
        Name → model class (or its name in :mod:`scpredict.models`), ``(class, init_kwargs)``,
        ``(class, init_kwargs, train_kwargs)`` or ``(class, init_kwargs, train_kwargs, setup_kwargs)``, where
        ``setup_kwargs`` overrides ``layer``, ``scale`` or ``embedding_key`` for that model only (e.g.
        ``{"embedding_key": None}``: SCORE on its built-in encoder beside SCORE on an ``obsm`` embedding).
    labels_key
        ``obs`` column with the true cell types.
    split_key
        ``obs`` column with the split (e.g. from :func:`scpredict.pp.split_cells`).
    train, validation, test
        Values of ``split_key`` naming the three sets (``validation=None``: no validation set; each model then
        splits the training cells itself, as its ``train`` does by default, e.g. 90 % to fit and 10 % for early
        stopping; test cells are never seen in training).
    layer, scale, embedding_key
        Passed to every model's ``setup_anndata`` (unless its ``setup_kwargs`` override them).
    hierarchy
        Optional parent → children table; predicting a subtype of the truth counts as correct.
    key_added
        If not ``None``, test predictions are written to ``adata.obs[f"{key_added}_{name}"]`` (other cells
        NaN) and the table to ``adata.uns[key_added]``.

    Returns
    -------
    One row per model (index = name): ``accuracy``, ``macro_f1``, ``weighted_f1``, ``ece``, ``train_s``
    (wall-clock training seconds), ``predict_cells_per_s``, ``n_train`` (cells the model was fitted on),
    ``n_test``, ``unseen_labels``
    (test labels the model never saw, ``;``-joined) and one ``f1:<class>`` column per test class.
    With ``key_added`` it also writes ``adata.obs[f"{key_added}_{name}"]`` and ``adata.uns[key_added]``
    (``table``: the returned rows as a dict of columns, ``params``).

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_celltypes(n_cells=200, n_genes=40)
    >>> sp.pp.split_cells(adata, fractions=(0.7, 0.15, 0.15), stratify_key="cell_type")
    >>> table = sp.tl.compare_classifiers(
    ...     adata, {"logreg": "LogisticRegressionClassifier"}, labels_key="cell_type"
    ... )
    >>> bool(table.loc["logreg", "accuracy"] > 0.8)
    True
    """
    from ..metrics._classification import classification_report

    check_keys(adata, obs=[labels_key, split_key])
    split = adata.obs[split_key].astype(str).to_numpy()
    for name, value in ((train, "train"), (test, "test")):
        if not (split == name).any():
            msg = f"adata.obs[{split_key!r}] has no {value} cells (looked for the value {name!r})."
            raise ValueError(msg)
    fit_mask = (split == train) | ((split == validation) if validation is not None else False)
    fit = adata[fit_mask].copy()
    query = adata[split == test].copy()
    fit_split = fit.obs[split_key].astype(str).to_numpy()
    tr_idx = np.flatnonzero(fit_split == train)
    va_idx = np.flatnonzero(fit_split == validation) if validation is not None else None
    truth = query.obs[labels_key].astype(str).to_numpy()
    rows, preds = {}, {}
    for name, value in models.items():
        cls, init_kwargs, train_kwargs, setup_kwargs = _spec(value)
        cls = _resolve(cls)
        data = fit.copy()
        setup = {"layer": layer, "embedding_key": embedding_key, "scale": scale, **setup_kwargs}
        cls.setup_anndata(data, labels_key=labels_key, **setup)
        model = cls(data, **init_kwargs)
        kw = dict(train_kwargs)
        if (
            va_idx is not None
        ):  # explicit sets; without a validation set the model splits ``fit`` (= train) itself
            kw.setdefault("train_indices", tr_idx)
            if len(va_idx) and "validation_indices" in _train_args(model):
                kw.setdefault("validation_indices", va_idx)
        t0 = time.perf_counter()
        model.train(**kw)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        proba = model.get_probabilities(query)
        predict_s = time.perf_counter() - t0
        pred = np.asarray(model.classes_, dtype=object)[proba.argmax(axis=1)].astype(str)
        rep = classification_report(truth, pred, proba=proba, classes=model.classes_, hierarchy=hierarchy)
        row = {k: rep[k] for k in ("accuracy", "macro_f1", "weighted_f1", "ece")}
        row.update(
            train_s=train_s,
            predict_cells_per_s=query.n_obs / max(predict_s, 1e-9),
            n_train=int((model.train_params_ or {}).get("n_train", len(tr_idx))),
            n_test=int(query.n_obs),
            unseen_labels=";".join(rep["unseen_labels"]),
        )
        row.update({f"f1:{c}": v for c, v in rep["per_class_f1"].items()})
        rows[name] = row
        preds[name] = pred
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "model"
    if key_added is not None:
        test_mask = split == test
        for name, pred in preds.items():
            col = np.full(adata.n_obs, np.nan, dtype=object)
            col[test_mask] = pred
            adata.obs[f"{key_added}_{name}"] = pd.Categorical(col)
        record_provenance(
            adata,
            key_added,
            {"labels_key": labels_key, "split_key": split_key, "models": list(models), "scale": scale},
            table={c: table[c].tolist() for c in table.columns},
            models=list(table.index),
        )
    return table


def _train_args(model: Any) -> set[str]:
    import inspect

    params = set(inspect.signature(model.train).parameters)
    if "kwargs" in params:  # forwards to BaseModel.train, which takes validation_indices
        params.add("validation_indices")
    return params


def repeated_comparison(
    adata: AnnData,
    models: Mapping[str, Any],
    *,
    labels_key: str,
    n_cells: int = 300,
    n_repeats: int = 5,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    **kwargs: Any,
) -> pd.DataFrame:
    """Repeat :func:`compare_classifiers` on random subsets of ``n_cells`` cells and summarise (mean ± sd).

    The seed's "Model_comparison_random_300" analysis: each repeat draws ``n_cells`` cells without replacement,
    splits them (stratified by ``labels_key``) into train/validation/test, trains every model and scores it.

    Parameters
    ----------
    adata
        All cells.
    models
        As in :func:`compare_classifiers`.
    labels_key
        ``obs`` column with the true cell types.
    n_cells
        Cells per subset.
    n_repeats
        Number of random subsets.
    fractions
        Train/validation/test fractions within a subset.
    seed
        Seed of the subset draws (repeat ``r`` uses ``seed + r``).
    **kwargs
        Passed to :func:`compare_classifiers` (``layer``, ``scale``, ``embedding_key``, ``hierarchy``).

    Returns
    -------
    One row per model with ``<metric>_mean`` and ``<metric>_sd`` for accuracy, macro/weighted F1, ECE, train
    seconds and prediction speed; the per-repeat rows are in ``result.attrs["repeats"]`` (a DataFrame with a
    ``repeat`` column).
    """
    from ..pp._split import split_cells

    check_keys(adata, obs=[labels_key])
    if n_cells > adata.n_obs:
        msg = f"n_cells={n_cells} exceeds the {adata.n_obs} cells available."
        raise ValueError(msg)
    runs = []
    for r in range(n_repeats):
        rng = np.random.default_rng(seed + r)
        sub = adata[np.sort(rng.choice(adata.n_obs, n_cells, replace=False))].copy()
        split_cells(sub, fractions=fractions, stratify_key=labels_key, seed=seed + r, key_added="_split")
        table = compare_classifiers(
            sub, models, labels_key=labels_key, split_key="_split", key_added=None, **kwargs
        )
        table = table[list(_METRICS)].copy()
        table["repeat"] = r
        runs.append(table.reset_index())
    repeats = pd.concat(runs, ignore_index=True)
    grouped = repeats.groupby("model", sort=False)[list(_METRICS)]
    summary = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_sd"))
    summary = summary[[f"{m}_{s}" for m in _METRICS for s in ("mean", "sd")]]
    summary.attrs["repeats"] = repeats
    return summary
