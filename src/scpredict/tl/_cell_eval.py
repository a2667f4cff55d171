"""Export real and predicted cells in the layout that cell-eval (Arc Institute) reads."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from .._utils import check_keys, get_array
from ._evaluate import _check_scale, _dense

__all__ = ["to_cell_eval"]


def to_cell_eval(
    adata: AnnData,
    predicted: AnnData,
    *,
    directory: str | Path,
    perturbation_key: str,
    control: str = "control",
    layer: str | None = None,
    predicted_layer: str | None = None,
    pert_col: str = "target",
    scale: Literal["log1p"] | None = None,
    overwrite: bool = False,
) -> dict[str, Path | str]:
    """Write ``real.h5ad`` and ``pred.h5ad`` for ``cell-eval run`` (Virtual Cell Challenge evaluation).

    cell-eval needs two AnnData files with the same genes (same order), the same set of perturbation labels in
    ``obs[pert_col]``, control cells in both, and log1p-normalized ``X``. Profiles (one row per perturbation)
    are repeated to the number of real cells of their perturbation, as cell-eval's own baseline does; when the
    predictions hold no control rows, the real control cells are used as the predicted controls.

    Parameters
    ----------
    adata
        Real cells (perturbations of ``predicted`` + control cells).
    predicted
        Predicted profiles or cells with ``obs[perturbation_key]``.
    directory
        Output folder (created).
    perturbation_key
        ``obs`` column of perturbation labels in both objects.
    control
        Control label.
    layer, predicted_layer
        Layers holding the expression (``None`` = ``X``).
    pert_col
        Name of the perturbation column in the written files (cell-eval's ``--pert-col``).
    scale
        Declare both inputs log-normalized (see :func:`evaluate_perturbations`).
    overwrite
        Replace existing files.

    Returns
    -------
    Dict with ``real`` and ``pred`` (paths of the written files) and ``command`` (the ``cell-eval run`` command
    line). The files hold dense ``X`` (float32 when the input is float32, else float64) over the shared genes, ``obs[pert_col]`` and
    ``uns['log1p'] = {'base': None}``.

    Examples
    --------
    >>> import scpredict as sp, tempfile
    >>> adata = sp.datasets.synthetic_perturbation(n_cells=300, n_genes=20)
    >>> sp.models.ControlBaseline.setup_anndata(adata, perturbation_key="perturbation")
    >>> m = sp.models.ControlBaseline(adata)
    >>> m.train()
    >>> files = sp.tl.to_cell_eval(adata, m.get_perturbation_profiles(["P1", "P2"]), directory=tempfile.mkdtemp(),
    ...                            perturbation_key="perturbation", scale="log1p")
    >>> sorted(files)
    ['command', 'pred', 'real']
    """
    check_keys(adata, obs=[perturbation_key])
    check_keys(predicted, obs=[perturbation_key])
    _check_scale(adata, layer=layer, scale=scale, what="adata (the real cells)")
    _check_scale(predicted, layer=predicted_layer, scale=scale, what="predicted")
    genes = adata.var_names.intersection(predicted.var_names, sort=False)
    if len(genes) == 0:
        raise ValueError("adata and predicted share no gene names.")
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    plabels = predicted.obs[perturbation_key].astype(str).to_numpy()
    if control not in set(labels):
        raise ValueError(f"control label {control!r} does not occur in adata.obs[{perturbation_key!r}].")
    perts = sorted(set(plabels) - {control})
    absent = sorted(set(perts) - set(labels))
    if absent:
        raise ValueError(f"predicted perturbations without real cells: {absent[:10]}.")
    directory = Path(directory)
    real_path, pred_path = directory / "real.h5ad", directory / "pred.h5ad"
    if not overwrite and (real_path.exists() or pred_path.exists()):
        raise FileExistsError(f"{directory} already holds real.h5ad/pred.h5ad; pass overwrite=True.")
    x = _dense(get_array(adata, layer=layer))[:, adata.var_names.get_indexer(genes)]
    xp = _dense(get_array(predicted, layer=predicted_layer))[:, predicted.var_names.get_indexer(genes)]
    if not np.isfinite(xp).all():
        raise ValueError("predicted contains NaN/inf values; subset it to the genes the model predicts.")

    keep = np.isin(labels, [*perts, control])
    # keep the inputs' precision (float32 stays float32), so both tools see exactly the same values
    dtype = np.float32 if get_array(adata, layer=layer).dtype == np.float32 else np.float64
    pdtype = np.float32 if get_array(predicted, layer=predicted_layer).dtype == np.float32 else np.float64
    real = AnnData(
        X=x[keep].astype(dtype),
        obs=pd.DataFrame({pert_col: labels[keep]}, index=adata.obs_names[keep].astype(str)),
        var=pd.DataFrame(index=pd.Index(genes)),
    )
    blocks, names = [], []
    for p in perts:
        rows = xp[plabels == p]
        n_real = int((labels == p).sum())
        blocks.append(np.repeat(rows, n_real, axis=0) if len(rows) == 1 else rows)
        names += [p] * len(blocks[-1])
    own_ctrl = (plabels == control).sum() > 1
    ctrl_rows = xp[plabels == control] if own_ctrl else x[labels == control]
    blocks.append(ctrl_rows)
    names += [control] * len(ctrl_rows)
    pred = AnnData(
        X=np.vstack(blocks).astype(pdtype if own_ctrl or pdtype == dtype else np.float64),
        obs=pd.DataFrame({pert_col: names}, index=[f"pred{i}" for i in range(len(names))]),
        var=pd.DataFrame(index=pd.Index(genes)),
    )
    for a in (real, pred):
        a.uns["log1p"] = {"base": None}
    directory.mkdir(parents=True, exist_ok=True)
    real.write_h5ad(real_path)
    pred.write_h5ad(pred_path)
    command = (
        f"cell-eval run --adata-pred {pred_path} --adata-real {real_path} --control-pert {control} "
        f"--pert-col {pert_col} --profile vcc"
    )
    return {"real": real_path, "pred": pred_path, "command": command}
