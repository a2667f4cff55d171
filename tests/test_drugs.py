"""Drug features (rdkit), Tanimoto, ΔExpression against the vehicle, pair filtering."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import scpredict as sp

pytest.importorskip("rdkit")

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"


def test_morgan_bits_of_known_molecules():
    # radius 0: one bit per distinct atom environment. Ethanol: CH3, CH2(-O), OH -> 3 bits
    fp = sp.pp.drug_features({"ethanol": "CCO"}, radius=0, n_bits=1024)
    assert fp.shape == (1, 1024) and fp.index.tolist() == ["ethanol"]
    assert fp.to_numpy().sum() == 3
    # propane, radius 0: two identical CH3 and one CH2 -> 2 bits; counts 2 and 1
    counts = sp.pp.drug_features(["CCC"], kind="morgan_count", radius=0, n_bits=1024)
    assert sorted(counts.to_numpy()[counts.to_numpy() > 0].tolist()) == [1.0, 2.0]
    bits = sp.pp.drug_features(["CCC"], radius=0, n_bits=1024)
    assert bits.to_numpy().sum() == 2
    assert counts.index.tolist() == ["CCC"]  # a plain list is named by its SMILES


def test_descriptors_of_aspirin():
    desc = sp.pp.drug_features(pd.Series({"aspirin": ASPIRIN}), kind="descriptors")
    assert desc.loc["aspirin", "MolWt"] == pytest.approx(180.159, abs=1e-2)
    assert desc.loc["aspirin", "NumHDonors"] == 1
    assert np.isfinite(desc.to_numpy()).all()


def test_salts_are_stripped():
    fp = sp.pp.drug_features({"base": "CCN", "salt": "CCN.Cl", "hydrate": "CCN.O"}, n_bits=256)
    assert (fp.loc["salt"] == fp.loc["base"]).all() and (fp.loc["hydrate"] == fp.loc["base"]).all()
    kept = sp.pp.drug_features({"salt": "CCN.Cl"}, n_bits=256, strip_salts=False)
    assert not (kept.loc["salt"] == fp.loc["base"]).all()


def test_invalid_smiles_names_the_drug():
    with pytest.raises(ValueError, match="drugX.*C1CC"):
        sp.pp.drug_features({"aspirin": ASPIRIN, "drugX": "C1CC"})
    with pytest.raises(ValueError, match="Invalid SMILES"):
        sp.pp.drug_features({"empty": ""})
    with pytest.raises(ValueError, match="kind must be"):
        sp.pp.drug_features(["CCO"], kind="maccs")


def test_tanimoto_similarity():
    a = np.array([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=float)
    sim = sp.pp.tanimoto_similarity(a)
    np.testing.assert_allclose(sim, [[1.0, 1 / 3], [1 / 3, 1.0]])
    counts = np.array([[2.0, 1.0, 0.0]]), np.array([[1.0, 1.0, 1.0]])
    assert sp.pp.tanimoto_similarity(*counts)[0, 0] == pytest.approx((1 + 1) / (2 + 1 + 1))
    assert sp.pp.tanimoto_similarity(np.zeros((1, 3)))[0, 0] == 0.0
    fp = sp.pp.drug_features({"aspirin": ASPIRIN, "salicylic": "Oc1ccccc1C(=O)O", "ethanol": "CCO"})
    s = sp.pp.tanimoto_similarity(fp)
    assert s[0, 1] > s[0, 2]  # aspirin is closer to salicylic acid than to ethanol


# ----------------------------------------------------------------------------- drug_deltas


def _screen():
    drug = ["DMSO_TF", "DMSO_TF", "A", "A", "B (DMSO_TF solvate)", "DMSO_TF", "A", "DMSO_TF"]
    line = ["L1", "L1", "L1", "L1", "L1", "L2", "L2", "L1"]
    plate = ["p1", "p1", "p1", "p1", "p1", "p1", "p1", "p2"]
    dose = [0.0, 0.0, 1.0, 5.0, 1.0, 0.0, 1.0, 0.0]
    X = np.array([[1, 0], [3, 0], [5, 1], [9, 2], [0, 7], [10, 10], [12, 13], [100, 100]], dtype=np.float32)
    obs = pd.DataFrame(
        {"drug": drug, "line": line, "plate": plate, "dose": dose}, index=[f"c{i}" for i in range(8)]
    )
    return AnnData(X, obs=obs)


def test_drug_deltas_exact_control_match():
    adata = _screen()
    before = adata.X.copy()
    out = sp.pp.drug_deltas(adata, drug_key="drug", cell_line_key="line", plate_key="plate")
    np.testing.assert_array_equal(adata.X, before)  # input untouched
    # the solvate drug is a treatment, not a control
    assert "B (DMSO_TF solvate)|L1|p1" in out.obs_names
    # L1/p1 control = mean of c0, c1 = (2, 0); c7 (plate p2) is not used
    np.testing.assert_allclose(out["B (DMSO_TF solvate)|L1|p1"].X, [[-2, 7]])
    np.testing.assert_allclose(out["A|L1|p1"].X, [[5, 1.5]])  # (7, 1.5) - (2, 0)
    np.testing.assert_allclose(out["A|L2|p1"].X, [[2, 3]])
    assert out.obs.loc["A|L1|p1", "n_cells"] == 2 and out.obs.loc["A|L1|p1", "n_control"] == 2
    np.testing.assert_allclose(out.layers["control"][out.obs_names.get_loc("A|L2|p1")], [10, 10])
    assert out.uns["drug_deltas"]["params"]["plate_key"] == "plate"


def test_drug_deltas_without_plate_and_with_dose():
    adata = _screen()
    out = sp.pp.drug_deltas(adata, drug_key="drug", cell_line_key="line", dose_key="dose")
    # without plate, L1 control = mean of c0, c1, c7 = (104/3, 100/3)
    ctrl = np.array([104 / 3, 100 / 3])
    np.testing.assert_allclose(out["A|1.0|L1"].X.ravel(), np.array([5, 1]) - ctrl, rtol=1e-5)
    np.testing.assert_allclose(out["A|5.0|L1"].X.ravel(), np.array([9, 2]) - ctrl, rtol=1e-5)
    assert out.obs["dose"].dtype.kind == "f"


def test_drug_deltas_missing_control():
    adata = _screen()
    adata = adata[adata.obs["line"] != "L2"].copy()
    adata.obs.loc["c7", "plate"] = "p1"
    adata.obs.loc["c0", "plate"] = "p3"  # only c0 is a p3 control
    adata.obs.loc["c3", "plate"] = "p4"  # p4 has no control
    with pytest.raises(ValueError, match=r"L1\|p4"):
        sp.pp.drug_deltas(adata, drug_key="drug", cell_line_key="line", plate_key="plate")
    out = sp.pp.drug_deltas(
        adata, drug_key="drug", cell_line_key="line", plate_key="plate", missing_control="drop"
    )
    assert "A|L1|p4" not in out.obs_names and "A|L1|p1" in out.obs_names
    with pytest.raises(ValueError, match="exactly equal to"):
        sp.pp.drug_deltas(adata, drug_key="drug", cell_line_key="line", control="DMSO")


# ----------------------------------------------------------------------------- filter_pairs


def test_filter_pairs_keeps_controls_and_large_pairs():
    drug = ["DMSO_TF"] * 2 + ["A"] * 5 + ["A"] * 2 + ["B"] * 6 + ["C"] * 5
    line = ["L1"] * 2 + ["L1"] * 5 + ["L2"] * 2 + ["L1"] * 6 + ["L2"] * 5
    adata = AnnData(
        np.zeros((len(drug), 2), dtype=np.float32),
        obs=pd.DataFrame({"drug": drug, "line": line}, index=[f"c{i}" for i in range(len(drug))]),
    )
    out = sp.pp.filter_pairs(adata, drug_key="drug", cell_line_key="line", min_cells=5, copy=True)
    assert adata.n_obs == 20  # copy leaves the input alone
    kept = set(zip(out.obs["drug"], out.obs["line"], strict=True))
    assert kept == {("DMSO_TF", "L1"), ("A", "L1"), ("B", "L1"), ("C", "L2")}
    assert out.uns["filter_pairs"]["n_pairs_removed"] == 1
    sp.pp.filter_pairs(adata, drug_key="drug", cell_line_key="line", min_cells=5, min_cell_lines=2)
    assert set(adata.obs["drug"]) == {"DMSO_TF"}  # no drug has >= 5 cells in 2 lines
    assert adata.n_obs == 2


def test_split_pairs_keeps_pairs_together():
    drug = ["DMSO_TF"] * 4 + [f"D{i % 5}" for i in range(40)]
    line = ["L0", "L1"] * 2 + [f"L{i % 2}" for i in range(40)]
    adata = AnnData(
        np.zeros((44, 2), dtype=np.float32),
        obs=pd.DataFrame({"drug": drug, "line": line}, index=[f"c{i}" for i in range(44)]),
    )
    sp.pp.split_pairs(
        adata, drug_key="drug", cell_line_key="line", test_fraction=0.3, val_fraction=0.2, seed=1
    )
    split = adata.obs["split"].astype(str)
    assert (split[adata.obs["drug"] == "DMSO_TF"] == "train").all()
    per_pair = adata.obs.assign(s=split).groupby(["drug", "line"], observed=True)["s"].nunique()
    assert (per_pair == 1).all()  # never a pair in two sets
    assert len(adata.uns["split"]["test"]) == 3 and len(adata.uns["split"]["val"]) == 2  # of 10 pairs
