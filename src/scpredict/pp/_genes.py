"""Gene features for sequence models over the transcriptome: genomic positions and pathway features."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._utils import get_array, record_provenance, to_dense

__all__ = ["annotate_gene_positions", "pathway_features"]

UNKNOWN_CHROMOSOME = "unknown"
_SETUP_KEY = "_scpredict"


def _chrom_sort_key(name: str) -> tuple[int, str]:
    core = name[3:] if name.lower().startswith("chr") else name
    if core.isdigit():
        return (int(core), "")
    order = {"X": 100, "Y": 101, "M": 102, "MT": 102}
    return (order.get(core.upper(), 200), core)


def annotate_gene_positions(
    adata: AnnData,
    table: str | Path | pd.DataFrame,
    *,
    gene_symbols: str | None = None,
) -> None:
    """Annotate genes with their chromosome and position from a coordinate table.

    Parameters
    ----------
    adata
        Genes in ``var``; matched by ``var_names`` (or ``var[gene_symbols]``), case-insensitively.
    table
        A tab-separated file without header (symbol, chromosome, start, end; e.g. GENCODE coordinates such as
        ``gene_positions_gencode_v19.tsv``) or a DataFrame with columns ``symbol``, ``chromosome``, ``start``,
        ``end``. When a symbol occurs several times the first row is used.
    gene_symbols
        ``var`` column with gene symbols (default: ``var_names``).

    Returns
    -------
    ``None``; writes

    - ``adata.var['chromosome']`` : categorical chromosome names in genomic order, ``"unknown"`` for genes not
      in the table
    - ``adata.var['start']``, ``adata.var['end']`` : float coordinates (NaN for unknown genes)
    - ``adata.var['locus']`` : gene start normalised to ``[0, 1]`` within its chromosome (over the table's
      genes on that chromosome; 0 for unknown genes)
    - ``adata.uns['gene_positions']`` : ``n_matched``, ``n_unknown``, the table source

    Examples
    --------
    >>> import pandas as pd, scpredict as sp
    >>> adata = sp.datasets.synthetic_perturbation(n_cells=50, n_genes=3)
    >>> tab = pd.DataFrame({"symbol": ["G0000", "G0001"], "chromosome": ["chr1", "chr2"],
    ...                     "start": [10, 20], "end": [15, 30]})
    >>> sp.pp.annotate_gene_positions(adata, tab)
    >>> adata.var["chromosome"].tolist()
    ['chr1', 'chr2', 'unknown']
    """
    if isinstance(table, pd.DataFrame):
        missing = {"symbol", "chromosome", "start", "end"} - set(table.columns)
        if missing:
            msg = f"table lacks columns {sorted(missing)}; it needs symbol, chromosome, start, end."
            raise KeyError(msg)
        tab = table[["symbol", "chromosome", "start", "end"]].copy()
        source = "DataFrame"
    else:
        path = Path(table)
        if not path.exists():
            msg = f"gene position table {path} does not exist."
            raise FileNotFoundError(msg)
        tab = pd.read_csv(path, sep="\t", header=None, usecols=[0, 1, 2, 3])
        tab.columns = ["symbol", "chromosome", "start", "end"]
        source = str(path)
    tab["chromosome"] = tab["chromosome"].astype(str)
    tab["start"] = pd.to_numeric(tab["start"], errors="coerce")
    tab["end"] = pd.to_numeric(tab["end"], errors="coerce")
    tab = tab.dropna(subset=["start"])
    span = tab.groupby("chromosome")["start"].agg(["min", "max"])
    tab["_key"] = tab["symbol"].astype(str).str.upper()
    tab = tab.drop_duplicates("_key").set_index("_key")
    if gene_symbols is None:
        symbols = pd.Index(adata.var_names.astype(str))
    else:
        if gene_symbols not in adata.var.columns:
            msg = f"adata.var[{gene_symbols!r}] does not exist (var columns: {list(adata.var.columns)[:20]})."
            raise KeyError(msg)
        symbols = pd.Index(adata.var[gene_symbols].astype(str))
    hit = tab.reindex(symbols.str.upper())
    found = hit["chromosome"].notna().to_numpy()
    chrom = np.where(found, hit["chromosome"].fillna(UNKNOWN_CHROMOSOME).to_numpy(), UNKNOWN_CHROMOSOME)
    start = hit["start"].to_numpy(dtype=float)
    end = hit["end"].to_numpy(dtype=float)
    lo = span["min"].reindex(chrom).to_numpy(dtype=float)
    hi = span["max"].reindex(chrom).to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        locus = np.where(found, (start - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    cats = sorted(set(chrom) - {UNKNOWN_CHROMOSOME}, key=_chrom_sort_key) + [UNKNOWN_CHROMOSOME]
    adata.var["chromosome"] = pd.Categorical(chrom, categories=cats)
    adata.var["start"] = start
    adata.var["end"] = end
    adata.var["locus"] = np.nan_to_num(locus, nan=0.0).clip(0.0, 1.0)
    adata.uns["gene_positions"] = {
        "n_matched": int(found.sum()),
        "n_unknown": int((~found).sum()),
        "source": source,
    }


def _registered_control(adata: AnnData) -> tuple[str, str] | None:
    store: Mapping[str, Any] = adata.uns.get(_SETUP_KEY, {})
    import json

    for rec in store.values():
        rec = json.loads(rec) if isinstance(rec, str) else rec
        extra = rec.get("extra", {}) if isinstance(rec, Mapping) else {}
        if "perturbation_key" in extra and "control" in extra:
            return str(extra["perturbation_key"]), str(extra["control"])
    return None


def pathway_features(
    adata: AnnData,
    *,
    perturbation_key: str | None = None,
    control: str | None = None,
    layer: str | None = None,
    n_features: int = 16,
    n_hidden: int = 128,
    max_epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-2,
    key_added: str = "X_pathway",
    seed: int | None = None,
) -> None:
    """Learn per-gene pathway features with a :class:`~scpredict.module.PathwayAutoencoder` on control cells.

    The autoencoder (denoising, linear decoder) is trained on the standardised log expression of the control
    cells only; a gene's features are its decoder loadings, so co-expressed genes get similar features and no
    perturbed cell is seen (seed 001, section 2.1).

    Parameters
    ----------
    adata
        Cells; expression in ``layer`` (log-normalized, or counts which are normalised to 10⁴ and log1p'd).
    perturbation_key, control
        ``obs`` column and control label; default: those registered by a perturbation model's
        ``setup_anndata`` on ``adata``.
    layer
        Expression layer (``None`` = ``X``; ``"raw"`` = ``adata.raw.X``).
    n_features
        Feature dimension (``pathway_dim``).
    n_hidden
        Encoder width.
    max_epochs, batch_size, lr
        Training of the autoencoder (Adam).
    key_added
        ``varm`` key.
    seed
        Random seed (default ``sp.settings.seed``).

    Returns
    -------
    ``None``; writes

    - ``adata.varm[key_added]`` : float32 (n_vars, n_features) pathway features
    - ``adata.uns[key_added]`` : params, ``n_control_cells``, ``reconstruction_mse`` (final training loss)

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_perturbation(n_cells=200, n_genes=30)
    >>> sp.pp.pathway_features(adata, perturbation_key="perturbation", control="control", n_features=4,
    ...                        max_epochs=2)
    >>> adata.varm["X_pathway"].shape
    (30, 4)
    """
    import torch

    from .._settings import settings
    from ..module._pathway import PathwayAutoencoder

    if perturbation_key is None or control is None:
        reg = _registered_control(adata)
        if reg is None:
            msg = (
                "pass perturbation_key= and control=, or call a perturbation model's setup_anndata(adata, ...) "
                "first so that the registered control label is used."
            )
            raise ValueError(msg)
        perturbation_key = perturbation_key or reg[0]
        control = control or reg[1]
    if perturbation_key not in adata.obs.columns:
        msg = f"adata.obs[{perturbation_key!r}] does not exist (obs columns: {list(adata.obs.columns)[:20]})."
        raise KeyError(msg)
    is_ctrl = adata.obs[perturbation_key].astype(str).to_numpy() == control
    if is_ctrl.sum() < 2:
        msg = f"found {int(is_ctrl.sum())} control cells ({perturbation_key}={control!r}); at least 2 are needed."
        raise ValueError(msg)
    x = to_dense(get_array(adata, layer=layer)[np.flatnonzero(is_ctrl)])
    if np.all(np.abs(x - np.round(x)) < 1e-6) and x.max() > 30:  # counts: normalise and log
        x = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1.0) * 1e4)
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-3)
    seed = settings.seed if seed is None else seed
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    ae = PathwayAutoencoder(adata.n_vars, n_latent=n_features, n_hidden=n_hidden)
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    data = torch.as_tensor(x, dtype=torch.float32)
    last = float("nan")
    for _ in range(max_epochs):
        perm = torch.randperm(len(data), generator=gen)
        total = 0.0
        for i in range(0, len(data), batch_size):
            batch = data[perm[i : i + batch_size]]
            loss = ae.loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch)
        last = total / len(data)
    adata.varm[key_added] = ae.gene_features().numpy().astype(np.float32)
    record_provenance(
        adata,
        key_added,
        {
            "perturbation_key": perturbation_key,
            "control": control,
            "layer": layer,
            "n_features": n_features,
            "n_hidden": n_hidden,
            "max_epochs": max_epochs,
            "seed": int(seed),
        },
        n_control_cells=int(is_ctrl.sum()),
        reconstruction_mse=last,
    )
