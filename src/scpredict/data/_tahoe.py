"""Stream Tahoe-100M parquet shards into AnnData (cells or pseudobulk) with bounded memory.

Tahoe-100M (Zhang et al., bioRxiv 2025, "Tahoe-100M: a giga-scale single-cell perturbation atlas") is
distributed as parquet shards whose ``expression_data`` table holds one row per cell:

=====================  =====================  ====================================================
column                 arrow type             meaning
=====================  =====================  ====================================================
``genes``              ``list<int64>``        gene token ids of the non-zero genes; the first entry is a
                                              marker token (not a gene) and is dropped here
``expressions``        ``list<float32>``      raw UMI counts for those genes; the first entry is the
                                              marker's value and is dropped here
``drug``               ``string``             compound name (``"DMSO_TF"`` for the vehicle control)
``sample``             ``string``             sample id (drug x concentration x plate)
``BARCODE_SUB_LIB_ID`` ``string``             sequencing sub-library
``cell_line_id``       ``string``             Cellosaurus id of the cell line (``"CVCL_0023"``)
``moa-fine``           ``string``             mechanism of action
``canonical_smiles``   ``string``             SMILES of the drug
``pubchem_cid``        ``string``             PubChem compound id
``plate``              ``string``             plate id (``"plate1"`` ... ``"plate14"``)
=====================  =====================  ====================================================

and a ``gene_metadata`` table (``gene_symbol``, ``ensembl_id``, ``token_id``) that maps tokens to genes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp_sparse
from anndata import AnnData

__all__ = ["read_tahoe", "read_tahoe_gene_metadata", "TAHOE_OBS_COLUMNS"]

#: per-cell metadata columns of the Tahoe-100M ``expression_data`` table (all strings).
TAHOE_OBS_COLUMNS: tuple[str, ...] = (
    "drug",
    "sample",
    "BARCODE_SUB_LIB_ID",
    "cell_line_id",
    "moa-fine",
    "canonical_smiles",
    "pubchem_cid",
    "plate",
)
_GENES, _EXPR = "genes", "expressions"

PathLike = str | os.PathLike


def _import_pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.dataset as ds
    except ImportError:  # pragma: no cover - depends on the environment
        msg = "Reading Tahoe parquet needs pyarrow: pip install 'scpredict[parquet]'."
        raise ImportError(msg) from None
    return pa, pc, ds


def _parquet_files(path: PathLike | Sequence[PathLike]) -> list[str]:
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    files: list[str] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*.parquet"))
            if not found:
                msg = f"No *.parquet files under {str(p)!r}."
                raise FileNotFoundError(msg)
            files.extend(found)
        elif p.exists():
            files.append(str(p))
        else:
            msg = f"Tahoe parquet path {str(p)!r} does not exist."
            raise FileNotFoundError(msg)
    if not files:
        msg = "No parquet files given."
        raise FileNotFoundError(msg)
    return files


def read_tahoe_gene_metadata(path: PathLike | Sequence[PathLike]) -> pd.DataFrame:
    """Read the Tahoe-100M ``gene_metadata`` table (``gene_symbol``, ``ensembl_id``, ``token_id``).

    Parameters
    ----------
    path
        A parquet file (or folder of files) holding the table.

    Returns
    -------
    DataFrame with one row per token, sorted by ``token_id``, columns ``token_id`` (int64), ``gene_symbol``
    and ``ensembl_id`` (where present).
    """
    _, _, ds = _import_pyarrow()
    table = ds.dataset(_parquet_files(path), format="parquet").to_table()
    return _check_gene_table(table.to_pandas())


def _check_gene_table(df: pd.DataFrame) -> pd.DataFrame:
    if "token_id" not in df.columns or not ({"gene_symbol", "ensembl_id"} & set(df.columns)):
        msg = (
            "The gene metadata table needs a 'token_id' column and a 'gene_symbol' or 'ensembl_id' column "
            f"(it has {list(df.columns)})."
        )
        raise KeyError(msg)
    df = df.copy()
    df["token_id"] = df["token_id"].astype(np.int64)
    if df["token_id"].duplicated().any():
        dup = df.loc[df["token_id"].duplicated(), "token_id"].head(5).tolist()
        msg = f"The gene metadata table repeats token ids (e.g. {dup})."
        raise ValueError(msg)
    if (df["token_id"] < 0).any():
        msg = "The gene metadata table has negative token ids."
        raise ValueError(msg)
    return df.sort_values("token_id").reset_index(drop=True)


def _gene_var(
    gene_metadata: pd.DataFrame | PathLike | None, genes: Sequence[str] | None
) -> tuple[pd.DataFrame | None, np.ndarray | None]:
    """Build ``var`` and a token -> column lookup (``-1`` = not kept) from the gene table."""
    if gene_metadata is None:
        if genes is not None:
            msg = "`genes=` selects genes by symbol or Ensembl id and needs `gene_metadata=` to map them to tokens."
            raise ValueError(msg)
        return None, None
    table = (
        _check_gene_table(gene_metadata)
        if isinstance(gene_metadata, pd.DataFrame)
        else read_tahoe_gene_metadata(gene_metadata)
    )
    name_col = "gene_symbol" if "gene_symbol" in table.columns else "ensembl_id"
    if genes is not None:
        wanted = pd.Index(genes)
        if wanted.duplicated().any():
            msg = f"`genes=` repeats {wanted[wanted.duplicated()].unique()[:5].tolist()}."
            raise ValueError(msg)
        keys = [c for c in ("gene_symbol", "ensembl_id") if c in table.columns]
        pos = np.full(len(wanted), -1, dtype=np.int64)
        for col in keys:
            lookup = pd.Series(np.arange(len(table)), index=table[col].astype(str)).groupby(level=0).first()
            found = lookup.reindex(wanted.astype(str)).to_numpy()
            fill = (pos < 0) & ~np.isnan(found)
            pos[fill] = found[fill].astype(np.int64)
        if (pos < 0).any():
            missing = wanted[pos < 0].tolist()
            msg = (
                f"{len(missing)} of the requested genes are not in the gene metadata table "
                f"(looked in {keys}): {missing[:10]}"
            )
            raise KeyError(msg)
        table = table.iloc[pos].reset_index(drop=True)
    var = table.copy()
    var.index = pd.Index(var[name_col].astype(str).to_numpy(), name=None)
    if var.index.duplicated().any():  # a few symbols map to several Ensembl ids
        var.index = pd.Index(_make_unique(var.index.tolist()))
    lookup = np.full(int(table["token_id"].max()) + 1, -1, dtype=np.int64)
    lookup[table["token_id"].to_numpy()] = np.arange(len(table))
    return var, lookup


def _make_unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            out.append(f"{n}-{seen[n]}")
        else:
            seen[n] = 0
            out.append(n)
    return out


def _list_column(column, pa):
    """Flat values and 0-based offsets of a (large) list column of one record batch."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        msg = "A Tahoe 'genes'/'expressions' list is null; the shard is not in the Tahoe-100M schema."
        raise ValueError(msg)
    offsets = np.asarray(column.offsets, dtype=np.int64)
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values, offsets - offsets[0]


