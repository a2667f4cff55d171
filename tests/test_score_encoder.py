"""ScoreClassifier's built-in encoders: cross-fitted logistic-regression logits (the default) and TabNet."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import scipy.sparse as sp_sparse
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression

import scpredict as sp
from helpers import one_torch_thread  # noqa: F401  (autouse fixture)

FAST = {"logger": None, "enable_checkpointing": False, "progress_bar": "none"}
# a small denoiser and a cheap, fixed scoring setup: these tests are about the encoder
SMALL = {"n_hidden": 32, "n_layers": 1, "n_eval_timesteps": 4, "n_noise": 1}
N_TRAIN, N_QUERY = 300, 100


@pytest.fixture(scope="module")
def data():
    """300 cells to fit (240 train / 60 validation) and 100 query cells of 4 types; counts in X."""
    adata = sp.datasets.synthetic_celltypes(n_cells=N_TRAIN + N_QUERY, n_genes=100, seed=0)
    return adata[:N_TRAIN].copy(), adata[N_TRAIN:].copy()


def _split(n: int) -> tuple[np.ndarray, np.ndarray]:
    va = np.arange(0, n, 5)
    return np.setdiff1d(np.arange(n), va), va


def _lognorm(x):
    """log1p(10⁴-normalised counts) as a float32 CSR matrix: the model's features, written out here."""
    x = sp_sparse.csr_matrix(x, dtype=np.float32)
    lib = np.asarray(x.sum(axis=1)).ravel()
    x = sp_sparse.diags((1e4 / np.maximum(lib, 1.0)).astype(np.float32)) @ x
    x.data = np.log1p(x.data)
    return x


def _truth(adata) -> np.ndarray:
    return adata.obs["cell_type"].astype(str).to_numpy()


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """The default ScoreClassifier trained once; the denoiser's training inputs recorded."""
    old_dir, old_seed = sp.settings.log_dir, sp.settings.seed
    sp.settings.log_dir, sp.settings.seed = tmp_path_factory.mktemp("logs"), 0
    try:
        adata = data[0].copy()
        sp.models.ScoreClassifier.setup_anndata(adata, labels_key="cell_type")
        model = sp.models.ScoreClassifier(adata, **SMALL)
        seen: dict[str, list] = {"train": [], "validation": []}
        score = model.module.score
        original = score.denoising_loss

        def recording(x, y, **kw):
            seen["train" if score.training else "validation"].append(x.detach().cpu().numpy().copy())
            return original(x, y, **kw)

        score.denoising_loss = recording
        tr, va = _split(adata.n_obs)
        try:
            model.train(max_epochs=30, lr=5e-3, train_indices=tr, validation_indices=va, **FAST)
        finally:
            del score.denoising_loss
        return model, adata, tr, va, {k: np.concatenate(v) for k, v in seen.items()}
    finally:
        sp.settings.log_dir, sp.settings.seed = old_dir, old_seed


def _refit_folds(model, adata, tr, *, C: float = 1.0, max_iter: int = 500) -> list[LogisticRegression]:
    """The fold models refitted independently from the recorded folds (log-normalised counts)."""
    x = _lognorm(adata.X)
    y = np.searchsorted(model.classes_, _truth(adata))
    folds = model.encoder_folds_
    return [
        LogisticRegression(C=C, max_iter=max_iter).fit(x[tr][folds[tr] != k], y[tr][folds[tr] != k])
        for k in range(folds.max() + 1)
    ]


def test_default_encoder_is_crossfitted_logreg_and_separates(trained, data):
    model, *_ = trained
    assert model.init_params_["encoder"] == "logreg" and model.init_params_["n_folds"] == 5
    assert model.train_params_["encoder"]["n_folds"] == 5
    query = data[1].copy()
    model.predict(query, key_added="score")
    acc = np.mean(query.obs["score"].astype(str).to_numpy() == _truth(query))
    assert acc > 0.9, f"held-out accuracy {acc:.3f}"
    np.testing.assert_allclose(query.obsm["score_proba"].sum(1), 1.0, atol=1e-5)
    assert list(query.uns["score"]["classes"]) == model.classes_
    assert model.get_embedding(query).shape == (N_QUERY, 4)  # one logit per class


