"""Drug data imbalance and CMap-style connectivity scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from .._utils import check_keys, record_provenance, to_dense

__all__ = ["imbalance", "connectivity"]


def _gini(counts: np.ndarray) -> float:
    """Gini coefficient of counts (0 = balanced, → 1 = all in one group)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    if len(x) == 0 or x.sum() == 0:
        return 0.0
    n = len(x)
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


def imbalance(
    adata: AnnData,
    *,
    drug_key: str,
    cell_line_key: str,
    control: str | Sequence[str] | None = "DMSO_TF",
    thresholds: Sequence[int] = (10, 50, 100),
    key_added: str = "imbalance",
) -> None:
    """Count cells per drug, per cell line and per (drug, cell line) pair, to expose the long tail.

    The seed's analysis of Tahoe-100M found long-tailed counts at all three levels and fixed minimum counts
    accordingly (see :func:`scpredict.pp.filter_pairs`); this gives the same tables plus summaries.

    Parameters
    ----------
    adata
        Cells x genes.
    drug_key, cell_line_key
        ``obs`` columns with the drug and the cell line.
    control
        Control name(s) (exact match), left out of the drug and pair tables; ``None`` keeps every drug.
    thresholds
        Cell counts at which to report how many pairs fall below.
    key_added
        ``adata.uns`` key to write.

    Returns
    -------
    ``None``; writes

    - ``adata.uns[key_added]["drug"]`` : DataFrame (``drug``, ``n_cells``, ``n_cell_lines``), sorted by count;
    - ``adata.uns[key_added]["cell_line"]`` : DataFrame (``cell_line``, ``n_cells``, ``n_drugs``);
    - ``adata.uns[key_added]["pair"]`` : DataFrame (``drug``, ``cell_line``, ``n_cells``);
    - ``adata.uns[key_added]["summary"]`` : dict with counts of drugs, lines, observed and possible pairs,
      Gini coefficients per level, max / median ratios and ``pairs_below_<t>`` per threshold;
    - ``adata.uns[key_added]["params"]`` : the call's parameters.

    Examples
    --------
    >>> sp.tl.imbalance(adata, drug_key="drug", cell_line_key="cell_line_id")  # doctest: +SKIP
    >>> adata.uns["imbalance"]["pair"].head()  # doctest: +SKIP
    """
    check_keys(adata, obs=[drug_key, cell_line_key])
    drug = adata.obs[drug_key].astype(str).to_numpy()
    line = adata.obs[cell_line_key].astype(str).to_numpy()
    controls = [] if control is None else ([control] if isinstance(control, str) else list(control))
    treated = ~np.isin(drug, controls)
    df = pd.DataFrame({"drug": drug[treated], "cell_line": line[treated]})
    if df.empty:
        msg = f"No treated cells: every adata.obs[{drug_key!r}] value is a control ({controls})."
        raise ValueError(msg)
    pair = df.groupby(["drug", "cell_line"]).size().rename("n_cells").reset_index()
    pair = pair.sort_values("n_cells", ascending=False, kind="stable").reset_index(drop=True)
    per_drug = (
        pair.groupby("drug")
        .agg(n_cells=("n_cells", "sum"), n_cell_lines=("cell_line", "nunique"))
        .reset_index()
    )
    per_drug = per_drug.sort_values("n_cells", ascending=False, kind="stable").reset_index(drop=True)
    all_lines = pd.DataFrame({"cell_line": line}).groupby("cell_line").size().rename("n_cells")
    n_drugs = pair.groupby("cell_line")["drug"].nunique().reindex(all_lines.index, fill_value=0)
    per_line = pd.DataFrame({"n_cells": all_lines, "n_drugs": n_drugs}).reset_index()
    per_line = per_line.sort_values("n_cells", ascending=False, kind="stable").reset_index(drop=True)
    summary: dict[str, float | int] = {
        "n_drugs": int(per_drug.shape[0]),
        "n_cell_lines": int(per_line.shape[0]),
        "n_pairs": int(pair.shape[0]),
        "n_pairs_possible": int(per_drug.shape[0] * pair["cell_line"].nunique()),
        "gini_drug": _gini(per_drug["n_cells"].to_numpy()),
        "gini_cell_line": _gini(per_line["n_cells"].to_numpy()),
        "gini_pair": _gini(pair["n_cells"].to_numpy()),
    }
    for level, table in (("drug", per_drug), ("cell_line", per_line), ("pair", pair)):
        c = table["n_cells"].to_numpy()
        summary[f"max_over_median_{level}"] = float(c.max() / max(np.median(c), 1e-12))
    for t in thresholds:
        summary[f"pairs_below_{int(t)}"] = int((pair["n_cells"] < t).sum())
    record_provenance(
        adata,
        key_added,
        {
            "drug_key": drug_key,
            "cell_line_key": cell_line_key,
            "control": controls,
            "thresholds": list(thresholds),
        },
    )
    adata.uns[key_added].update(
        {
            "drug": per_drug.astype({"drug": str}),
            "cell_line": per_line.astype({"cell_line": str}),
            "pair": pair,
            "summary": summary,
        }
    )