def _batch_to_csr(
    batch, lookup: np.ndarray | None, n_cols: int, *, pa, drop_first: bool
) -> tuple[sp_sparse.csr_matrix, int]:
    """One record batch -> (cells x n_cols CSR of counts, number of tokens not in ``var``)."""
    genes, g_off = _list_column(batch.column(_GENES), pa)
    expr, e_off = _list_column(batch.column(_EXPR), pa)
    if not np.array_equal(g_off, e_off):
        msg = "'genes' and 'expressions' lists differ in length for some cells; the shard is corrupt."
        raise ValueError(msg)
    n = len(g_off) - 1
    keep = np.ones(len(genes), dtype=bool)
    if drop_first:
        lengths = np.diff(g_off)
        if (lengths == 0).any():
            msg = "A cell has an empty 'genes' list, so it has no marker token to drop (pass drop_first_token=False)."
            raise ValueError(msg)
        keep[g_off[:-1]] = False
    genes = genes.astype(np.int64, copy=False)
    n_unknown = 0
    if lookup is not None:
        outside = genes >= len(lookup)
        cols = lookup[np.minimum(genes, len(lookup) - 1)]
        cols[outside] = -1
        mapped = cols >= 0
        n_unknown = int((keep & ~mapped).sum())
        keep &= mapped
    else:
        cols = genes
    # row pointers from the list offsets: kept entries before each row start
    kept_before = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])
    indptr = kept_before[g_off]
    x = sp_sparse.csr_matrix(
        (expr[keep].astype(np.float32, copy=False), cols[keep].astype(np.int32), indptr), shape=(n, n_cols)
    )
    # duplicated tokens within a cell (not expected in Tahoe) are summed by every consumer of the CSR
    return x, n_unknown


