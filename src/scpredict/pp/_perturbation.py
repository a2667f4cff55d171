"""Perturbation annotation: integer ids and parsed targets of combinations."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from .._keys import PERTURBATION_IDX_KEY
from .._utils import check_keys

__all__ = ["perturbation_index", "parse_targets"]


def parse_targets(perturbation: str, *, control: str = "control", sep: str = "+") -> list[str]:
    """Targets of a perturbation label: ``"A+B"`` → ``["A", "B"]``; the control and ``"ctrl"`` parts are dropped.

    Examples
    --------
    >>> parse_targets("KLF1+ctrl")
    ['KLF1']
    >>> parse_targets("control")
    []
    """
    if perturbation == control:
        return []
    parts = [p.strip() for p in str(perturbation).split(sep)]
    return [p for p in parts if p and p not in {control, "ctrl", "control"}]


def perturbation_index(
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control: str = "control",
    sep: str = "+",
    key_added: str = PERTURBATION_IDX_KEY,
    copy: bool = False,
) -> AnnData | None:
    """Give every perturbation an integer id (control = 0) and parse the targets of combinations.

    Parameters
    ----------
    adata
        Annotated data with one perturbation label per cell.
    perturbation_key
        ``obs`` column with labels such as ``"control"``, ``"KLF1"``, ``"KLF1+MAP2K6"``.
    control
        Label of control cells; must occur.
    sep
        Separator of combination targets.
    key_added
        ``obs`` column for the integer id.
    copy
        Return a modified copy instead of writing in place.

    Returns
    -------
    ``None`` (or the copy when ``copy=True``); writes

    - ``adata.obs[key_added]`` : int, 0 for control, 1.. for perturbations in sorted order
    - ``adata.obs["n_targets"]`` : int, number of targets (0 for control)
    - ``adata.uns[key_added]`` : dict with ``categories`` (list, index = id), ``targets`` (label → list of
      targets as ``"A;B"`` strings), ``control`` and ``params``

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_perturbation(n_cells=200, n_genes=30)
    >>> sp.pp.perturbation_index(adata)
    >>> int(adata.obs.loc[adata.obs["perturbation"] == "control", "perturbation_idx"].max())
    0
    """
    check_keys(adata, obs=[perturbation_key])
    labels = adata.obs[perturbation_key].astype(str)
    cats = sorted(set(labels))
    if control not in cats:
        raise ValueError(
            f"control label {control!r} does not occur in adata.obs[{perturbation_key!r}] "
            f"(values e.g. {cats[:8]}); pass control=<your control label>."
        )
    order = [control] + [c for c in cats if c != control]
    targets = {c: parse_targets(c, control=control, sep=sep) for c in order}
    if copy:
        adata = adata.copy()
    mapping = {c: i for i, c in enumerate(order)}
    adata.obs[key_added] = labels.map(mapping).astype(np.int64).to_numpy()
    adata.obs["n_targets"] = labels.map({c: len(t) for c, t in targets.items()}).astype(np.int64).to_numpy()
    adata.uns[key_added] = {
        "categories": order,
        "targets": {c: ";".join(t) for c, t in targets.items()},
        "control": control,
        "params": {"perturbation_key": perturbation_key, "control": control, "sep": sep},
    }
    return adata if copy else None


def _labels(adata: AnnData, key: str) -> pd.Series:
    check_keys(adata, obs=[key])
    return adata.obs[key].astype(str)
