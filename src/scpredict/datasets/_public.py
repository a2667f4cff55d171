"""Loaders for public datasets, by local path (nothing is downloaded).

Each loader normalises the obs schema: perturbation datasets get ``obs['perturbation']`` with the control
label ``"control"`` and combinations written ``A+B``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

__all__ = [
    "norman19",
    "kang18",
    "l1000_a375",
    "cellbench_lung",
    "mouse_bladder",
    "sciplex3_smiles",
    "ranked_signatures",
    "gene_positions",
]


def _resolve(path: str | Path | None, filename: str) -> Path:
    from .._settings import settings

    p = Path(path) if path is not None else Path(settings.data_dir) / filename
    if p.is_dir():
        p = p / filename
    if not p.exists():
        raise FileNotFoundError(
            f"{p} does not exist. Pass `path=` pointing at your local copy of {filename!r} "
            "(or set sp.settings.data_dir / $SCPREDICT_DATA_DIR); nothing is downloaded."
        )
    return p


def _read(p: Path) -> AnnData:
    import anndata as ad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return ad.read_h5ad(p)


def norman19(
    path: str | Path | None = None, *, subset: Literal["norman", "mcfaline", "all"] = "norman"
) -> AnnData:
    """Norman et al. 2019 K562 CRISPRa (and McFaline-Figueroa 2023 CRISPRi), the PerturBench dev subset.

    Parameters
    ----------
    path
        The file ``norman19_mcfaline23_devel.h5ad`` (or its folder).
    subset
        ``"norman"`` (K562 CRISPRa, singles and pairs), ``"mcfaline"`` (3 glioblastoma lines) or ``"all"``.

    Returns
    -------
    AnnData (log1p-normalized ``X``, 500 HVGs) with ``obs['perturbation']`` (``control``, ``A``, ``A+B``) and
    ``obs['cell_type']``.
    """
    adata = _read(_resolve(path, "norman19_mcfaline23_devel.h5ad"))
    if subset != "all":
        name = {"norman": "norman19", "mcfaline": "mcfaline23"}[subset]
        adata = adata[adata.obs["dataset"].astype(str).str.startswith(name[:6])].copy()
    pert = adata.obs["perturbation"].astype(str)
    adata.obs["perturbation"] = pd.Categorical(pert.replace({"ctrl": "control", "Control": "control"}))
    return adata


def kang18(path: str | Path | None = None) -> AnnData:
    """Kang et al. 2018 PBMC, IFN-β stimulated vs control (scGen validation split).

    Returns
    -------
    AnnData (log-normalized ``X``) with ``obs['condition']`` (``control``/``stimulated``) and ``obs['cell_type']``.
    """
    adata = _read(_resolve(path, "kang18_ifnb_pbmc_valid.h5ad"))
    adata.obs["condition"] = pd.Categorical(adata.obs["condition"].astype(str))
    return adata


def l1000_a375(path: str | Path | None = None) -> AnnData:
    """LINCS L1000 plate LJP005 (A375, 24 h): 59 compounds × 6 doses and DMSO wells, 978 landmark genes.

    Returns
    -------
    AnnData (log2 expression) with ``obs['perturbation']`` (compound name, ``control`` for DMSO), ``obs['dose']``
    (µM, float), ``obs['smiles']`` and the original L1000 columns.
    """
    adata = _read(_resolve(path, "l1000_a375_ljp005.h5ad"))
    ctrl = adata.obs["pert_type"].astype(str).eq("ctl_vehicle")
    pert = adata.obs["pert_iname"].astype(str).where(~ctrl, "control")
    adata.obs["perturbation"] = pd.Categorical(pert)
    adata.obs["dose"] = pd.to_numeric(adata.obs["pert_dose"], errors="coerce").astype(float)
    return adata


def cellbench_lung(path: str | Path | None = None, *, singlets_only: bool = True) -> AnnData:
    """CellBench mixology: 5 lung cancer cell lines by CEL-seq2 and Drop-seq (raw counts, Ensembl ids).

    Parameters
    ----------
    path
        The file ``cellbench_lung5cl_celseq2_dropseq.h5ad`` (or its folder).
    singlets_only
        Keep ``demuxlet_cls == "SNG"`` cells.

    Returns
    -------
    AnnData with integer counts in ``X`` and ``obs['cell_line']``, ``obs['protocol']``.
    """
    adata = _read(_resolve(path, "cellbench_lung5cl_celseq2_dropseq.h5ad"))
    if singlets_only:
        adata = adata[adata.obs["demuxlet_cls"].astype(str) == "SNG"].copy()
    return adata


def mouse_bladder(path: str | Path | None = None) -> AnnData:
    """Mouse bladder cells (Han et al. 2018; scDeepCluster selection): 2,100 cells, 16 classes, raw counts.

    Returns
    -------
    AnnData with integer counts in ``X`` and ``obs['label']`` (also copied to ``obs['cell_type']``).
    """
    adata = _read(_resolve(path, "mouse_bladder_2100.h5ad"))
    adata.obs["cell_type"] = adata.obs["label"].astype("category")
    return adata


def sciplex3_smiles(path: str | Path | None = None) -> pd.DataFrame:
    """SMILES of the sci-Plex3 drugs: a DataFrame with columns ``drug``, ``smiles``, ``pathway``."""
    p = _resolve(path, "sciplex3_drugs_smiles.csv")
    return pd.read_csv(p, header=None, names=["drug", "smiles", "pathway"])


def ranked_signatures(
    path: str | Path | None = None, *, which: Literal["tahoe_a498", "sciplex3_a549"] = "tahoe_a498"
) -> pd.DataFrame:
    """Ranked drug signatures (genes ranked by logFC × -log10 adj. p vs DMSO) as a long table.

    Returns
    -------
    DataFrame
        Columns ``drug``, ``rank``, ``gene``, ``in_top_up``. Needs pyarrow (``pip install scpredict[parquet]``).
    """
    fname = {
        "tahoe_a498": "tahoe_a498_ranked_degs.parquet",
        "sciplex3_a549": "sciplex3_a549_ranked_degs.parquet",
    }[which]
    p = _resolve(path, fname)
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover
        raise ImportError("Reading parquet needs pyarrow: pip install 'scpredict[parquet]'") from e
    return pq.read_table(p).to_pandas()


def gene_positions(path: str | Path | None = None) -> pd.DataFrame:
    """Gene coordinates (hg19, GENCODE v19): DataFrame indexed by symbol with ``chromosome``, ``start``, ``end``."""
    p = _resolve(path, "gene_positions_gencode_v19.tsv")
    df = pd.read_csv(p, sep="\t", header=None, names=["symbol", "chromosome", "start", "end"])
    df = df.drop_duplicates("symbol").set_index("symbol")
    df["start"] = df["start"].astype(np.int64)
    df["end"] = df["end"].astype(np.int64)
    return df
