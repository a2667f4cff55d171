"""Foundation: input contract, gene alignment, datasets, pp helpers, settings, CLI."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp_sparse
from anndata import AnnData

import scpredict as sp
from helpers import assert_adata_equal


# ---------------------------------------------------------------- input contract
def test_check_input_counts_ok_and_log_rejected():
    a = sp.datasets.synthetic_perturbation(n_cells=100, n_genes=20, kind="counts")
    assert sp.pp.check_input(a, scale="counts")["frac_non_integer"] == 0
    with pytest.raises(sp.pp.InputScaleError, match="adata.layers\\['log1p'\\].*not integers"):
        sp.pp.check_input(a, layer="log1p", scale="counts")


def test_check_input_counts_as_log_rejected():
    x = np.random.default_rng(0).poisson(20, size=(50, 10)).astype(np.float32)
    x[0, 0] = 500
    a = AnnData(x)
    with pytest.raises(sp.pp.InputScaleError, match="looks like raw counts"):
        sp.pp.check_input(a, scale="log1p")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_check_input_nonfinite(bad):
    x = np.ones((5, 4), dtype=np.float32)
    x[1, 2] = bad
    with pytest.raises(sp.pp.InputScaleError, match="NaN"):
        sp.pp.check_input(AnnData(x), scale="any")


def test_check_input_negative_sparse():
    x = sp_sparse.csr_matrix(np.array([[0, 1.5], [-2.0, 0]], dtype=np.float32))
    with pytest.raises(sp.pp.InputScaleError, match="negative"):
        sp.pp.check_input(AnnData(x), scale="log1p")
    assert sp.pp.check_input(AnnData(x), scale="any")["min"] == -2.0


def test_check_input_missing_layer():
    with pytest.raises(KeyError, match="counts"):
        sp.pp.check_input(AnnData(np.ones((2, 2))), layer="counts")


# ---------------------------------------------------------------- alignment
def test_align_genes_reorders_and_fills():
    ref = ["a", "b", "c", "d"]
    with pytest.warns(UserWarning, match="missing"):
        al = sp.data.align_genes(["d", "b", "a", "x"], ref, max_missing=0.3)
    assert al.missing == ["c"]
    x = np.array([[4, 2, 1, 9]], dtype=np.float32)
    np.testing.assert_array_equal(sp.data.align_matrix(x, al), [[1, 2, 0, 4]])
    xs = sp.data.align_matrix(sp_sparse.csr_matrix(x), al)
    np.testing.assert_array_equal(xs.toarray(), [[1, 2, 0, 4]])


def test_align_genes_errors():
    with pytest.raises(ValueError, match="None of the"):
        sp.data.align_genes(["x", "y"], ["a", "b"])
    with pytest.raises(ValueError, match=r"2 of 4 genes.*\['a', 'b'\]"):
        sp.data.align_genes(["c", "d"], ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="not unique"):
        sp.data.align_genes(["a", "a"], ["a"])


def test_align_identity_no_copy():
    x = np.ones((2, 3))
    al = sp.data.align_genes(["a", "b", "c"], ["a", "b", "c"])
    assert al.identity and sp.data.align_matrix(x, al) is x


# ---------------------------------------------------------------- datasets
def test_synthetic_perturbation_ground_truth():
    a = sp.datasets.synthetic_perturbation(
        n_cells=3000, n_genes=60, n_perturbations=5, n_combinations=3, seed=1
    )
    truth = a.uns["true_effects"]
    assert "control" in a.obs["perturbation"].cat.categories
    combos = [c for c in truth.index if "+" in c]
    assert len(combos) == 3
    c = combos[0]
    x, y = c.split("+")
    inter = a.uns["true_interactions"].loc[c]
    np.testing.assert_allclose(truth.loc[c], truth.loc[x] + truth.loc[y] + inter)
    # the recorded effect shows in the data: log-normalized means move with the true effect
    d = sp.pp.delta_to_control(a)
    obs_delta = pd.DataFrame(d.X, index=d.obs["perturbation"].astype(str), columns=a.var_names)
    r = np.corrcoef(obs_delta.loc[x], truth.loc[x])[0, 1]
    assert r > 0.7


def test_synthetic_counts_kind_is_integer():
    a = sp.datasets.synthetic_perturbation(n_cells=50, n_genes=10, kind="counts")
    assert sp_sparse.issparse(a.X)
    sp.pp.check_input(a, scale="counts")
    sp.pp.check_input(a, layer="log1p", scale="log1p")


def test_synthetic_contexts_effects_recoverable():
    a = sp.datasets.synthetic_contexts(n_cells=3000, n_genes=40, seed=2)
    eff = a.uns["true_effects"]["cell_type"]
    pb = sp.pp.pseudobulk(a, groupby="cell_type")
    diff = pb.X[1] - pb.X[0]
    true = eff.iloc[1] - eff.iloc[0]
    assert np.corrcoef(diff, true)[0, 1] > 0.6


def test_synthetic_celltypes_markers():
    a = sp.datasets.synthetic_celltypes(n_cells=400, n_genes=60, n_types=3, kind="log1p")
    pb = sp.pp.pseudobulk(a, groupby="cell_type")
    markers = a.var["marker_of"].to_numpy() == "type1"
    row = list(pb.obs["cell_type"]).index("type1")
    assert pb.X[row, markers].mean() > np.delete(pb.X, row, axis=0)[:, markers].mean()


def test_public_loader_missing_path_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        sp.datasets.kang18(tmp_path / "nope.h5ad")


def test_norman_loader(shared_data):
    a = sp.datasets.norman19(shared_data)
    assert "control" in set(a.obs["perturbation"])
    assert set(a.obs["dataset"]) == {"norman19"}
    assert any("+" in p for p in a.obs["perturbation"].astype(str))


def test_l1000_loader(shared_data):
    a = sp.datasets.l1000_a375(shared_data)
    assert (a.obs["perturbation"] == "control").sum() == 26
    assert a.obs["dose"].dtype == float


# ---------------------------------------------------------------- pp
def test_perturbation_index_and_targets():
    a = AnnData(
        np.zeros((4, 2)), obs=pd.DataFrame({"p": ["control", "A", "A+B", "B+ctrl"]}, index=list("wxyz"))
    )
    sp.pp.perturbation_index(a, perturbation_key="p")
    assert a.obs["perturbation_idx"].tolist() == [0, 1, 2, 3]
    assert a.obs["n_targets"].tolist() == [0, 1, 2, 1]
    assert a.uns["perturbation_idx"]["targets"]["A+B"] == "A;B"
    before = a.copy()
    with pytest.raises(ValueError, match="ctl"):
        sp.pp.perturbation_index(a, perturbation_key="p", control="ctl")
    assert_adata_equal(a, before)


def test_split_combinations_keeps_singles_in_train():
    a = sp.datasets.synthetic_perturbation(n_cells=800, n_genes=20, n_perturbations=6, n_combinations=4)
    sp.pp.split_combinations(a, test_fraction=0.5, seed=3)
    test = set(a.uns["split"]["test"])
    assert len(test) == 2 and all("+" in t for t in test)
    obs = a.obs
    assert set(obs.loc[obs["split"] == "test", "perturbation"].astype(str)) - {"control"} == test
    for combo in test:
        for t in combo.split("+"):
            assert (obs.loc[obs["perturbation"] == t, "split"] == "train").all()
    # reproducible
    b = a.copy()
    sp.pp.split_combinations(b, test_fraction=0.5, seed=3)
    assert (a.obs["split"] == b.obs["split"]).all()


def test_split_perturbations_and_covariate():
    a = sp.datasets.synthetic_perturbation(n_cells=600, n_genes=20, n_perturbations=8, n_cell_lines=2)
    sp.pp.split_perturbations(a, test_perturbations=["P1", "P2"], key_added="s")
    assert set(a.obs.loc[a.obs["s"] == "test", "perturbation"].astype(str)) == {"P1", "P2", "control"}
    sp.pp.split_covariate(a, covariate_key="cell_line", test_values=["line1"], key_added="c")
    assert (a.obs.loc[a.obs["c"] == "test", "cell_line"] == "line1").all()
    with pytest.raises(ValueError, match="line9"):
        sp.pp.split_covariate(a, covariate_key="cell_line", test_values=["line9"])


def test_split_cells_stratified_fractions():
    a = sp.datasets.synthetic_celltypes(n_cells=400, n_genes=10)
    sp.pp.split_cells(a, fractions=(0.7, 0.15, 0.15), stratify_key="cell_type", seed=0)
    frac = a.obs.groupby("cell_type", observed=True)["split"].apply(lambda s: (s == "train").mean())
    assert np.allclose(frac, 0.7, atol=0.03)


def test_pseudobulk_and_delta_exact():
    x = np.array([[1, 2], [3, 4], [10, 10], [20, 30]], dtype=np.float32)
    obs = pd.DataFrame(
        {"p": ["control", "control", "A", "A"], "c": ["l1", "l1", "l1", "l1"]}, index=list("abcd")
    )
    a = AnnData(x, obs=obs)
    pb = sp.pp.pseudobulk(a, groupby="p")
    np.testing.assert_allclose(pb[pb.obs["p"] == "A"].X, [[15, 20]])
    d = sp.pp.delta_to_control(a, perturbation_key="p", covariate_key="c")
    np.testing.assert_allclose(d.X, [[13, 17]])
    assert d.obs["n_cells"].tolist() == [2]


def test_delta_to_control_needs_controls_per_covariate():
    obs = pd.DataFrame({"p": ["control", "A", "A"], "c": ["l1", "l1", "l2"]}, index=list("abc"))
    a = AnnData(np.ones((3, 2), dtype=np.float32), obs=obs)
    with pytest.raises(ValueError, match="l2"):
        sp.pp.delta_to_control(a, perturbation_key="p", covariate_key="c")


# ---------------------------------------------------------------- settings, CLI, packaging
def test_settings_repr_and_seed():
    assert "seed" in repr(sp.settings)


def test_namespaces_all_match_public_names():
    for ns in ("pp", "tl", "pl", "metrics", "data", "datasets"):
        mod = importlib.import_module(f"scpredict.{ns}")
        public = {n for n in vars(mod) if not n.startswith("_")} - {"annotations"}
        public = {n for n in public if not isinstance(getattr(mod, n), type(importlib))}
        assert public == set(mod.__all__), ns


def test_cli_demo_data_step(tmp_path):
    from scpredict._cli import main

    rc = main(["demo", "--out", str(tmp_path / "rep"), "--steps", "data"])
    assert rc == 0
    report = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert report["steps"]["data"]["status"] == "ok"
    assert (tmp_path / "rep" / "pbmc68k_umap.png").stat().st_size > 1000
    assert (tmp_path / "rep" / "synthetic_screen.h5ad").exists()