def test_denoiser_trains_on_out_of_fold_logits(trained):
    model, adata, tr, va, seen = trained
    folds = model.encoder_folds_
    assert (folds[va] == -1).all() and set(folds[tr]) == set(range(5))
    y = np.searchsorted(model.classes_, _truth(adata))
    for c in range(4):  # stratified: every fold holds out about a fifth of each class
        per_fold = np.bincount(folds[tr][y[tr] == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1
    fits = _refit_folds(model, adata, tr)
    x = _lognorm(adata.X)
    oof = np.zeros((len(tr), 4))
    for k, clf in enumerate(fits):
        oof[folds[tr] == k] = clf.decision_function(x[tr][folds[tr] == k])
    mean_map = model.get_embedding(adata)
    # new cells (and validation cells) get the mean of the fold models' logits: one affine map
    np.testing.assert_allclose(mean_map, np.mean([f.decision_function(x) for f in fits], axis=0), atol=1e-4)
    # the training cells' out-of-fold logits differ from the mean map on the same cells ...
    assert np.abs(oof - mean_map[tr]).mean() > 0.05
    # ... and are what the denoiser was trained on: every training input is a refit out-of-fold row
    inputs = seen["train"]
    assert len(inputs) >= len(tr) - 128  # the last incomplete batch of an epoch may be dropped
    dist_oof = np.abs(inputs[:, None, :] - oof[None].astype(np.float32)).max(-1).min(1)
    dist_mean = np.abs(inputs[:, None, :] - mean_map[tr][None]).max(-1).min(1)
    assert dist_oof.max() < 1e-4, dist_oof.max()
    assert dist_mean.min() > 5e-3 and np.median(dist_mean) > 0.05
    # validation cells are scored like new data (mean map)
    np.testing.assert_allclose(
        np.sort(seen["validation"][: len(va)], axis=0), np.sort(mean_map[va], axis=0), atol=1e-5
    )
    # the denoiser's standardisation comes from the out-of-fold training embeddings
    np.testing.assert_allclose(model.module.score.x_mean.numpy(), oof.mean(0), atol=1e-4)


def test_save_load_roundtrip_needs_no_sklearn(trained, data, tmp_path, monkeypatch):
    model, *_ = trained
    query = data[1].copy()
    expected = model.get_probabilities(query)
    model.save(tmp_path / "score")
    weights = load_file(str(tmp_path / "score" / "weights.safetensors"))
    assert weights["module.encoder.weight"].shape == (4, 100) and "module.encoder.bias" in weights
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.setitem(sys.modules, name, None)  # any scikit-learn import now fails
    loaded = sp.models.ScoreClassifier.load(tmp_path / "score")
    assert loaded.classes_ == model.classes_
    np.testing.assert_allclose(loaded.get_probabilities(query), expected, atol=1e-6)
    np.testing.assert_allclose(loaded.get_embedding(query), model.get_embedding(query), atol=1e-6)
    loaded.predict(query, key_added="loaded")
    assert list(query.uns["loaded"]["classes"]) == model.classes_


def test_shuffled_query_genes_give_the_same_predictions(trained, data):
    model, *_ = trained
    query = data[1].copy()
    perm = np.random.default_rng(1).permutation(query.n_vars)
    np.testing.assert_allclose(
        model.get_probabilities(query[:, perm].copy()), model.get_probabilities(query), atol=1e-6
    )


def test_kfold_split_is_seeded(data):
    adata = data[0].copy()
    sp.models.ScoreClassifier.setup_anndata(adata, labels_key="cell_type")
    model = sp.models.ScoreClassifier(adata, **SMALL)
    tr, _ = _split(adata.n_obs)
    prepared = model._prepare(adata, keys=["X"])
    first = model._fit_logreg_encoder(prepared, tr)
    folds = model.encoder_folds_.copy()
    np.testing.assert_array_equal(model._fit_logreg_encoder(prepared, tr), first)
    np.testing.assert_array_equal(model.encoder_folds_, folds)
    sp.settings.seed = 1
    model._fit_logreg_encoder(prepared, tr)
    assert not np.array_equal(model.encoder_folds_, folds)


def test_counts_and_log1p_inputs_give_the_same_encoder(data):
    train_kw = {"max_epochs": 1, **FAST}
    init = {**SMALL, "timestep_range": (0.1, 0.9), "timestep_weighting": "uniform", "class_prior": "uniform"}
    counts = data[0].copy()
    sp.models.ScoreClassifier.setup_anndata(counts, labels_key="cell_type", scale="counts")
    logged = data[0].copy()
    sp.models.ScoreClassifier.setup_anndata(logged, labels_key="cell_type", layer="log1p", scale="log1p")
    models = {}
    for name, adata in (("counts", counts), ("log1p", logged)):
        models[name] = sp.models.ScoreClassifier(adata, **init)
        models[name].train(train_indices=np.arange(200), validation_indices=np.arange(200, 300), **train_kw)
    assert models["counts"].module.encoder.log_normalize_input
    assert not models["log1p"].module.encoder.log_normalize_input
    query = data[1].copy()
    emb = models["counts"].get_embedding(query)  # reads X (counts), normalises itself
    # reads the log1p layer; same features (dense here, sparse there: lbfgs stops at a slightly other point)
    np.testing.assert_allclose(models["log1p"].get_embedding(query), emb, atol=2e-2)
    np.testing.assert_array_equal(models["counts"].encoder_folds_, models["log1p"].encoder_folds_)
    with pytest.raises(sp.pp.InputScaleError):  # log values where counts are declared
        bad = query.copy()
        bad.X = bad.layers["log1p"]
        models["counts"].get_embedding(bad)


def test_rare_classes_and_encoder_options(data):
    adata = data[0].copy()
    y = _truth(adata)
    rare = np.flatnonzero(y == "type3")
    keep = np.setdiff1d(np.arange(adata.n_obs), rare[3:])  # type3 keeps 3 cells (< 5 folds)
    small = adata[keep].copy()
    sp.models.ScoreClassifier.setup_anndata(small, labels_key="cell_type")
    init = {**SMALL, "timestep_range": (0.1, 0.9), "timestep_weighting": "uniform", "class_prior": "uniform"}
    model = sp.models.ScoreClassifier(small, encoder_kwargs={"C": 0.1, "max_iter": 200}, **init)
    ys = _truth(small)
    va = np.flatnonzero(ys != "type3")[::5]
    tr = np.setdiff1d(np.arange(small.n_obs), va)
    model.train(max_epochs=1, train_indices=tr, validation_indices=va, **FAST)
    folds = model.encoder_folds_
    assert sorted(folds[ys == "type3"]) == sorted(set(folds[ys == "type3"]))  # 3 cells in 3 different folds
    assert model.train_params_["encoder"]["C"] == 0.1
    fits = _refit_folds(model, small, tr, C=0.1, max_iter=200)
    x = _lognorm(data[1].X)
    np.testing.assert_allclose(
        model.get_embedding(data[1]), np.mean([f.decision_function(x) for f in fits], axis=0), atol=1e-4
    )

    single = adata[np.setdiff1d(np.arange(adata.n_obs), rare[1:])].copy()  # type3: one cell
    sp.models.ScoreClassifier.setup_anndata(single, labels_key="cell_type")
    model = sp.models.ScoreClassifier(single, **init)
    with pytest.raises(ValueError, match=r"'type3': 1.*encoder='tabnet'"):
        model.train(max_epochs=1, train_size=1.0, **FAST)
    assert not model.is_trained_

    with pytest.raises(ValueError, match=r"\['n_d'\].*encoder='tabnet'"):
        sp.models.ScoreClassifier(single, encoder_kwargs={"n_d": 8})
    with pytest.raises(ValueError, match="encoder must be one of"):
        sp.models.ScoreClassifier(single, encoder="pca")
    with pytest.raises(ValueError, match="n_folds"):
        sp.models.ScoreClassifier(single, n_folds=1)


def test_two_classes_give_a_single_logit(data):
    adata = data[0][np.isin(_truth(data[0]), ["type0", "type1"])].copy()
    sp.models.ScoreClassifier.setup_anndata(adata, labels_key="cell_type")
    model = sp.models.ScoreClassifier(adata, **SMALL, timestep_range=(0.1, 0.9))
    model.train(max_epochs=1, **FAST)
    query = data[1][np.isin(_truth(data[1]), ["type0", "type1"])].copy()
    emb = model.get_embedding(query)
    assert emb.shape == (query.n_obs, 1)
    # the single logit is that of the second class: it separates the two types
    assert np.mean((emb[:, 0] > 0) == (_truth(query) == model.classes_[1])) > 0.9


def test_tabnet_encoder_still_works_and_old_saves_load(data, tmp_path):
    adata = data[0].copy()
    sp.models.ScoreClassifier.setup_anndata(adata, labels_key="cell_type")
    model = sp.models.ScoreClassifier(adata, encoder="tabnet", encoder_kwargs={"n_d": 8, "n_a": 8}, **SMALL)
    model.train(max_epochs=2, encoder_max_epochs=2, **FAST)
    assert "encoder_train_loss" in model.history and model.encoder_folds_ is None
    assert "encoder" not in model.train_params_
    query = data[1].copy()
    assert model.get_embedding(query).shape == (N_QUERY, 8)
    expected = model.get_probabilities(query)
    model.save(tmp_path / "tabnet")
    meta_path = tmp_path / "tabnet" / "model.json"
    meta = json.loads(meta_path.read_text())
    for key in ("encoder", "n_folds"):  # a model saved before the option existed
        meta["init_params"].pop(key)
    meta_path.write_text(json.dumps(meta))
    loaded = sp.models.ScoreClassifier.load(tmp_path / "tabnet")
    assert type(loaded.module.encoder).__name__ == "TabNetModule"
    np.testing.assert_allclose(loaded.get_probabilities(query), expected, atol=1e-6)
