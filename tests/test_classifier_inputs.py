"""Classifier inputs and edge cases: query formats, splits, labels, metrics and plots (review regressions)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp_sparse

import scpredict as sp
from helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from scpredict.metrics import (
    accuracy,
    classification_report,
    expected_calibration_error,
    hierarchical_predictions,
)
from scpredict.train import resolve_split

FAST = {"logger": None, "enable_checkpointing": False, "progress_bar": "none"}


@pytest.fixture(scope="module")
def cells():
    return sp.datasets.synthetic_celltypes(n_cells=240, n_genes=40, seed=3)


def _logreg(adata, **setup):
    data = adata.copy()
    sp.models.LogisticRegressionClassifier.setup_anndata(data, labels_key="cell_type", **setup)
    model = sp.models.LogisticRegressionClassifier(data)
    model.train()
    return model


# ------------------------------------------------------------------ metrics
def test_hierarchy_keeps_long_parent_labels_and_ece_uses_the_same_rule():
    truth = ["T cell", "T cell", "B"]
    pred = ["T", "T", "B"]  # "T" is a child of the longer "T cell": the adjusted label must not be cut short
    adjusted = hierarchical_predictions(truth, pred, hierarchy={"T cell": ["T"]})
    assert adjusted.tolist() == ["T cell", "T cell", "B"]
    proba = np.array([[0.95, 0.05], [0.95, 0.05], [0.05, 0.95]])
    rep = classification_report(truth, pred, proba=proba, classes=["T", "B"], hierarchy={"T cell": ["T"]})
    assert rep["accuracy"] == 1.0
    assert rep["ece"] == pytest.approx(0.05)  # every top-class prediction correct at confidence 0.95
    plain = classification_report(truth, pred, proba=proba, classes=["T", "B"])
    assert plain["ece"] == pytest.approx(expected_calibration_error(truth, proba, classes=["T", "B"]))
    assert plain["ece"] > 0.5  # without the hierarchy two confident predictions are wrong


def test_integral_float_labels_equal_integer_labels():
    assert accuracy(pd.Series([1.0, 2.0]), pd.Series([1, 2])) == 1.0
    assert accuracy(["1.5", "a"], [1.5, "a"]) == 1.0


# ------------------------------------------------------------------ splits
def test_validation_indices_alone_train_on_the_rest():
    tr, va = resolve_split(8, validation_indices=[1, 5], train_size=0.9, seed=0)
    np.testing.assert_array_equal(va, [1, 5])
    np.testing.assert_array_equal(tr, [0, 2, 3, 4, 6, 7])


def test_compare_without_validation_lets_each_model_split_its_training_cells(cells):
    adata = cells.copy()
    sp.pp.split_cells(adata, fractions=(0.8, 0.0, 0.2), stratify_key="cell_type", seed=0)
    n_train = int((adata.obs["split"] == "train").sum())
    table = sp.tl.compare_classifiers(
        adata,
        {"linear": ("LinearClassifier", {}, {"max_epochs": 2, **FAST})},
        labels_key="cell_type",
        validation=None,
        key_added=None,
    )
    # 90 % of the training cells fit, 10 % early-stop (never a test cell)
    assert table.loc["linear", "n_train"] == int(np.ceil(0.9 * n_train))


# ------------------------------------------------------------------ query formats
def test_xgboost_gives_the_same_predictions_for_dense_and_sparse_cells(cells):
    dense = cells.copy()
    dense.X = np.asarray(cells.X.todense(), dtype=np.float32)
    for train_on in (cells, dense):
        data = train_on.copy()
        sp.models.XGBoostClassifier.setup_anndata(data, labels_key="cell_type")
        model = sp.models.XGBoostClassifier(data, n_estimators=20, max_depth=3)
        model.train()
        np.testing.assert_allclose(model.get_probabilities(dense), model.get_probabilities(cells), atol=1e-6)


def test_logreg_trained_on_two_of_three_classes(cells):
    adata = cells[cells.obs["cell_type"].isin(["type0", "type1", "type2"])].copy()
    sp.models.LogisticRegressionClassifier.setup_anndata(adata, labels_key="cell_type")
    model = sp.models.LogisticRegressionClassifier(adata)
    seen = np.flatnonzero(adata.obs["cell_type"].isin(["type0", "type1"]).to_numpy())
    model.train(train_indices=seen)
    proba = model.get_probabilities(adata[seen])
    pred = np.asarray(model.classes_)[proba.argmax(1)]
    assert (pred == adata.obs["cell_type"].to_numpy()[seen]).mean() > 0.9
    assert np.all(proba[:, model.classes_.index("type2")] == 0)  # never trained on: probability 0


def test_embedding_key_is_ignored_by_models_that_do_not_read_it(cells):
    adata = cells.copy()
    adata.obsm["X_emb"] = np.zeros((adata.n_obs, 3), dtype=np.float32)
    model = _logreg(adata, embedding_key="X_emb")
    query = cells.copy()  # no obsm at all
    np.testing.assert_allclose(model.get_probabilities(query), _logreg(cells).get_probabilities(query))


def test_backed_query_for_models_that_do_not_stream(cells, tmp_path):
    model = _logreg(cells)
    query = cells[:, ::-1].copy()  # genes in another order
    query.write_h5ad(tmp_path / "q.h5ad")
    backed = ad.read_h5ad(tmp_path / "q.h5ad", backed="r")
    np.testing.assert_allclose(model.get_probabilities(backed), model.get_probabilities(cells), atol=1e-6)
    backed.file.close()


def test_load_with_a_query_that_has_no_or_unseen_labels(cells, tmp_path):
    model = _logreg(cells)
    model.save(tmp_path / "m")
    unlabelled = cells.copy()
    del unlabelled.obs["cell_type"]
    loaded = sp.models.LogisticRegressionClassifier.load(tmp_path / "m", adata=unlabelled)
    loaded.predict(key_added="p")
    assert unlabelled.obs["p"].notna().all()
    novel = cells.copy()
    novel.obs["cell_type"] = novel.obs["cell_type"].astype(str).replace("type0", "novel")
    loaded = sp.models.LogisticRegressionClassifier.load(tmp_path / "m", adata=novel)
    np.testing.assert_allclose(loaded.get_probabilities(), model.get_probabilities(cells))


# ------------------------------------------------------------------ labels written by predict
def test_unknown_label_must_not_collide_with_a_class_and_defaults_keys(cells):
    adata = cells.copy()
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str).replace("type3", "unknown")
    model = _logreg(adata)
    with pytest.raises(ValueError, match="unknown_label"):
        model.predict(adata, min_confidence=0.99)
    assert "logreg" not in adata.obs  # nothing written
    model.predict(adata, min_confidence=0.99, unknown_label="low_confidence")
    low = adata.obs["logreg_confidence"].to_numpy() < 0.99
    assert adata.uns["logreg"]["n_unknown"] == int(low.sum())
    assert (adata.obs["logreg"].astype(str).to_numpy()[low] == "low_confidence").all()
    assert sp.models.TabNetClassifier._default_key == "tabnet"
    assert sp.models.XGBoostClassifier._default_key == "xgboost"


# ------------------------------------------------------------------ SCORE and EmbeddingDiffusion
@pytest.fixture(scope="module")
def score_model(cells):
    adata = cells.copy()
    sp.models.ScoreClassifier.setup_anndata(adata, labels_key="cell_type")
    model = sp.models.ScoreClassifier(adata, n_hidden=16, n_layers=1, n_eval_timesteps=6)
    model.train(max_epochs=2, train_size=0.7, validation_size=0.1, plan_kwargs={"optimizer": "adam"}, **FAST)
    return model


def test_score_respects_validation_size_and_plan_kwargs(score_model, cells):
    assert score_model.train_params_["n_train"] == int(np.ceil(0.7 * cells.n_obs))
    assert score_model.train_params_["n_validation"] == int(np.floor(0.1 * cells.n_obs))


def test_score_of_a_cell_does_not_depend_on_the_rest_of_the_query(score_model, cells):
    proba = score_model.get_probabilities(cells, batch_size=50)
    reverse = score_model.get_probabilities(cells[::-1].copy(), batch_size=50)[::-1]
    subset = score_model.get_probabilities(cells[100:].copy(), batch_size=7)
    np.testing.assert_allclose(reverse, proba, atol=1e-6)
    np.testing.assert_allclose(subset, proba[100:], atol=1e-6)


def test_obsm_queries_are_checked_and_may_be_sparse(cells):
    adata = cells.copy()
    adata.obsm["X_emb"] = sp_sparse.csr_matrix(np.log1p(cells.X[:, :6].toarray()))
    sp.models.EmbeddingDiffusion.setup_anndata(adata, embedding_key="X_emb", labels_key="cell_type")
    model = sp.models.EmbeddingDiffusion(adata, n_hidden=16, n_layers=1)
    train = np.arange(0, adata.n_obs, 2)
    model.train(max_epochs=1, train_indices=train, **FAST)
    dense = adata.obsm["X_emb"].toarray()
    # standardised on the training cells only
    np.testing.assert_allclose(model.module.score.x_mean.numpy(), dense[train].mean(0), rtol=1e-5)
    aug = model.get_augmented(adata, min_cells_per_class=70)
    assert (aug.obs["cell_type"].value_counts() >= 70).all()
    # a query for SCORE on the same embedding: NaN and a wrong width are errors naming the key
    sp.models.ScoreClassifier.setup_anndata(adata, labels_key="cell_type", embedding_key="X_emb")
    score = sp.models.ScoreClassifier(adata, n_hidden=16, n_layers=1, n_eval_timesteps=4)
    score.train(max_epochs=1, **FAST)
    bad = adata.copy()
    bad.obsm["X_emb"] = dense.copy()
    bad.obsm["X_emb"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"obsm\['X_emb'\] has 1 NaN"):
        score.get_probabilities(bad)
    bad.obsm["X_emb"] = dense[:, :4]
    with pytest.raises(ValueError, match="has 4 columns"):
        score.get_probabilities(bad)


# ------------------------------------------------------------------ plots
def test_plots_handle_unbounded_metrics_and_missing_predictions(cells):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pd.DataFrame({"train_s": [1.38, 0.2], "macro_f1": [0.9, 0.8]}, index=["a", "b"])
    ax = sp.pl.classifier_comparison(table, metrics=("train_s",))
    assert ax.get_ylim()[1] >= 1.38
    ax = sp.pl.classifier_comparison(table, metrics=("macro_f1",))
    assert ax.get_ylim() == pytest.approx((0, 1.05))
    adata = cells.copy()
    adata.obsm["X_2d"] = np.random.default_rng(0).normal(size=(adata.n_obs, 2))
    adata.obs["pred"] = pd.Categorical(np.where(np.arange(adata.n_obs) < 50, "type0", None))
    fig = sp.pl.embedding(adata, key="pred", labels_key="cell_type", basis="X_2d", method="none")
    assert len(fig.axes) == 2
    plt.close("all")


def test_cell_normals_are_standard_normal_per_cell_and_reproducible():
    import torch

    from scpredict.module._score import cell_normals

    x = torch.randn(500, 5, generator=torch.Generator().manual_seed(0))
    z = cell_normals(x, 200, seed=3)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    assert abs(float(torch.corrcoef(z[:2])[0, 1])) < 0.2  # different cells: unrelated streams
    torch.testing.assert_close(cell_normals(x[[7, 2]], 200, seed=3), z[[7, 2]])  # a function of the cell
    assert not torch.equal(cell_normals(x[:3], 200, seed=4), z[:3])  # the seed changes every stream


def test_backed_queries_get_the_same_obsm_checks(cells, tmp_path):
    adata = cells.copy()
    adata.obsm["X_e"] = np.log1p(cells.X[:, :6].toarray()).astype(np.float32)
    sp.models.ScoreClassifier.setup_anndata(adata, labels_key="cell_type", embedding_key="X_e")
    model = sp.models.ScoreClassifier(adata, n_hidden=16, n_layers=1, n_eval_timesteps=4)
    model.train(max_epochs=1, **FAST)
    query = adata[:, ::-1].copy()
    query.write_h5ad(tmp_path / "ok.h5ad")
    backed = ad.read_h5ad(tmp_path / "ok.h5ad", backed="r")  # streamed from disk by the torch models
    np.testing.assert_allclose(model.get_probabilities(backed), model.get_probabilities(adata), atol=1e-6)
    backed.file.close()
    query.obsm["X_e"][3, 1] = np.inf
    query.write_h5ad(tmp_path / "bad.h5ad")
    backed = ad.read_h5ad(tmp_path / "bad.h5ad", backed="r")
    with pytest.raises(ValueError, match=r"obsm\['X_e'\] has 1 NaN or infinite"):
        model.get_probabilities(backed)
    backed.file.close()