# --------------------------------------------------------------------------- connectivity


def _as_matrix(x, what: str) -> pd.DataFrame:
    """AnnData / DataFrame / Series -> DataFrame (rows x genes) of floats."""
    if isinstance(x, AnnData):
        return pd.DataFrame(to_dense(x.X), index=x.obs_names.astype(str), columns=x.var_names.astype(str))
    if isinstance(x, pd.Series):
        return x.to_frame(name=str(x.name) if x.name is not None else "query").T.astype(np.float64)
    if isinstance(x, pd.DataFrame):
        return x.astype(np.float64)
    msg = f"{what} must be an AnnData, a pandas DataFrame (rows x genes) or a Series (genes), got {type(x).__name__}."
    raise TypeError(msg)


def _tags_from_query(query, n_genes: int) -> list[tuple[str, list[str], list[str]]]:
    """Query -> list of (name, up genes, down genes)."""
    if isinstance(query, Mapping) and set(query) <= {"up", "down"}:
        return [("query", list(query.get("up", [])), list(query.get("down", [])))]
    if isinstance(query, Sequence) and not isinstance(query, str) and query and isinstance(query[0], Mapping):
        return [(f"query{i}", list(q.get("up", [])), list(q.get("down", []))) for i, q in enumerate(query)]
    if isinstance(query, tuple) and len(query) == 2 and not isinstance(query[0], (int, float)):
        return [("query", list(query[0]), list(query[1]))]
    frame = _as_matrix(query, "query")
    out = []
    vals = frame.to_numpy()
    genes = frame.columns.to_numpy()
    if np.isnan(vals).any():
        msg = "The query signature contains NaN."
        raise ValueError(msg)
    for name, row in zip(frame.index, vals, strict=True):
        order = np.argsort(-row, kind="stable")
        up = [g for g in genes[order[:n_genes]][row[order[:n_genes]] > 0]]
        rev = order[::-1][:n_genes]
        down = [g for g in genes[rev][row[rev] < 0]]
        out.append((str(name), up, down))
    return out


def _enrichment(ranks: np.ndarray, abs_vals: np.ndarray, tags: np.ndarray, *, weight: float) -> np.ndarray:
    """Signed weighted KS enrichment score per signature (GSEA running sum, Subramanian et al. PNAS 2005).

    Evaluated only where the running sum can peak: just after each hit and just before it, so the cost is
    O(n_signatures x n_tags log n_tags) instead of O(n_signatures x n_genes).

    ``ranks``: (n_sig, n_genes) position of each gene in each signature's descending order; ``abs_vals``:
    ``|value|`` of each gene; ``tags``: column indices of the tag genes.
    """
    n = ranks.shape[1]
    k = len(tags)
    pos = ranks[:, tags]
    order = np.argsort(pos, axis=1, kind="stable")
    pos = np.take_along_axis(pos, order, axis=1).astype(np.float64)
    if weight != 0:
        w = np.take_along_axis(abs_vals[:, tags], order, axis=1) ** weight
    else:
        w = np.ones_like(pos)
    total = w.sum(1, keepdims=True)
    w = np.where(total > 0, w, 1.0)  # all tag weights zero: fall back to the unweighted KS statistic
    total = w.sum(1, keepdims=True)
    cum = np.cumsum(w, axis=1) / total
    misses = (pos - np.arange(k)[None, :]) / max(n - k, 1)  # misses ranked before each hit
    after = cum - misses
    before = cum - w / total - misses
    dev = np.concatenate([after, before], axis=1)
    idx = np.argmax(np.abs(dev), axis=1)
    return dev[np.arange(len(dev)), idx]