def _sum_parts(parts: list, n_rows: int, n_cols: int) -> sp_sparse.coo_matrix:
    """Sum COO blocks of possibly smaller shapes into one (n_rows x n_cols) COO matrix."""
    if len(parts) == 1 and parts[0].shape == (n_rows, n_cols):
        return parts[0]
    rows = np.concatenate([p.row for p in parts]) if parts else np.zeros(0, dtype=np.int32)
    cols = np.concatenate([p.col for p in parts]) if parts else np.zeros(0, dtype=np.int32)
    vals = np.concatenate([p.data for p in parts]) if parts else np.zeros(0, dtype=np.float32)
    parts.clear()  # release the blocks before building the sum
    out = sp_sparse.coo_matrix((vals, (rows, cols)), shape=(n_rows, n_cols))
    del rows, cols, vals
    out.sum_duplicates()  # sorts and merges in place
    out.row, out.col = out.row.astype(np.int32, copy=False), out.col.astype(np.int32, copy=False)
    return out


def _filter_expression(ds, pc, *, drugs, cell_lines, plates, schema_names):
    expr = None
    for col, values in (("drug", drugs), ("cell_line_id", cell_lines), ("plate", plates)):
        if values is None:
            continue
        if col not in schema_names:
            msg = (
                f"Cannot filter on {col!r}: the parquet files have no such column (columns: {schema_names})."
            )
            raise KeyError(msg)
        values = [values] if isinstance(values, str) else list(values)
        term = pc.field(col).isin(values)
        expr = term if expr is None else expr & term
    return expr


