"""The four perturbation baselines and the PerturbationModel contract they share."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import scpredict as sp
from helpers import assert_adata_equal
from scpredict.models._perturbation_base import UnknownPerturbationError


@pytest.fixture
def adata():
    return sp.datasets.synthetic_perturbation(n_cells=500, n_genes=25, n_perturbations=4, n_combinations=3)


def _means(adata, label):
    x = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X, dtype=np.float64)
    return x[(adata.obs["perturbation"].astype(str) == label).to_numpy()].mean(0)


def _fit(cls, adata, **kw):
    cls.setup_anndata(adata, perturbation_key="perturbation")
    model = cls(adata, **kw)
    model.train()
    return model


def test_control_baseline_is_control_mean(adata):
    model = _fit(sp.models.ControlBaseline, adata)
    prof = model.get_perturbation_profiles(["P1", "anything+new"])
    np.testing.assert_allclose(prof.X[0], _means(adata, "control"), rtol=1e-5)
    np.testing.assert_allclose(prof.X[1], _means(adata, "control"), rtol=1e-5)
    assert list(prof.obs["perturbation"]) == ["P1", "anything+new"]
    assert list(prof.var_names) == list(adata.var_names)
    assert prof.uns["scale"] == "log1p"


def test_mean_baseline_is_mean_of_perturbation_means(adata):
    model = _fit(sp.models.MeanBaseline, adata)
    perts = sorted(set(adata.obs["perturbation"].astype(str)) - {"control"})
    expected = np.mean([_means(adata, p) for p in perts], axis=0)
    np.testing.assert_allclose(model.get_perturbation_profiles(["P0"]).X[0], expected, rtol=1e-5)
    np.testing.assert_allclose(
        model.get_perturbation_profiles(["control"]).X[0], _means(adata, "control"), rtol=1e-5
    )


def test_additive_baseline_sums_single_effects(adata):
    model = _fit(sp.models.AdditiveBaseline, adata)
    ctrl = _means(adata, "control")
    da, db = _means(adata, "P0") - ctrl, _means(adata, "P2") - ctrl
    prof = model.get_perturbation_profiles(["P0+P2", "P0"])  # P0+P2 need not be in the data
    np.testing.assert_allclose(prof.X[0], np.clip(ctrl + da + db, 0, None), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prof.X[1], _means(adata, "P0"), rtol=1e-5)
    with pytest.raises(UnknownPerturbationError, match="P9"):
        model.get_perturbation_profiles(["P0+P9"])


def test_linear_baseline_fits_training_singles():
    # singles only: their embeddings span the fitted space, so with full rank and no penalty they are reproduced
    adata = sp.datasets.synthetic_perturbation(n_cells=400, n_genes=25, n_perturbations=4, n_combinations=0)
    model = _fit(sp.models.LinearBaseline, adata, n_components=10, ridge_lambda=0.0)
    pred = model.get_perturbation_profiles(["P1", "P3"]).X
    np.testing.assert_allclose(pred[0], _means(adata, "P1"), atol=1e-3)
    np.testing.assert_allclose(pred[1], _means(adata, "P3"), atol=1e-3)
    # a strong penalty shrinks predictions toward control + mean effect
    shrunk = _fit(sp.models.LinearBaseline, adata, n_components=10, ridge_lambda=1e6)
    mean_model = _fit(sp.models.MeanBaseline, adata)
    np.testing.assert_allclose(
        shrunk.get_perturbation_profiles(["P1"]).X, mean_model.get_perturbation_profiles(["P1"]).X, atol=1e-3
    )


def test_linear_baseline_gene_and_external_embeddings(adata):
    # rename perturbations to their target genes so that 'gene' embeddings exist; hold out P3 (gene G0003)
    ren = {f"P{i}": f"G{i:04d}" for i in range(4)}
    labels = (
        adata.obs["perturbation"].astype(str).map(lambda s: "+".join(ren.get(t, t) for t in s.split("+")))
    )
    adata.obs["perturbation"] = pd.Categorical(labels)
    train = adata[~labels.str.contains("G0003").to_numpy()].copy()
    model = _fit(sp.models.LinearBaseline, train, n_components=3, perturbation_embedding="gene")
    assert model.get_perturbation_profiles(["G0003"]).shape == (1, 25)  # an unseen single
    emb = pd.DataFrame(np.eye(4), index=[f"G{i:04d}" for i in range(4)])
    ext = _fit(sp.models.LinearBaseline, train, n_components=3, perturbation_embedding=emb)
    assert np.isfinite(ext.get_perturbation_profiles(["G0003", "G0000+G0003"]).X).all()
    with pytest.raises(UnknownPerturbationError, match="G0099"):
        ext.get_perturbation_profiles(["G0099"])


def test_predict_writes_layer_and_provenance(adata):
    model = _fit(sp.models.AdditiveBaseline, adata)
    model.predict(adata, key_added="additive")
    layer = adata.layers["additive"]
    assert layer.shape == adata.shape
    is_p0 = (adata.obs["perturbation"] == "P0").to_numpy()
    np.testing.assert_allclose(layer[is_p0][0], _means(adata, "P0"), rtol=1e-5)
    assert np.allclose(layer[is_p0], layer[is_p0][0])
    params = adata.uns["additive"]["params"]
    assert params["perturbation_key"] == "perturbation" and params["scale"] == "log1p"
    assert adata.uns["additive"]["model"] == "AdditiveBaseline"


def test_predict_unknown_perturbation_writes_nothing(adata):
    model = _fit(sp.models.AdditiveBaseline, adata)
    query = adata[:20].copy()
    query.obs["perturbation"] = pd.Categorical(["P7"] * 20)
    before = query.copy()
    with pytest.raises(UnknownPerturbationError, match="P7"):
        model.predict(query, key_added="x")
    assert_adata_equal(query, before)


def test_save_load_and_shuffled_genes(adata, tmp_path):
    model = _fit(sp.models.LinearBaseline, adata, n_components=3)
    ref = model.get_perturbation_profiles(["P0", "P1+P2"]).X
    model.save(tmp_path / "lin")
    loaded = sp.models.LinearBaseline.load(tmp_path / "lin")
    np.testing.assert_array_equal(loaded.get_perturbation_profiles(["P0", "P1+P2"]).X, ref)
    # predictions follow the query's gene order
    shuffled = adata[:, adata.var_names[::-1]].copy()
    loaded.predict(shuffled, key_added="lin")
    model.predict(adata, key_added="lin")
    np.testing.assert_allclose(shuffled.layers["lin"][:, ::-1], adata.layers["lin"])


def test_covariates(adata):
    adata = sp.datasets.synthetic_perturbation(n_cells=600, n_genes=20, n_perturbations=3, n_cell_lines=2)
    sp.models.MeanBaseline.setup_anndata(adata, perturbation_key="perturbation", covariate_keys=["cell_line"])
    model = sp.models.MeanBaseline(adata)
    model.train()
    with pytest.raises(ValueError, match="covariates="):
        model.get_perturbation_profiles(["P0"])
    prof = model.get_perturbation_profiles(["P0", "P0"], covariates={"cell_line": ["line0", "line1"]})
    assert list(prof.obs["cell_line"]) == ["line0", "line1"]
    assert not np.allclose(prof.X[0], prof.X[1])
    with pytest.raises(UnknownPerturbationError, match="line7"):
        model.get_perturbation_profiles(["P0"], covariates={"cell_line": "line7"})


def test_setup_without_control_writes_nothing(adata):
    before = adata.copy()
    with pytest.raises(ValueError, match="control label 'ctrl'"):
        sp.models.MeanBaseline.setup_anndata(adata, perturbation_key="perturbation", control="ctrl")
    with pytest.raises(KeyError, match="nope"):
        sp.models.MeanBaseline.setup_anndata(adata, perturbation_key="nope")
    assert_adata_equal(adata, before)


def test_untrained_model_refuses(adata):
    sp.models.MeanBaseline.setup_anndata(adata, perturbation_key="perturbation")
    with pytest.raises(RuntimeError, match="not trained"):
        sp.models.MeanBaseline(adata).get_perturbation_profiles(["P0"])