def connectivity(
    query,
    signatures: AnnData | pd.DataFrame,
    *,
    n_genes: int = 50,
    weight: float = 1.0,
) -> pd.DataFrame:
    """CMap connectivity: weighted Kolmogorov–Smirnov enrichment of a query's up/down tags (WTCS).

    For each reference signature the genes are ranked by decreasing value; the enrichment score of the
    query's up tags, ``ES_up``, and of its down tags, ``ES_down``, are the maximum deviations of the
    weighted running sum (hits weighted by ``|value|**weight``; ``weight=0`` gives the classic KS of Lamb
    et al., Science 2006). The weighted connectivity score (Subramanian et al., Cell 2017) is
    ``(ES_up - ES_down) / 2`` when the two have opposite signs and 0 otherwise; with only up (down) tags
    it is ``ES_up`` (``-ES_down``). +1: the signature reproduces the query; −1: it reverses it.

    Parameters
    ----------
    query
        What to look for: ``{"up": [...], "down": [...]}`` or ``(up, down)`` gene lists (a list of such
        dicts for several queries, named ``query0``, ``query1``, ...); a Δ vector as a Series indexed by gene;
        or several Δ vectors as a DataFrame / AnnData (queries x genes). For
        vectors the up (down) tags are the ``n_genes`` highest positive (lowest negative) genes.
    signatures
        Reference signatures (rows) x genes, e.g. Δ per drug, as an AnnData (``X``) or DataFrame. Higher
        value = more up-regulated. Ranks work too (pass ``-rank`` so the top gene has the largest value).
    n_genes
        Tags per direction taken from a Δ-vector query.
    weight
        Exponent of the hit weights.

    Returns
    -------
    DataFrame (queries x signatures) of WTCS in [-1, 1] (a single query gives one row, named
    ``"query"`` for tag lists). Tags absent from the signatures' genes are ignored.

    Examples
    --------
    >>> import pandas as pd
    >>> sigs = pd.DataFrame([[3.0, 2.0, 0.0, -1.0, -2.0]], columns=list("abcde"), index=["drugA"])
    >>> float(sp.tl.connectivity({"up": ["a"], "down": ["e"]}, sigs).loc["query", "drugA"])
    1.0
    """
    ref = _as_matrix(signatures, "signatures")
    if ref.columns.duplicated().any():
        msg = "The signatures have duplicated gene names."
        raise ValueError(msg)
    vals = ref.to_numpy(dtype=np.float64)
    if np.isnan(vals).any():
        msg = "The signatures contain NaN."
        raise ValueError(msg)
    if n_genes < 1:
        msg = f"n_genes must be >= 1, got {n_genes}."
        raise ValueError(msg)
    genes = ref.columns.astype(str)
    order = np.argsort(-vals, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(vals.shape[1])[None, :].repeat(len(vals), 0), axis=1)
    abs_vals = np.abs(vals)
    rows, names = [], []
    for name, up, down in _tags_from_query(query, n_genes):
        up_mask = genes.isin([str(g) for g in up])
        down_mask = genes.isin([str(g) for g in down])
        both = up_mask & down_mask
        if both.any():
            msg = f"Genes are both up and down tags in query {name!r}: {list(genes[both][:5])}."
            raise ValueError(msg)
        if not up_mask.any() and not down_mask.any():
            msg = f"None of the tags of query {name!r} is among the {len(genes)} signature genes."
            raise ValueError(msg)
        es_up = _enrichment(ranks, abs_vals, np.nonzero(up_mask)[0], weight=weight) if up_mask.any() else None
        es_down = (
            _enrichment(ranks, abs_vals, np.nonzero(down_mask)[0], weight=weight) if down_mask.any() else None
        )
        if es_up is None:
            score = -es_down
        elif es_down is None:
            score = es_up
        else:
            score = np.where(np.sign(es_up) != np.sign(es_down), (es_up - es_down) / 2.0, 0.0)
        rows.append(score)
        names.append(name)
    return pd.DataFrame(np.vstack(rows), index=pd.Index(names, name="query"), columns=ref.index.astype(str))
