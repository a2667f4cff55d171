"""sp.data.read_tahoe on small parquet shards written here in the Tahoe-100M schema."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import scpredict as sp  # noqa: E402

MARKER_TOKEN, MARKER_VALUE = 3, -2.0  # Tahoe's first list entry is a marker, not a gene

SCHEMA = pa.schema(
    [
        ("genes", pa.list_(pa.int64())),
        ("expressions", pa.list_(pa.float32())),
        ("drug", pa.string()),
        ("sample", pa.string()),
        ("BARCODE_SUB_LIB_ID", pa.string()),
        ("cell_line_id", pa.string()),
        ("moa-fine", pa.string()),
        ("canonical_smiles", pa.string()),
        ("pubchem_cid", pa.string()),
        ("plate", pa.string()),
    ]
)

# token ids 10..15 are genes; 99 is a token not in the gene table
GENE_TABLE = pd.DataFrame(
    {
        "gene_symbol": ["A1BG", "TP53", "MYC", "GAPDH", "ACTB", "TP53"],
        "ensembl_id": [f"ENSG0000000000{i}" for i in range(6)],
        "token_id": [10, 11, 12, 13, 14, 15],
    }
)

CELLS = [
    # (genes without marker, counts, drug, cell line, plate)
    ([10, 12], [1.0, 4.0], "DMSO_TF", "CVCL_0023", "plate1"),
    ([11, 13, 14], [2.0, 1.0, 7.0], "Bortezomib", "CVCL_0023", "plate1"),
    ([12, 99], [3.0, 5.0], "Bortezomib", "CVCL_0480", "plate2"),
    ([10, 11, 12, 13, 14, 15], [1.0, 1.0, 1.0, 1.0, 1.0, 9.0], "DMSO_TF", "CVCL_0480", "plate2"),
    ([13], [6.0], "Bortezomib", "CVCL_0023", "plate2"),
]


def _table(cells):
    rows = {name: [] for name in SCHEMA.names}
    for i, (g, e, drug, line, plate) in enumerate(cells):
        rows["genes"].append([MARKER_TOKEN, *g])
        rows["expressions"].append([MARKER_VALUE, *e])
        rows["drug"].append(drug)
        rows["sample"].append(f"smp_{drug}_{plate}")
        rows["BARCODE_SUB_LIB_ID"].append(f"lib{i % 2}")
        rows["cell_line_id"].append(line)
        rows["moa-fine"].append("proteasome inhibitor" if drug != "DMSO_TF" else "unclear")
        rows["canonical_smiles"].append("CS(C)=O")
        rows["pubchem_cid"].append("679")
        rows["plate"].append(plate)
    return pa.Table.from_pydict(rows, schema=SCHEMA)


def _dense(cells, symbols):
    col = dict(zip(GENE_TABLE.token_id, range(len(GENE_TABLE)), strict=True))
    out = np.zeros((len(cells), len(symbols)), dtype=np.float32)
    for i, (g, e, *_) in enumerate(cells):
        for t, v in zip(g, e, strict=True):
            if t in col:
                out[i, col[t]] += v
    return out


@pytest.fixture
def shards(tmp_path):
    folder = tmp_path / "expression_data"
    folder.mkdir()
    pq.write_table(_table(CELLS[:3]), folder / "train-00000.parquet", row_group_size=2)
    pq.write_table(_table(CELLS[3:]), folder / "train-00001.parquet", row_group_size=1)
    genes_path = tmp_path / "gene_metadata.parquet"
    pq.write_table(pa.Table.from_pandas(GENE_TABLE, preserve_index=False), genes_path)
    return folder, genes_path


def test_round_trip_drops_marker_and_maps_tokens(shards):
    folder, genes_path = shards
    adata = sp.data.read_tahoe(folder, gene_metadata=genes_path, batch_size=2)
    assert adata.shape == (5, 6)
    # duplicated symbol made unique, order of the gene table kept
    assert list(adata.var_names) == ["A1BG", "TP53", "MYC", "GAPDH", "ACTB", "TP53-1"]
    np.testing.assert_array_equal(adata.var["token_id"].to_numpy(), [10, 11, 12, 13, 14, 15])
    np.testing.assert_allclose(adata.X.toarray(), _dense(CELLS, adata.var_names))
    assert (adata.X.toarray() >= 0).all()  # the marker value -2 is gone
    assert list(adata.obs["drug"]) == [c[2] for c in CELLS]
    assert list(adata.obs["cell_line_id"]) == [c[3] for c in CELLS]
    assert adata.uns["tahoe"]["n_tokens_outside_var"] == 1  # token 99


def test_keep_marker_when_asked(shards):
    folder, _ = shards
    adata = sp.data.read_tahoe(folder, drop_first_token=False)
    assert str(MARKER_TOKEN) in adata.var_names
    np.testing.assert_allclose(adata[:, str(MARKER_TOKEN)].X.toarray().ravel(), MARKER_VALUE)


def test_without_gene_table_uses_token_ids(shards):
    folder, _ = shards
    adata = sp.data.read_tahoe(folder, obs_columns=["drug"])
    assert list(adata.var_names) == ["10", "11", "12", "13", "14", "15", "99"]
    assert list(adata.obs.columns) == ["drug"]
    assert adata[2, "99"].X.toarray().item() == 5.0


def test_filters_and_gene_selection(shards):
    folder, genes_path = shards
    adata = sp.data.read_tahoe(
        folder,
        gene_metadata=genes_path,
        genes=["GAPDH", "ENSG00000000002"],  # by symbol and by Ensembl id
        drugs="Bortezomib",
        cell_lines=["CVCL_0023"],
    )
    assert list(adata.var_names) == ["GAPDH", "MYC"]
    assert adata.n_obs == 2
    np.testing.assert_allclose(adata.X.toarray(), [[1.0, 0.0], [6.0, 0.0]])
    plate2 = sp.data.read_tahoe(folder, gene_metadata=genes_path, plates=["plate2"])
    assert set(plate2.obs["plate"]) == {"plate2"} and plate2.n_obs == 3


def test_pseudobulk_matches_cell_sums(shards):
    folder, genes_path = shards
    cells = sp.data.read_tahoe(folder, gene_metadata=genes_path)
    bulk = sp.data.read_tahoe(
        folder, gene_metadata=genes_path, pseudobulk=["drug", "cell_line_id"], batch_size=1
    )
    assert bulk.n_obs == 4
    dense = cells.X.toarray()
    for _, row in bulk.obs.iterrows():
        mask = (cells.obs["drug"] == row["drug"]).to_numpy() & (
            cells.obs["cell_line_id"] == row["cell_line_id"]
        ).to_numpy()
        assert row["n_cells"] == mask.sum()
        np.testing.assert_allclose(bulk[row.name].X.toarray().ravel(), dense[mask].sum(0))
    mean = sp.data.read_tahoe(folder, gene_metadata=genes_path, pseudobulk="drug", aggregate="mean")
    dmso = cells.obs["drug"].to_numpy() == "DMSO_TF"
    np.testing.assert_allclose(mean["DMSO_TF"].X.toarray().ravel(), dense[dmso].mean(0), rtol=1e-6)


def test_max_cells_stops_early(shards):
    folder, genes_path = shards
    adata = sp.data.read_tahoe(folder, gene_metadata=genes_path, max_cells=3, batch_size=2)
    assert adata.n_obs == 3
    np.testing.assert_allclose(adata.X.toarray(), _dense(CELLS[:3], adata.var_names))


def test_errors_name_the_problem(shards, tmp_path):
    folder, genes_path = shards
    with pytest.raises(KeyError, match="NOTAGENE"):
        sp.data.read_tahoe(folder, gene_metadata=genes_path, genes=["TP53", "NOTAGENE"])
    with pytest.raises(ValueError, match="No cells matched"):
        sp.data.read_tahoe(folder, drugs=["not a drug"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sp.data.read_tahoe(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="needs `gene_metadata=`"):
        sp.data.read_tahoe(folder, genes=["TP53"])
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), other)
    with pytest.raises(KeyError, match="'genes'"):
        sp.data.read_tahoe(other)
