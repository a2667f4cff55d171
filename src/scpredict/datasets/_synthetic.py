"""Synthetic datasets with known ground truth."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp_sparse
from anndata import AnnData

__all__ = ["synthetic_perturbation", "synthetic_contexts", "synthetic_celltypes"]


def _gene_names(n_genes: int) -> list[str]:
    return [f"G{i:04d}" for i in range(n_genes)]


def _finish(mu: np.ndarray, rng: np.random.Generator, *, kind: str, dispersion: float, library_size: float):
    """Turn per-cell mean log-expression into counts (NB) and/or log1p-normalized values."""
    rate = np.exp(mu)
    rate = rate / rate.sum(1, keepdims=True) * library_size * rng.lognormal(0, 0.2, size=(mu.shape[0], 1))
    theta = 1.0 / dispersion
    lam = rng.gamma(shape=theta, scale=rate / theta)
    counts = rng.poisson(lam).astype(np.float32)
    lib = counts.sum(1, keepdims=True)
    lib[lib == 0] = 1
    logn = np.log1p(counts / lib * 1e4).astype(np.float32)
    if kind == "counts":
        return sp_sparse.csr_matrix(counts), {"counts": sp_sparse.csr_matrix(counts), "log1p": logn}
    return logn, {"counts": sp_sparse.csr_matrix(counts)}


def synthetic_perturbation(
    n_cells: int = 2000,
    n_genes: int = 200,
    *,
    n_perturbations: int = 10,
    n_combinations: int = 5,
    n_cell_lines: int = 1,
    n_programs: int = 8,
    interaction_strength: float = 0.3,
    effect_size: float = 1.0,
    control_fraction: float = 0.2,
    kind: Literal["counts", "log1p"] = "log1p",
    dispersion: float = 0.2,
    library_size: float = 5000.0,
    seed: int = 0,
) -> AnnData:
    """Simulate a perturbation screen with known effects.

    Genes belong to ``n_programs`` co-regulated programs. Perturbation ``P{i}`` targets gene ``G{i}`` (a gene of
    the data) and shifts the mean log-expression by a sparse effect on one or two programs. A combination ``A+B``
    gets the sum of the single effects plus an interaction term (``interaction_strength`` × a random program
    effect). Each cell line has its own baseline and scales effects by a line-specific factor.

    Parameters
    ----------
    n_cells, n_genes
        Size of the data.
    n_perturbations
        Number of single perturbations.
    n_combinations
        Number of two-gene combinations drawn among the singles.
    n_cell_lines
        Number of cell lines (``obs['cell_line']``).
    n_programs
        Number of gene programs.
    interaction_strength
        Size of the non-additive part of combination effects, relative to ``effect_size``.
    effect_size
        Typical log-fold change on affected programs.
    control_fraction
        Fraction of cells that are controls.
    kind
        ``"log1p"``: ``X`` is log1p-normalized (10k), raw counts in ``layers['counts']``.
        ``"counts"``: ``X`` holds integer counts (sparse), log1p values in ``layers['log1p']``.
    dispersion
        Negative-binomial dispersion (1/θ) of the counts.
    library_size
        Mean total counts per cell.
    seed
        Random seed.

    Returns
    -------
    AnnData with ``obs['perturbation']`` (``control``, ``P3``, ``P1+P4``), ``obs['cell_line']``,
    ``obs['n_targets']``, ``var['program']``; the true mean log-rate shift of every condition in
    ``uns['true_effects']`` (a DataFrame, conditions × genes, for cell line 0) and the interaction part of every
    combination in ``uns['true_interactions']``.

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_perturbation(n_cells=300, n_genes=50)
    >>> adata.obs["perturbation"].value_counts()["control"] > 0
    True
    """
    rng = np.random.default_rng(seed)
    genes = _gene_names(n_genes)
    program = rng.integers(0, n_programs, size=n_genes)
    loadings = np.zeros((n_programs, n_genes))
    loadings[program, np.arange(n_genes)] = rng.uniform(0.5, 1.5, size=n_genes)
    base = rng.normal(0.0, 1.0, size=n_genes)
    line_base = rng.normal(0, 0.3, size=(n_cell_lines, n_genes))
    line_scale = rng.uniform(0.7, 1.3, size=n_cell_lines)
    line_scale[0] = 1.0

    singles = [f"P{i}" for i in range(n_perturbations)]
    single_eff = {}
    for i, p in enumerate(singles):
        w = np.zeros(n_programs)
        progs = rng.choice(n_programs, size=rng.integers(1, 3), replace=False)
        w[progs] = rng.normal(0, effect_size, size=len(progs))
        eff = w @ loadings
        eff[i % n_genes] += effect_size * 1.5 * rng.choice([-1, 1])  # the target gene itself
        single_eff[p] = eff
    pairs: list[tuple[str, str]] = []
    while len(pairs) < min(n_combinations, n_perturbations * (n_perturbations - 1) // 2):
        a, b = sorted(rng.choice(n_perturbations, size=2, replace=False))
        if (singles[a], singles[b]) not in pairs:
            pairs.append((singles[a], singles[b]))
    effects = {"control": np.zeros(n_genes)} | dict(single_eff)
    interactions = {}
    for a, b in pairs:
        w = np.zeros(n_programs)
        w[rng.integers(n_programs)] = rng.normal(0, interaction_strength * effect_size)
        inter = w @ loadings
        interactions[f"{a}+{b}"] = inter
        effects[f"{a}+{b}"] = single_eff[a] + single_eff[b] + inter

    conditions = list(effects)
    n_ctrl = int(round(control_fraction * n_cells))
    rest = rng.choice(conditions[1:], size=n_cells - n_ctrl)
    cond = np.concatenate([np.array(["control"] * n_ctrl, dtype=object), rest.astype(object)])
    cond = cond[rng.permutation(n_cells)]
    line = rng.integers(0, n_cell_lines, size=n_cells)
    eff_mat = np.stack([effects[c] for c in cond])
    mu = (
        base
        + line_base[line]
        + eff_mat * line_scale[line][:, None]
        + rng.normal(0, 0.1, size=(n_cells, n_genes))
    )
    x, layers = _finish(mu, rng, kind=kind, dispersion=dispersion, library_size=library_size)

    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(cond),
            "cell_line": pd.Categorical([f"line{i}" for i in line]),
            "n_targets": [0 if c == "control" else c.count("+") + 1 for c in cond],
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame({"program": pd.Categorical([f"prog{p}" for p in program])}, index=genes)
    adata = AnnData(X=x, obs=obs, var=var, layers=layers)
    adata.uns["true_effects"] = pd.DataFrame(
        np.stack(list(effects.values())), index=conditions, columns=genes
    )
    if interactions:
        adata.uns["true_interactions"] = pd.DataFrame(
            np.stack(list(interactions.values())), index=list(interactions), columns=genes
        )
    adata.uns["synthetic"] = {
        "kind": kind,
        "seed": seed,
        "target_of": {p: genes[i % n_genes] for i, p in enumerate(singles)},
    }
    return adata


def synthetic_contexts(
    n_cells: int = 2000,
    n_genes: int = 200,
    *,
    fields: Sequence[str] = ("cell_type", "assay", "sex", "batch"),
    n_categories: Sequence[int] | None = None,
    effect_size: Sequence[float] | None = None,
    kind: Literal["counts", "log1p"] = "log1p",
    dispersion: float = 0.2,
    library_size: float = 5000.0,
    seed: int = 0,
) -> AnnData:
    """Simulate cells whose mean log-expression is a sum of known per-field, per-category effects.

    Parameters
    ----------
    n_cells, n_genes
        Size of the data.
    fields
        Metadata fields (``obs`` columns).
    n_categories
        Categories per field (default: cell_type 4, assay 2, sex 2, batch 3, others 3).
    effect_size
        Standard deviation of each field's effects (default 1.0 for the first field, 0.5 after).
    kind
        ``"log1p"`` (X log-normalized, counts in ``layers['counts']``) or ``"counts"``.
    dispersion, library_size
        Negative-binomial noise and depth.
    seed
        Random seed.

    Returns
    -------
    AnnData with one categorical ``obs`` column per field and ``uns['true_effects'][field]`` a DataFrame
    (categories × genes) of each category's additive effect on mean log-rate.

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_contexts(n_cells=200, n_genes=30)
    >>> sorted(adata.uns["true_effects"])
    ['assay', 'batch', 'cell_type', 'sex']
    """
    rng = np.random.default_rng(seed)
    fields = list(fields)
    default_n = {"cell_type": 4, "assay": 2, "sex": 2, "batch": 3}
    n_categories = list(n_categories) if n_categories is not None else [default_n.get(f, 3) for f in fields]
    effect_size = list(effect_size) if effect_size is not None else [1.0] + [0.5] * (len(fields) - 1)
    base = rng.normal(0, 1, size=n_genes)
    mu = np.tile(base, (n_cells, 1)) + rng.normal(0, 0.1, size=(n_cells, n_genes))
    obs = {}
    true = {}
    for field, k, s in zip(fields, n_categories, effect_size, strict=True):
        cats = [f"{field}{i}" for i in range(k)]
        eff = rng.normal(0, s, size=(k, n_genes)) * (rng.random((k, n_genes)) < 0.3)
        codes = rng.integers(0, k, size=n_cells)
        mu += eff[codes]
        obs[field] = pd.Categorical.from_codes(codes, categories=cats)
        true[field] = pd.DataFrame(eff, index=cats, columns=_gene_names(n_genes))
    x, layers = _finish(mu, rng, kind=kind, dispersion=dispersion, library_size=library_size)
    adata = AnnData(
        X=x,
        obs=pd.DataFrame(obs, index=[f"cell{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=_gene_names(n_genes)),
        layers=layers,
    )
    adata.uns["true_effects"] = true
    return adata


def synthetic_celltypes(
    n_cells: int = 300,
    n_genes: int = 100,
    *,
    n_types: int = 4,
    separation: float = 1.5,
    markers_per_type: int = 10,
    kind: Literal["counts", "log1p"] = "counts",
    imbalance: float = 0.0,
    seed: int = 0,
) -> AnnData:
    """Simulate cell types that differ by marker-gene programs.

    Parameters
    ----------
    n_cells, n_genes
        Size of the data.
    n_types
        Number of cell types (``obs['cell_type']``: ``type0`` ...).
    separation
        Log-fold change of each type's marker genes.
    markers_per_type
        Marker genes per type.
    kind
        ``"counts"`` (X integer counts, log1p values in ``layers['log1p']``) or ``"log1p"``.
    imbalance
        0 gives balanced types; larger values make later types rarer (weights ∝ exp(-imbalance·i)).
    seed
        Random seed.

    Returns
    -------
    AnnData with ``obs['cell_type']`` and ``var['marker_of']``.

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_celltypes(n_cells=120, n_genes=40, n_types=3)
    >>> adata.obs["cell_type"].nunique()
    3
    """
    rng = np.random.default_rng(seed)
    w = np.exp(-imbalance * np.arange(n_types))
    labels = rng.choice(n_types, size=n_cells, p=w / w.sum())
    base = rng.normal(0, 1, size=n_genes)
    marker_of = np.array(["none"] * n_genes, dtype=object)
    eff = np.zeros((n_types, n_genes))
    perm = rng.permutation(n_genes)
    for t in range(n_types):
        idx = perm[t * markers_per_type : (t + 1) * markers_per_type]
        eff[t, idx] = separation
        marker_of[idx] = f"type{t}"
    mu = base + eff[labels] + rng.normal(0, 0.2, size=(n_cells, n_genes))
    x, layers = _finish(mu, rng, kind=kind, dispersion=0.2, library_size=3000.0)
    adata = AnnData(
        X=x,
        obs=pd.DataFrame(
            {"cell_type": pd.Categorical.from_codes(labels, categories=[f"type{t}" for t in range(n_types)])},
            index=[f"cell{i}" for i in range(n_cells)],
        ),
        var=pd.DataFrame({"marker_of": marker_of}, index=_gene_names(n_genes)),
        layers={("log1p" if kind == "counts" else "counts"): layers.get("log1p", layers.get("counts"))},
    )
    return adata
