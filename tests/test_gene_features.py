"""sp.pp.annotate_gene_positions and sp.pp.pathway_features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import scpredict as sp


def _table():
    return pd.DataFrame(
        {
            "symbol": ["g0", "G1", "G2", "G3", "G1"],
            "chromosome": ["chr2", "chr1", "chr1", "chrX", "chr5"],
            "start": [500, 100, 300, 7, 1],
            "end": [600, 200, 400, 9, 2],
        }
    )


def test_annotate_gene_positions_from_dataframe():
    adata = sp.datasets.synthetic_perturbation(n_cells=20, n_genes=5)
    adata.var_names = ["G0", "G1", "G2", "G3", "G4"]
    sp.pp.annotate_gene_positions(adata, _table())
    var = adata.var
    assert var["chromosome"].tolist() == [
        "chr2",
        "chr1",
        "chr1",
        "chrX",
        "unknown",
    ]  # case-insensitive, first hit
    assert list(var["chromosome"].cat.categories) == ["chr1", "chr2", "chrX", "unknown"]
    np.testing.assert_allclose(
        var["locus"], [0.0, 0.0, 1.0, 0.0, 0.0]
    )  # normalised within chr1: 100 -> 0, 300 -> 1
    assert np.isnan(var.loc["G4", "start"]) and var.loc["G2", "end"] == 400
    assert adata.uns["gene_positions"]["n_unknown"] == 1


def test_annotate_gene_positions_from_gencode_file(shared_data):
    adata = sp.datasets.synthetic_perturbation(n_cells=20, n_genes=4)
    adata.var_names = ["KLF1", "GAPDH", "CBL", "not_a_gene"]
    sp.pp.annotate_gene_positions(adata, shared_data / "gene_positions_gencode_v19.tsv")
    assert adata.var["chromosome"].astype(str).tolist() == ["chr19", "chr12", "chr11", "unknown"]
    assert ((adata.var["locus"] >= 0) & (adata.var["locus"] <= 1)).all()


def test_annotate_gene_positions_errors():
    adata = sp.datasets.synthetic_perturbation(n_cells=20, n_genes=4)
    with pytest.raises(KeyError, match="symbol"):
        sp.pp.annotate_gene_positions(adata, pd.DataFrame({"gene": ["a"]}))
    with pytest.raises(FileNotFoundError):
        sp.pp.annotate_gene_positions(adata, "/nonexistent/table.tsv")


def _coexpressed(seed=0, n_cells=300):
    """Two blocks of genes driven by two independent factors in control cells."""
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(n_cells, 2))
    load = np.zeros((2, 12))
    load[0, :6], load[1, 6:] = 1.0, 1.0
    x = np.clip(2 + f @ load + 0.2 * rng.normal(size=(n_cells, 12)), 0, None)
    adata = sp.datasets.synthetic_perturbation(n_cells=n_cells, n_genes=12)
    adata.X = x.astype(np.float32)
    return adata


def test_pathway_features_group_coexpressed_genes():
    adata = _coexpressed()
    adata.obs["perturbation"] = "control"
    sp.pp.pathway_features(
        adata, perturbation_key="perturbation", control="control", n_features=4, max_epochs=40
    )
    feats = adata.varm["X_pathway"]
    assert feats.shape == (12, 4) and adata.uns["X_pathway"]["n_control_cells"] == 300
    d = np.linalg.norm(feats[:, None] - feats[None], axis=-1)
    block = np.arange(12) < 6
    same = block[:, None] == block[None]
    off = ~np.eye(12, dtype=bool)
    assert d[same & off].mean() < 0.8 * d[~same].mean()
    np.fill_diagonal(d, np.inf)
    assert np.all(block[d.argmin(1)] == block)  # every gene's nearest neighbour is in its own block


def test_pathway_features_use_control_cells_only():
    adata = _coexpressed()
    adata.obs["perturbation"] = ["control"] * 200 + ["KO"] * 100
    sp.pp.pathway_features(
        adata, perturbation_key="perturbation", control="control", n_features=3, max_epochs=3
    )
    first = adata.varm["X_pathway"].copy()
    adata.X[200:] = (
        np.random.default_rng(5).uniform(0, 9, size=(100, 12)).astype(np.float32)
    )  # perturbed cells
    sp.pp.pathway_features(
        adata, perturbation_key="perturbation", control="control", n_features=3, max_epochs=3
    )
    np.testing.assert_array_equal(adata.varm["X_pathway"], first)
    adata.X[:5] += 1.0  # control cells
    sp.pp.pathway_features(
        adata, perturbation_key="perturbation", control="control", n_features=3, max_epochs=3
    )
    assert not np.array_equal(adata.varm["X_pathway"], first)


def test_pathway_features_read_the_registered_control_label():
    adata = sp.datasets.synthetic_perturbation(n_cells=120, n_genes=10)
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str).replace("control", "NT")
    with pytest.raises(ValueError, match="perturbation_key"):
        sp.pp.pathway_features(adata)
    sp.models.BiMambaPredictor.setup_anndata(adata, perturbation_key="perturbation", control="NT")
    sp.pp.pathway_features(adata, n_features=2, max_epochs=1)
    assert adata.uns["X_pathway"]["params"]["control"] == "NT"
    assert adata.uns["X_pathway"]["n_control_cells"] == int((adata.obs["perturbation"] == "NT").sum())
