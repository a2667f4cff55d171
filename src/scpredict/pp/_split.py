"""Reproducible train/validation/test splits written into an ``obs`` column."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from .._keys import SPLIT_KEY
from .._settings import settings
from .._utils import check_keys
from ._perturbation import parse_targets

__all__ = [
    "split_cells",
    "split_perturbations",
    "split_combinations",
    "split_covariate",
]


def _rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(settings.seed if seed is None else seed)


def _write(
    adata: AnnData, labels: np.ndarray, *, key_added: str, params: dict, lists: dict | None = None
) -> None:
    adata.obs[key_added] = pd.Categorical(
        labels, categories=[c for c in ("train", "val", "test") if c in set(labels)]
    )
    entry = {"params": {k: ("None" if v is None else v) for k, v in params.items()}}
    if lists:
        entry.update({k: list(map(str, v)) for k, v in lists.items()})
    adata.uns[key_added] = entry


def _stratified_fractions(n: int, fractions: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    names = np.array(["train", "val", "test"])
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or np.any(fr < 0) or not np.isclose(fr.sum(), 1.0):
        raise ValueError(
            f"fractions must be three non-negative numbers summing to 1 (train, val, test); got {fractions}"
        )
    counts = np.floor(fr * n).astype(int)
    counts[0] += n - counts.sum()
    labels = np.repeat(names, counts)
    return labels[rng.permutation(n)]


def split_cells(
    adata: AnnData,
    *,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    stratify_key: str | None = None,
    seed: int | None = None,
    key_added: str = SPLIT_KEY,
) -> None:
    """Random split of cells into ``train``/``val``/``test``, optionally stratified by an ``obs`` column.

    Parameters
    ----------
    adata
        The data.
    fractions
        Fractions of (train, val, test), summing to 1.
    stratify_key
        Split each group of this ``obs`` column separately (e.g. the cell type or perturbation).
    seed
        Random seed (default ``sp.settings.seed``).
    key_added
        ``obs`` column written.

    Returns
    -------
    ``None``; writes ``adata.obs[key_added]`` (categorical ``train``/``val``/``test``) and
    ``adata.uns[key_added]['params']``.

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_celltypes(n_cells=100, n_genes=20)
    >>> sp.pp.split_cells(adata, fractions=(0.7, 0.15, 0.15), stratify_key="cell_type")
    >>> sorted(adata.obs["split"].unique())
    ['test', 'train', 'val']
    """
    rng = _rng(seed)
    labels = np.empty(adata.n_obs, dtype=object)
    if stratify_key is None:
        labels[:] = _stratified_fractions(adata.n_obs, fractions, rng)
    else:
        check_keys(adata, obs=[stratify_key])
        groups = adata.obs[stratify_key].astype(str).to_numpy()
        for g in sorted(set(groups)):
            idx = np.flatnonzero(groups == g)
            labels[idx] = _stratified_fractions(len(idx), fractions, rng)
    _write(
        adata,
        labels,
        key_added=key_added,
        params={"kind": "cells", "fractions": list(fractions), "stratify_key": stratify_key, "seed": seed},
    )


def split_perturbations(
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control: str = "control",
    test_perturbations: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    singles_only: bool = False,
    seed: int | None = None,
    key_added: str = SPLIT_KEY,
) -> None:
    """Hold out whole perturbations: all cells of a test perturbation go to ``test``.

    Control cells are split at random (``val_fraction`` to ``val``, the same ``test_fraction`` to ``test``) so
    that every split has controls.

    Parameters
    ----------
    adata
        The data.
    perturbation_key
        ``obs`` column of perturbation labels.
    control
        Control label.
    test_perturbations
        Explicit list of held-out perturbations; drawn at random when ``None``.
    test_fraction
        Fraction of (non-control) perturbations held out when drawing.
    val_fraction
        Fraction of the remaining perturbations used for validation.
    singles_only
        Draw held-out perturbations among single perturbations only (combinations stay in train).
    seed
        Random seed (default ``sp.settings.seed``).
    key_added
        ``obs`` column written.

    Returns
    -------
    ``None``; writes ``adata.obs[key_added]`` and ``adata.uns[key_added]`` with ``params`` and the explicit
    ``train``/``val``/``test`` perturbation lists.
    """
    check_keys(adata, obs=[perturbation_key])
    rng = _rng(seed)
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    perts = sorted(set(labels) - {control})
    if control not in set(labels):
        raise ValueError(f"control label {control!r} not found in adata.obs[{perturbation_key!r}].")
    pool = [p for p in perts if len(parse_targets(p, control=control)) == 1] if singles_only else perts
    if test_perturbations is None:
        n_test = max(1, int(round(test_fraction * len(pool))))
        test = sorted(rng.choice(pool, size=n_test, replace=False).tolist())
    else:
        unknown = sorted(set(test_perturbations) - set(perts))
        if unknown:
            raise ValueError(f"test_perturbations not in adata.obs[{perturbation_key!r}]: {unknown[:10]}")
        test = sorted(test_perturbations)
    rest = [p for p in perts if p not in test]
    n_val = int(round(val_fraction * len(rest)))
    val = sorted(rng.choice(rest, size=n_val, replace=False).tolist()) if n_val else []
    train = [p for p in rest if p not in val]
    _assign_with_controls(
        adata,
        labels,
        control=control,
        train=train,
        val=val,
        test=test,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        rng=rng,
        key_added=key_added,
        params={
            "kind": "perturbations",
            "perturbation_key": perturbation_key,
            "control": control,
            "seed": seed,
        },
    )


def split_combinations(
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control: str = "control",
    test_fraction: float = 0.5,
    val_fraction: float = 0.0,
    seed: int | None = None,
    key_added: str = SPLIT_KEY,
) -> None:
    """Hold out combinations whose single perturbations are all seen in training.

    Every single perturbation stays in ``train``; a ``test_fraction`` of the combinations whose targets all
    occur as singles goes to ``test`` (and ``val_fraction`` to ``val``). Combinations with an unseen single stay
    in ``train``.

    Returns
    -------
    ``None``; writes ``adata.obs[key_added]`` and ``adata.uns[key_added]`` with ``params`` and explicit lists.
    """
    check_keys(adata, obs=[perturbation_key])
    rng = _rng(seed)
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    if control not in set(labels):
        raise ValueError(f"control label {control!r} not found in adata.obs[{perturbation_key!r}].")
    perts = sorted(set(labels) - {control})
    singles = {p for p in perts if len(parse_targets(p, control=control)) == 1}
    single_targets = {parse_targets(p, control=control)[0] for p in singles}
    combos = [p for p in perts if len(parse_targets(p, control=control)) > 1]
    eligible = [c for c in combos if all(t in single_targets for t in parse_targets(c, control=control))]
    if not eligible:
        raise ValueError(
            "no combination has all of its singles in the data; cannot hold out seen-singles combinations."
        )
    order = rng.permutation(len(eligible))
    n_test = max(1, int(round(test_fraction * len(eligible))))
    n_val = int(round(val_fraction * len(eligible)))
    test = sorted(eligible[i] for i in order[:n_test])
    val = sorted(eligible[i] for i in order[n_test : n_test + n_val])
    train = [p for p in perts if p not in test and p not in val]
    _assign_with_controls(
        adata,
        labels,
        control=control,
        train=train,
        val=val,
        test=test,
        test_fraction=0.0,
        val_fraction=0.1 if val else 0.0,
        rng=rng,
        key_added=key_added,
        params={
            "kind": "combinations",
            "perturbation_key": perturbation_key,
            "control": control,
            "seed": seed,
        },
    )


def _assign_with_controls(
    adata, labels, *, control, train, val, test, test_fraction, val_fraction, rng, key_added, params
):
    out = np.empty(len(labels), dtype=object)
    out[np.isin(labels, train)] = "train"
    out[np.isin(labels, val)] = "val"
    out[np.isin(labels, test)] = "test"
    ctrl = np.flatnonzero(labels == control)
    fr = (1.0 - test_fraction - val_fraction, val_fraction, test_fraction)
    out[ctrl] = _stratified_fractions(len(ctrl), fr, rng)
    _write(adata, out, key_added=key_added, params=params, lists={"train": train, "val": val, "test": test})


def split_covariate(
    adata: AnnData,
    *,
    covariate_key: str,
    test_values: Sequence[str],
    val_fraction: float = 0.1,
    seed: int | None = None,
    key_added: str = SPLIT_KEY,
) -> None:
    """Hold out every cell whose ``obs[covariate_key]`` is in ``test_values`` (e.g. a cell line or donor).

    Remaining cells are split at random into ``train`` and ``val``.

    Returns
    -------
    ``None``; writes ``adata.obs[key_added]`` and ``adata.uns[key_added]``.
    """
    check_keys(adata, obs=[covariate_key])
    values = adata.obs[covariate_key].astype(str).to_numpy()
    missing = sorted(set(map(str, test_values)) - set(values))
    if missing:
        raise ValueError(f"test_values not found in adata.obs[{covariate_key!r}]: {missing}")
    rng = _rng(seed)
    out = np.empty(len(values), dtype=object)
    is_test = np.isin(values, list(map(str, test_values)))
    out[is_test] = "test"
    rest = np.flatnonzero(~is_test)
    out[rest] = _stratified_fractions(len(rest), (1 - val_fraction, val_fraction, 0.0), rng)
    _write(
        adata,
        out,
        key_added=key_added,
        params={"kind": "covariate", "covariate_key": covariate_key, "seed": seed},
        lists={"test": list(test_values)},
    )