def read_tahoe(
    path: PathLike | Sequence[PathLike],
    *,
    gene_metadata: pd.DataFrame | PathLike | None = None,
    genes: Sequence[str] | None = None,
    drugs: Sequence[str] | str | None = None,
    cell_lines: Sequence[str] | str | None = None,
    plates: Sequence[str] | str | None = None,
    obs_columns: Sequence[str] | None = None,
    pseudobulk: Sequence[str] | str | None = None,
    aggregate: Literal["sum", "mean"] = "sum",
    batch_size: int = 65_536,
    max_cells: int | None = None,
    drop_first_token: bool = True,
) -> AnnData:
    """Stream Tahoe-100M parquet shards into a sparse AnnData of cells, or straight into pseudobulk.

    Only the needed columns are read (column projection), the ``drugs``/``cell_lines``/``plates`` filters
    are pushed down to pyarrow (row groups whose statistics exclude them are skipped), and the data are
    consumed one record batch at a time: the working memory beyond the output is a few copies of one
    batch. With ``pseudobulk=`` the cells are summed per group as they stream, so the output has one row per
    group and the cell matrix is never built.

    Parameters
    ----------
    path
        A parquet file, a folder of shards (searched recursively) or a list of files, in the
        Tahoe-100M ``expression_data`` schema (see the module docstring).
    gene_metadata
        The ``gene_metadata`` table (a DataFrame or a parquet path) with ``token_id`` and ``gene_symbol``
        / ``ensembl_id``. ``var`` follows its order (or the order of ``genes``) and is named by symbol
        (made unique with ``-1``, ``-2`` suffixes). Without it, ``var_names`` are the token ids seen, sorted.
    genes
        Keep only these genes (symbols or Ensembl ids; needs ``gene_metadata``); an unknown gene is a
        ``KeyError`` naming it.
    drugs, cell_lines, plates
        Keep only cells whose ``drug`` / ``cell_line_id`` / ``plate`` is one of these (exact match).
    obs_columns
        Per-cell metadata columns to read into ``obs`` (default: those of :data:`TAHOE_OBS_COLUMNS`
        present in the files).
    pseudobulk
        Column(s) defining groups (e.g. ``["drug", "cell_line_id", "plate"]``); when given, return one row per
        group instead of one per cell.
    aggregate
        With ``pseudobulk``: ``"sum"`` (counts) or ``"mean"`` per cell.
    batch_size
        Rows per record batch; bounds the working memory.
    max_cells
        Stop after this many cells (after filtering).
    drop_first_token
        Drop the first entry of each ``genes``/``expressions`` list, Tahoe's marker token.

    Returns
    -------
    AnnData with

    - ``X`` : ``csr_matrix`` float32 (cells x genes) of counts, or (groups x genes) of summed / mean counts;
    - ``obs`` : the ``obs_columns`` as categoricals (cells) or the ``pseudobulk`` columns plus ``n_cells``;
    - ``var`` : ``token_id``, ``gene_symbol``, ``ensembl_id`` from the gene table (or ``token_id`` only);
    - ``uns["tahoe"]`` : files read, filters, the number of tokens dropped because they are not in
      ``var`` (``n_tokens_outside_var``).

    Examples
    --------
    >>> adata = sp.data.read_tahoe("tahoe/", gene_metadata="gene_metadata.parquet",
    ...                            cell_lines=["CVCL_0023"], drugs=["DMSO_TF", "Bortezomib"])  # doctest: +SKIP
    """
    pa, pc, ds = _import_pyarrow()
    if batch_size < 1:
        msg = f"batch_size must be positive, got {batch_size}."
        raise ValueError(msg)
    if aggregate not in ("sum", "mean"):
        msg = f"aggregate must be 'sum' or 'mean', got {aggregate!r}."
        raise ValueError(msg)
    files = _parquet_files(path)
    dataset = ds.dataset(files, format="parquet")
    names = dataset.schema.names
    for col in (_GENES, _EXPR):
        if col not in names:
            msg = (
                f"The parquet files have no {col!r} column (columns: {names}); is this Tahoe expression_data?"
            )
            raise KeyError(msg)
    if obs_columns is None:
        obs_columns = [c for c in TAHOE_OBS_COLUMNS if c in names]
    obs_columns = list(obs_columns)
    groups = (
        [pseudobulk]
        if isinstance(pseudobulk, str)
        else (list(pseudobulk) if pseudobulk is not None else None)
    )
    meta_cols = groups if groups is not None else obs_columns
    missing = [c for c in meta_cols if c not in names]
    if missing:
        msg = f"Columns {missing} are not in the parquet files (columns: {names})."
        raise KeyError(msg)

    var, lookup = _gene_var(gene_metadata, genes)
    n_cols = len(var) if var is not None else 0
    flt = _filter_expression(ds, pc, drugs=drugs, cell_lines=cell_lines, plates=plates, schema_names=names)
    scanner = dataset.scanner(columns=[_GENES, _EXPR, *meta_cols], filter=flt, batch_size=batch_size)

    blocks: list[sp_sparse.csr_matrix] = []
    meta: dict[str, list] = {c: [] for c in meta_cols}
    group_index: dict[tuple, int] = {}
    parts: list[sp_sparse.coo_matrix] = []
    n_per_group = np.zeros(0, dtype=np.int64)
    n_seen = n_unknown = 0
    max_token = -1
    for batch in scanner.to_batches():
        if batch.num_rows == 0:
            continue
        if max_cells is not None:
            if n_seen >= max_cells:
                break
            if n_seen + batch.num_rows > max_cells:
                batch = batch.slice(0, max_cells - n_seen)
        n_seen += batch.num_rows
        if lookup is None:  # token ids are columns; widen as new tokens appear
            g, _ = _list_column(batch.column(_GENES), pa)
            if len(g):
                max_token = max(max_token, int(g.max()))
            n_cols = max_token + 1
        x, n_out = _batch_to_csr(batch, lookup, n_cols, pa=pa, drop_first=drop_first_token)
        n_unknown += n_out
        if groups is None:
            blocks.append(x)
            for c in meta_cols:
                meta[c].append(batch.column(c))
            continue
        key = np.zeros(batch.num_rows, dtype=np.int64)
        levels = []
        for c in groups:
            enc = pc.dictionary_encode(batch.column(c))
            if enc.null_count:
                msg = f"Some cells have a missing value in the pseudobulk column {c!r}."
                raise ValueError(msg)
            levels.append(enc.dictionary.to_pylist())
            key = key * len(levels[-1]) + enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        uniq, local_codes = np.unique(key, return_inverse=True)
        gids = np.empty(len(uniq), dtype=np.int64)
        for j, u in enumerate(uniq.tolist()):
            parts_of_key = []
            for lv in reversed(levels):
                u, r = divmod(u, len(lv))
                parts_of_key.append(lv[r])
            gids[j] = group_index.setdefault(tuple(reversed(parts_of_key)), len(group_index))
        codes = gids[local_codes]
        n_groups = len(group_index)
        n_per_group = np.concatenate([n_per_group, np.zeros(n_groups - len(n_per_group), dtype=np.int64)])
        n_per_group += np.bincount(codes, minlength=n_groups)
        indicator = sp_sparse.csr_matrix(
            (np.ones(len(codes), dtype=np.float32), (codes, np.arange(len(codes)))),
            shape=(n_groups, len(codes)),
        )
        part = (indicator @ x).tocoo()  # float32 sums, exact for counts below 2**24 per group and gene
        part.row, part.col = part.row.astype(np.int32), part.col.astype(np.int32)
        parts.append(part)
        if len(parts) >= 16:  # consolidate so memory stays ~ (groups x genes non-zeros)
            parts = [_sum_parts(parts, n_groups, n_cols)]

    if n_seen == 0:
        msg = (
            f"No cells matched in {len(files)} file(s) with drugs={drugs!r}, cell_lines={cell_lines!r}, "
            f"plates={plates!r} (exact matches on 'drug', 'cell_line_id', 'plate')."
        )
        raise ValueError(msg)

    if groups is None:
        for b in blocks:
            b.resize((b.shape[0], n_cols))
        X = sp_sparse.vstack(blocks, format="csr")
        obs = pd.DataFrame(
            {c: pd.Categorical(pa.chunked_array(meta[c]).to_numpy(zero_copy_only=False)) for c in meta_cols}
        )
        obs.index = pd.Index([f"cell{i}" for i in range(X.shape[0])])
    else:
        sums = _sum_parts(parts, len(group_index), n_cols)
        counts = n_per_group
        X = sums if aggregate == "sum" else sp_sparse.diags(1.0 / counts) @ sums
        X = sp_sparse.csr_matrix(X, dtype=np.float32)
        keys = list(group_index)
        obs = pd.DataFrame(keys, columns=groups)
        for c in groups:
            obs[c] = pd.Categorical(obs[c])
        obs["n_cells"] = counts
        obs.index = pd.Index(["|".join(map(str, k)) for k in keys])
    if var is None:  # keep the token ids that occur
        present = np.unique(X.indices) if X.nnz else np.zeros(0, dtype=np.int64)
        X = X[:, present]
        var = pd.DataFrame({"token_id": present.astype(np.int64)}, index=pd.Index(present.astype(str)))
    adata = AnnData(X=X, obs=obs, var=var)
    adata.uns["tahoe"] = {
        "files": [str(f) for f in files],
        "drugs": "None" if drugs is None else list(np.atleast_1d(drugs)),
        "cell_lines": "None" if cell_lines is None else list(np.atleast_1d(cell_lines)),
        "plates": "None" if plates is None else list(np.atleast_1d(plates)),
        "pseudobulk": "None" if groups is None else groups,
        "aggregate": aggregate,
        "n_cells_read": int(n_seen),
        "n_tokens_outside_var": int(n_unknown),
        "drop_first_token": bool(drop_first_token),
    }
    return adata
