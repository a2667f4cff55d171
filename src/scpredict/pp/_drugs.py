"""Drug perturbation preprocessing: molecular features, ΔExpression against the vehicle, pair filtering."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp_sparse
from anndata import AnnData

from .._utils import check_keys, get_array, record_provenance

__all__ = ["drug_features", "tanimoto_similarity", "drug_deltas", "filter_pairs", "split_pairs"]


def _import_rdkit():
    try:
        from rdkit import Chem, DataStructs, rdBase
        from rdkit.Chem import Descriptors, rdFingerprintGenerator
        from rdkit.Chem.MolStandardize import rdMolStandardize
    except ImportError:  # pragma: no cover - depends on the environment
        msg = "Drug features need rdkit: pip install 'scpredict[chem]'."
        raise ImportError(msg) from None
    return Chem, DataStructs, rdBase, Descriptors, rdFingerprintGenerator, rdMolStandardize


def drug_features(
    smiles: Sequence[str] | pd.Series | Mapping[str, str],
    *,
    kind: Literal["morgan", "morgan_count", "descriptors"] = "morgan",
    radius: int = 2,
    n_bits: int = 2048,
    strip_salts: bool = True,
) -> pd.DataFrame:
    """Molecular features of drugs from SMILES with rdkit.

    Morgan (ECFP-like) fingerprints (Rogers & Hahn, J Chem Inf Model 2010) are the representation
    chemCPA (Hetzel et al., NeurIPS 2022) found to carry drug effects to unseen drugs; ``"descriptors"``
    gives rdkit's ~200 physico-chemical 2D descriptors (``Descriptors.CalcMolDescriptors``).

    Parameters
    ----------
    smiles
        SMILES strings; a Series or mapping gives the drug names (index / keys), a plain sequence uses the
        SMILES themselves as names.
    kind
        ``"morgan"``: bit fingerprint (0/1); ``"morgan_count"``: count fingerprint (how often each hashed
        substructure occurs); ``"descriptors"``: rdkit 2D descriptors (NaN/inf replaced by 0).
    radius
        Morgan radius (2 = ECFP4).
    n_bits
        Fingerprint length.
    strip_salts
        Keep only the largest organic fragment (drops counter-ions and solvents such as ``.Cl``, ``.O``).

    Returns
    -------
    DataFrame (drugs x features), float32, indexed by drug name, columns ``morgan_<i>`` /
    ``morgan_count_<i>`` or the descriptor names.

    Raises
    ------
    ValueError
        When a SMILES cannot be parsed; the message names the drug and the SMILES.

    Examples
    --------
    >>> fp = sp.pp.drug_features({"aspirin": "CC(=O)Oc1ccccc1C(=O)O"}, n_bits=64)
    >>> fp.shape
    (1, 64)
    """
    Chem, _, rdBase, Descriptors, rdFingerprintGenerator, rdMolStandardize = _import_rdkit()
    if kind not in ("morgan", "morgan_count", "descriptors"):
        msg = f"kind must be 'morgan', 'morgan_count' or 'descriptors', got {kind!r}."
        raise ValueError(msg)
    if isinstance(smiles, Mapping):
        names, values = list(smiles.keys()), list(smiles.values())
    elif isinstance(smiles, pd.Series):
        names, values = list(smiles.index), list(smiles.to_numpy())
    elif isinstance(smiles, str):
        names, values = [smiles], [smiles]
    else:
        values = list(smiles)
        names = list(values)
    chooser = rdMolStandardize.LargestFragmentChooser(preferOrganic=True) if strip_salts else None
    mols = []
    with rdBase.BlockLogs():
        for name, smi in zip(names, values, strict=True):
            mol = Chem.MolFromSmiles(smi) if isinstance(smi, str) and smi.strip() else None
            if mol is None:
                msg = f"Invalid SMILES for drug {name!r}: {smi!r} (rdkit could not parse it)."
                raise ValueError(msg)
            if chooser is not None:
                mol = chooser.choose(mol)
            mols.append(mol)
    if kind == "descriptors":
        rows = [Descriptors.CalcMolDescriptors(m) for m in mols]
        out = pd.DataFrame(rows, index=pd.Index(names, name="drug")).astype(np.float64)
        out = out.replace([np.inf, -np.inf], np.nan).fillna(0.0)
        return out.astype(np.float32)
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    if kind == "morgan":
        arr = np.stack([gen.GetFingerprintAsNumPy(m) for m in mols]).astype(np.float32)
    else:
        arr = np.stack([gen.GetCountFingerprintAsNumPy(m) for m in mols]).astype(np.float32)
    return pd.DataFrame(
        arr, index=pd.Index(names, name="drug"), columns=[f"{kind}_{i}" for i in range(n_bits)]
    )


def tanimoto_similarity(
    a: np.ndarray | pd.DataFrame, b: np.ndarray | pd.DataFrame | None = None
) -> np.ndarray:
    """Tanimoto (Jaccard) similarity between fingerprints.

    For bit vectors ``|a ∧ b| / |a ∨ b|``; for count vectors the min/max generalisation
    ``Σ min(a_i, b_i) / Σ max(a_i, b_i)`` (Ružička), which equals the former on 0/1 input.
    Two all-zero fingerprints have similarity 0.

    Parameters
    ----------
    a
        Fingerprints (n x bits), non-negative.
    b
        Fingerprints (m x bits); ``a`` when omitted.

    Returns
    -------
    ndarray (n, m) of similarities in [0, 1].
    """
    a = np.asarray(a, dtype=np.float64)
    b = a if b is None else np.asarray(b, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if b.ndim == 1:
        b = b[None]
    if (a < 0).any() or (b < 0).any():
        msg = "Tanimoto similarity needs non-negative fingerprints."
        raise ValueError(msg)
    if np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all():
        inter = a @ b.T
        union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    else:
        inter = np.minimum(a[:, None, :], b[None, :, :]).sum(-1)
        union = np.maximum(a[:, None, :], b[None, :, :]).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return sim


def _as_list(control: str | Sequence[str]) -> list[str]:
    return [control] if isinstance(control, str) else list(control)


def drug_deltas(
    adata: AnnData,
    *,
    drug_key: str,
    cell_line_key: str | None = None,
    control: str | Sequence[str] = "DMSO_TF",
    plate_key: str | None = None,
    dose_key: str | None = None,
    layer: str | None = None,
    min_cells: int = 1,
    missing_control: Literal["raise", "drop"] = "raise",
) -> AnnData:
    """ΔExpression of every (drug, dose, cell line) against the same cell line's vehicle control.

    Δ = mean expression of the treated cells − mean expression of the control cells of the same cell
    line (and the same plate when ``plate_key`` is given), on whatever scale the input holds (use
    log-normalized expression). Control cells are those whose ``drug_key`` value *equals* one of
    ``control`` exactly: a drug called ``"Foo (DMSO_TF solvate)"`` is a treatment, not a control.

    This builds a new AnnData with one row per condition (like :func:`scanpy.get.aggregate`), so it
    returns it instead of writing into ``adata``, which is left unchanged.

    Parameters
    ----------
    adata
        Cells (or pseudobulk samples) x genes.
    drug_key
        ``obs`` column with the drug name.
    cell_line_key
        ``obs`` column with the cell line; ``None`` treats all cells as one line.
    control
        Name(s) of the vehicle control (Tahoe-100M: ``"DMSO_TF"``; L1000: ``"DMSO"``).
    plate_key
        ``obs`` column with the plate; when given, treated cells are compared with controls of the same
        line on the same plate.
    dose_key
        ``obs`` column with the dose; conditions are then (drug, dose, cell line).
    layer
        Layer to use instead of ``X``.
    min_cells
        Conditions with fewer treated cells are left out.
    missing_control
        ``"raise"`` (a ``ValueError`` naming the cell line / plate without control) or ``"drop"`` those
        conditions.

    Returns
    -------
    AnnData (conditions x genes) with

    - ``X`` : ndarray float32, Δ = mean(treated) − mean(matched control);
    - ``layers["treated"]`` / ``layers["control"]`` : the two means;
    - ``obs`` : ``drug_key``, ``dose_key``, ``cell_line_key``, ``plate_key`` (those given), ``n_cells``,
      ``n_control``;
    - ``var`` : a copy of ``adata.var``;
    - ``uns["drug_deltas"]["params"]`` : the call's parameters.

    Examples
    --------
    >>> deltas = sp.pp.drug_deltas(adata, drug_key="drug", cell_line_key="cell_line_id")  # doctest: +SKIP
    """
    keys = [k for k in (drug_key, cell_line_key, plate_key, dose_key) if k is not None]
    check_keys(adata, obs=keys)
    if missing_control not in ("raise", "drop"):
        msg = f"missing_control must be 'raise' or 'drop', got {missing_control!r}."
        raise ValueError(msg)
    controls = _as_list(control)
    drug = adata.obs[drug_key].astype(str).to_numpy()
    is_ctrl = np.isin(drug, controls)
    if not is_ctrl.any():
        close = sorted({d for d in np.unique(drug) if any(c.lower() in d.lower() for c in controls)})[:5]
        hint = f" Names containing it (not controls, exact match only): {close}." if close else ""
        msg = f"No cells with adata.obs[{drug_key!r}] exactly equal to {controls}.{hint}"
        raise ValueError(msg)
    X = get_array(adata, layer=layer)
    X = X.tocsr() if sp_sparse.issparse(X) else np.asarray(X)
    ctx_keys = [k for k in (cell_line_key, plate_key) if k is not None]
    ctx = (
        adata.obs[ctx_keys].astype(str).agg("|".join, axis=1).to_numpy()
        if ctx_keys
        else np.full(adata.n_obs, "all", dtype=object)
    )

    def _mean(mask: np.ndarray) -> np.ndarray:
        return np.asarray(X[mask].mean(axis=0), dtype=np.float64).ravel()

    ctrl_means = {c: _mean(is_ctrl & (ctx == c)) for c in np.unique(ctx[is_ctrl])}
    ctrl_counts = {c: int((is_ctrl & (ctx == c)).sum()) for c in ctrl_means}
    cond_keys = [k for k in (drug_key, dose_key, cell_line_key, plate_key) if k is not None]
    treated = adata.obs.loc[~is_ctrl, cond_keys].copy()
    treated["_ctx"] = ctx[~is_ctrl]
    treated["_row"] = np.nonzero(~is_ctrl)[0]
    rows_obs, deltas, t_means, c_means = [], [], [], []
    missing: list[str] = []
    for values, grp in treated.groupby(cond_keys + ["_ctx"], observed=True, sort=True):
        c = values[-1]
        if len(grp) < min_cells:
            continue
        if c not in ctrl_means:
            missing.append(c)
            continue
        mask = np.zeros(adata.n_obs, dtype=bool)
        mask[grp["_row"].to_numpy()] = True
        t = _mean(mask)
        t_means.append(t)
        c_means.append(ctrl_means[c])
        deltas.append(t - ctrl_means[c])
        rows_obs.append(
            {
                **dict(zip(cond_keys, values[:-1], strict=True)),
                "n_cells": len(grp),
                "n_control": ctrl_counts[c],
            }
        )
    if missing and missing_control == "raise":
        what = " / ".join(ctx_keys) if ctx_keys else "the data"
        msg = (
            f"No {controls} control cells for {what} = {sorted(set(missing))[:10]}; "
            "pass missing_control='drop' to leave those conditions out."
        )
        raise ValueError(msg)
    if not deltas:
        msg = f"No treated condition has at least min_cells={min_cells} cells and a matching control."
        raise ValueError(msg)
    obs = pd.DataFrame(rows_obs)
    for k in cond_keys:
        if k != dose_key:
            obs[k] = pd.Categorical(obs[k].astype(str))
    obs.index = pd.Index(obs[cond_keys].astype(str).agg("|".join, axis=1).to_numpy())
    out = AnnData(
        X=np.asarray(deltas, dtype=np.float32),
        obs=obs,
        var=adata.var.copy(),
        layers={
            "treated": np.asarray(t_means, dtype=np.float32),
            "control": np.asarray(c_means, dtype=np.float32),
        },
    )
    record_provenance(
        out,
        "drug_deltas",
        {
            "drug_key": drug_key,
            "cell_line_key": cell_line_key,
            "control": controls,
            "plate_key": plate_key,
            "dose_key": dose_key,
            "layer": layer,
            "min_cells": min_cells,
            "missing_control": missing_control,
        },
    )
    return out


def filter_pairs(
    adata: AnnData,
    *,
    drug_key: str,
    cell_line_key: str,
    min_cells: int = 10,
    min_cell_lines: int = 1,
    control: str | Sequence[str] | None = "DMSO_TF",
    copy: bool = False,
) -> AnnData | None:
    """Keep the cells of (drug, cell line) pairs with enough cells, as the seed's long-tail filtering does.

    Tahoe-100M is strongly imbalanced per drug, cell line and pair (see :func:`scpredict.tl.imbalance`);
    pairs with few cells give noisy Δ and unstable training, so they are removed. Control cells are
    always kept (they are every pair's baseline).

    Parameters
    ----------
    adata
        Cells x genes.
    drug_key, cell_line_key
        ``obs`` columns with the drug and the cell line.
    min_cells
        Smallest number of cells a (drug, cell line) pair must have.
    min_cell_lines
        Drugs whose surviving pairs cover fewer cell lines are removed entirely.
    control
        Control name(s) (exact match), kept regardless of counts; ``None`` treats no drug as control.
    copy
        Return a filtered copy instead of subsetting ``adata`` in place.

    Returns
    -------
    ``None`` (``adata`` is subset in place and ``adata.uns["filter_pairs"]["params"]`` records the call,
    with ``n_pairs_kept`` and ``n_pairs_removed``), or the filtered copy when ``copy=True``.
    """
    check_keys(adata, obs=[drug_key, cell_line_key])
    if min_cells < 1 or min_cell_lines < 1:
        msg = f"min_cells and min_cell_lines must be >= 1 (got {min_cells}, {min_cell_lines})."
        raise ValueError(msg)
    drug = adata.obs[drug_key].astype(str).to_numpy()
    line = adata.obs[cell_line_key].astype(str).to_numpy()
    is_ctrl = np.isin(drug, _as_list(control)) if control is not None else np.zeros(adata.n_obs, dtype=bool)
    pairs = pd.DataFrame({"drug": drug, "line": line})[~is_ctrl]
    counts = pairs.groupby(["drug", "line"]).size()
    good = counts[counts >= min_cells]
    n_lines = good.reset_index().groupby("drug")["line"].nunique()
    good_drugs = set(n_lines[n_lines >= min_cell_lines].index)
    good_pairs = {p for p in good.index if p[0] in good_drugs}
    keep = is_ctrl | np.array([(d, c) in good_pairs for d, c in zip(drug, line, strict=True)], dtype=bool)
    if not keep.any():
        msg = f"No cells left after filtering pairs with min_cells={min_cells}, min_cell_lines={min_cell_lines}."
        raise ValueError(msg)
    params = {
        "drug_key": drug_key,
        "cell_line_key": cell_line_key,
        "min_cells": min_cells,
        "min_cell_lines": min_cell_lines,
        "control": control,
    }
    if copy:
        target = adata[keep].copy()
    else:
        target = adata
        target._inplace_subset_obs(keep)  # as scanpy's filter_cells does
    record_provenance(
        target,
        "filter_pairs",
        params,
        n_pairs_kept=len(good_pairs),
        n_pairs_removed=len(counts) - len(good_pairs),
    )
    return target if copy else None


def split_pairs(
    adata: AnnData,
    *,
    drug_key: str,
    cell_line_key: str,
    control: str | Sequence[str] = "DMSO_TF",
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int | None = None,
    key_added: str = "split",
) -> None:
    """Split by (drug, cell line) pair: all cells of a pair land in the same set (the seed's split).

    A test pair's drug and line are each seen in training in other pairs, so this measures generalisation to
    new combinations. Control cells always go to ``train``. For unseen drugs use
    :func:`scpredict.pp.split_perturbations`; for unseen cell lines or plates :func:`scpredict.pp.split_covariate`.

    Parameters
    ----------
    adata
        Cells x genes.
    drug_key, cell_line_key
        ``obs`` columns with the drug and the cell line.
    control
        Control name(s) (exact match).
    test_fraction, val_fraction
        Fractions of treated pairs held out for test and validation.
    seed
        Random seed (default ``sp.settings.seed``).
    key_added
        ``obs`` column and ``uns`` key to write.

    Returns
    -------
    ``None``; writes

    - ``adata.obs[key_added]`` : categorical ``train`` / ``val`` / ``test``;
    - ``adata.uns[key_added]`` : ``params`` and the ``test`` and ``val`` pairs as ``"drug|line"`` strings.
    """
    from .._settings import settings

    check_keys(adata, obs=[drug_key, cell_line_key])
    if not (0 <= test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        msg = f"test_fraction and val_fraction must be in [0, 1) with a sum < 1 (got {test_fraction}, {val_fraction})."
        raise ValueError(msg)
    drug = adata.obs[drug_key].astype(str).to_numpy()
    line = adata.obs[cell_line_key].astype(str).to_numpy()
    pair = np.char.add(np.char.add(drug.astype(str), "|"), line.astype(str))
    is_ctrl = np.isin(drug, _as_list(control))
    pairs = np.unique(pair[~is_ctrl])
    rng = np.random.default_rng(settings.seed if seed is None else seed)
    perm = rng.permutation(pairs)
    n_test = int(round(test_fraction * len(pairs)))
    n_val = int(round(val_fraction * len(pairs)))
    test, val = perm[:n_test], perm[n_test : n_test + n_val]
    labels = np.where(np.isin(pair, test), "test", np.where(np.isin(pair, val), "val", "train"))
    labels[is_ctrl] = "train"
    adata.obs[key_added] = pd.Categorical(
        labels, categories=[c for c in ("train", "val", "test") if c in set(labels)]
    )
    record_provenance(
        adata,
        key_added,
        {"kind": "pairs", "drug_key": drug_key, "cell_line_key": cell_line_key, "seed": seed},
        test=sorted(map(str, test)),
        val=sorted(map(str, val)),
    )


#: a few well-known drugs with their SMILES, for synthetic screens, tests and the demo
_EXAMPLE_DRUGS: dict[str, str] = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "salicylic acid": "Oc1ccccc1C(=O)O",
    "ibuprofen": "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
    "naproxen": "COc1ccc2cc(ccc2c1)C(C)C(=O)O",
    "caffeine": "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
    "theophylline": "Cn1c2nc[nH]c2c(=O)n(C)c1=O",
    "paracetamol": "CC(=O)Nc1ccc(O)cc1",
    "phenacetin": "CCOc1ccc(NC(C)=O)cc1",
    "metformin": "CN(C)C(=N)N=C(N)N",
    "phenformin": "NC(=N)N=C(N)NCCc1ccccc1",
    "imatinib": "Cc1ccc(NC(=O)c2ccc(CN3CCN(C)CC3)cc2)cc1Nc1nccc(-c2cccnc2)n1",
    "nilotinib": "Cc1cn(-c2cc(NC(=O)c3ccc(C)c(Nc4nccc(-c5cccnc5)n4)c3)cc(C(F)(F)F)c2)cn1",
    "vorinostat": "ONC(=O)CCCCCCC(=O)Nc1ccccc1",
    "belinostat": "ONC(=O)/C=C/c1cccc(S(=O)(=O)Nc2ccccc2)c1",
    "tamoxifen": "CCC(=C(c1ccccc1)c1ccc(OCCN(C)C)cc1)c1ccccc1",
    "raloxifene": "Oc1ccc(cc1)-c1sc2cc(O)ccc2c1C(=O)c1ccc(OCCN2CCCCC2)cc1",
}


def _synthetic_drug_screen(
    *,
    n_genes: int = 60,
    n_cell_lines: int = 2,
    doses: Sequence[float] = (0.1, 1.0),
    cells_per_condition: int = 6,
    n_controls: int = 20,
    noise: float = 0.2,
    seed: int = 0,
) -> AnnData:
    """A drug screen whose Δ is a linear function of the drugs' fingerprints (so similar drugs act alike).

    Δ(drug, dose, line) = s_line · dose/(dose + 0.3) · W · fp(drug); expression = line baseline + Δ + noise.
    Columns: ``obs['drug']`` (``"DMSO_TF"`` = control), ``obs['smiles']``, ``obs['cell_line']``,
    ``obs['dose']``; the true Δ per drug is in ``uns['true_effect']`` (drugs x genes, at dose 1, scale 1).
    """
    rng = np.random.default_rng(seed)
    names = list(_EXAMPLE_DRUGS)
    fp = drug_features({n: _EXAMPLE_DRUGS[n] for n in names}, n_bits=256, radius=2).to_numpy()
    W = rng.normal(size=(n_genes, fp.shape[1])) * (rng.random((n_genes, fp.shape[1])) < 0.1)
    effect = fp @ W.T
    effect = 1.2 * effect / (np.abs(effect).max(1, keepdims=True) + 1e-9)
    base = rng.normal(2.0, 0.7, size=(n_cell_lines, n_genes))
    scale = np.linspace(1.0, 0.6, n_cell_lines)
    rows, X = [], []
    for li in range(n_cell_lines):
        line = f"line{li}"
        for _ in range(n_controls):
            X.append(base[li] + rng.normal(0, noise, n_genes))
            rows.append(("DMSO_TF", "CS(C)=O", line, 0.0))
        for di, name in enumerate(names):
            for dose in doses:
                d = scale[li] * dose / (dose + 0.3) * effect[di]
                for _ in range(cells_per_condition):
                    X.append(base[li] + d + rng.normal(0, noise, n_genes))
                    rows.append((name, _EXAMPLE_DRUGS[name], line, float(dose)))
    obs = pd.DataFrame(rows, columns=["drug", "smiles", "cell_line", "dose"])
    obs.index = [f"s{i}" for i in range(len(obs))]
    for c in ("drug", "cell_line"):
        obs[c] = pd.Categorical(obs[c])
    adata = AnnData(
        np.asarray(X, dtype=np.float32), obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)])
    )
    adata.uns["true_effect"] = pd.DataFrame(effect, index=names, columns=adata.var_names)
    return adata
