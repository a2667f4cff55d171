"""Cell-type classifiers (LogReg, XGBoost, Linear, TabNet, SCORE), their modules, EmbeddingDiffusion, tl/pl."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import scpredict as sp
from helpers import assert_adata_equal, one_torch_thread  # noqa: F401  (one_torch_thread: autouse fixture)
from scpredict.metrics import classification_report
from scpredict.module._score import ScoreModule
from scpredict.module._tabnet import (
    GhostBatchNorm,
    TabNetModule,
    TabNetPretrainer,
    entmax15,
    sparsemax,
)
from scpredict.pp import InputScaleError

N_TRAIN = 300
FAST = {"logger": None, "enable_checkpointing": False, "progress_bar": "none"}

# name -> (init kwargs, train kwargs, setup kwargs); small settings so the file runs in well under a minute
MODELS = {
    "LogisticRegressionClassifier": ({}, {}, {}),
    "XGBoostClassifier": ({"n_estimators": 30, "max_depth": 3}, {}, {}),
    "LinearClassifier": ({}, {"max_epochs": 15, **FAST}, {}),
    "TabNetClassifier": (
        {"n_d": 16, "n_a": 16, "n_shared": 1, "n_independent": 1},
        {"max_epochs": 15, "lr": 2e-2, **FAST},
        {},
    ),
    "ScoreClassifier": (
        {"n_hidden": 64, "n_layers": 2, "n_eval_timesteps": 10},
        {"max_epochs": 40, "lr": 5e-3, "early_stopping_patience": 40, **FAST},
        {"embedding_key": "X_pca"},
    ),
}


def _pca(adata, n_comps: int = 10) -> np.ndarray:
    x = np.asarray(
        adata.layers["log1p"].toarray()
        if hasattr(adata.layers["log1p"], "toarray")
        else adata.layers["log1p"]
    )
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return (x @ vt[:n_comps].T).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    """300 training cells and 100 held-out cells of 4 synthetic cell types (counts in X)."""
    adata = sp.datasets.synthetic_celltypes(n_cells=N_TRAIN + 100, n_genes=100, seed=0)
    adata.obsm["X_pca"] = _pca(adata)
    return adata[:N_TRAIN].copy(), adata[N_TRAIN:].copy()


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """Every model trained once on the 300 training cells."""
    old = sp.settings.log_dir
    sp.settings.log_dir = tmp_path_factory.mktemp("logs")
    models = {}
    try:
        for name, (init_kwargs, train_kwargs, setup_kwargs) in MODELS.items():
            train = data[0].copy()
            cls = getattr(sp.models, name)
            cls.setup_anndata(train, labels_key="cell_type", **setup_kwargs)
            model = cls(train, **init_kwargs)
            model.train(**train_kwargs)
            models[name] = model
    finally:
        sp.settings.log_dir = old
    return models


# ---------------------------------------------------------------- modules
def test_sparsemax_hand_computed_and_gradient():
    z = torch.tensor([[1.0, 0.5, -1.0], [0.2, 0.2, 0.2], [3.0, 0.0, 0.0]])
    # row 1: support {1, 0.5}: tau = (1.5 - 1)/2 = 0.25 -> (0.75, 0.25, 0)
    expected = torch.tensor([[0.75, 0.25, 0.0], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(sparsemax(z), expected)
    zz = torch.randn(5, 7, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(sparsemax, (zz,))


def test_entmax15_hand_computed_denser_than_sparsemax_and_gradient():
    # z = (1, 0): both in the support, (0.5 - tau)^2 + tau^2 = 1 -> tau = (1 - sqrt 7) / 4
    tau = (1 - 7**0.5) / 4
    expected = torch.tensor([[(0.5 - tau) ** 2, tau**2], [0.5, 0.5]])
    torch.testing.assert_close(entmax15(torch.tensor([[1.0, 0.0], [3.0, 3.0]])), expected)
    torch.manual_seed(0)
    z = torch.randn(8, 500)
    e = entmax15(z)
    torch.testing.assert_close(e.sum(-1), torch.ones(8))
    assert ((e > 0).sum(-1) > (sparsemax(z) > 0).sum(-1)).all()
    assert ((e > 0).sum(-1) < 500).all()  # still sparse
    zz = torch.randn(4, 6, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(entmax15, (zz,))


def test_ghost_batch_norm_normalises_each_virtual_batch():
    gbn = GhostBatchNorm(3, virtual_batch_size=4)
    gbn.train()
    x = torch.cat([torch.randn(4, 3), torch.randn(4, 3) * 10 + 5])
    out = gbn(x)
    for chunk in out.split(4):
        torch.testing.assert_close(chunk.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    gbn.eval()  # evaluation uses running statistics: the two halves are no longer both centred
    assert gbn(x)[4:].mean() > 0.1


def test_tabnet_masks_are_sparse_distributions_and_prior_limits_reuse():
    torch.manual_seed(0)
    m = TabNetModule(20, 3, n_d=8, n_a=8, n_steps=3, gamma=1.0, virtual_batch_size=16)
    out = m(torch.randn(32, 20))
    masks = out["masks"]
    assert masks.shape == (3, 32, 20) and out["embedding"].shape == (32, 8)
    torch.testing.assert_close(masks.sum(-1), torch.ones(3, 32))
    assert (masks == 0).any()  # sparsemax gives exact zeros
    # gamma = 1: a feature fully used by one step gets prior 0 afterwards
    used = masks[0] > 0.999
    assert (masks[1:][:, used] < 1e-6).all()


def test_tabnet_mask_temperature_keeps_more_genes_and_stays_sparse():
    torch.manual_seed(0)
    x = torch.randn(64, 300)
    kept = {}
    for tau in (1.0, 8.0):
        torch.manual_seed(1)  # same weights for both temperatures
        m = TabNetModule(300, 3, n_d=8, n_a=8, mask_type="entmax", mask_temperature=tau)
        masks = m.train()(x)["masks"]  # batch statistics: normalised attention scores
        torch.testing.assert_close(masks.sum(-1), torch.ones_like(masks.sum(-1)))
        kept[tau] = (masks > 0).sum(-1).float().mean().item()
    assert kept[8.0] > 3 * kept[1.0]
    assert kept[8.0] < 300  # still sparse
    with pytest.raises(ValueError, match="mask_temperature"):
        TabNetModule(10, 2, mask_temperature=0.0)


def test_tabnet_augmentation_smoothing_and_class_weight_act_in_training_only():
    torch.manual_seed(0)
    batch = {"X": torch.rand(32, 20), "labels": torch.randint(0, 3, (32, 1))}
    plain = TabNetModule(20, 3, n_d=8, n_a=8)
    aug = TabNetModule(20, 3, n_d=8, n_a=8, input_dropout=0.5, label_smoothing=0.2)
    aug.load_state_dict(plain.state_dict())
    w = torch.tensor([5.0, 1.0, 1.0])
    for m in (plain, aug):
        m.eval()
    # evaluation: no augmentation, no smoothing, no weights -> identical losses
    torch.testing.assert_close(plain.loss(batch).loss, aug.loss(batch, class_weight=w).loss)
    plain.train()
    aug.train()
    torch.manual_seed(1)
    a = aug.loss(batch)
    torch.manual_seed(1)
    p = plain.loss(batch)
    assert not torch.allclose(a.loss, p.loss)
    torch.manual_seed(1)
    weighted = plain.loss(batch, class_weight=w)
    assert not torch.allclose(weighted.loss, p.loss)
    # the logged cross-entropy is the plain one in every case
    torch.testing.assert_close(weighted.metrics["cross_entropy"], p.metrics["cross_entropy"])
    with pytest.raises(ValueError, match="input_dropout"):
        TabNetModule(10, 2, input_dropout=1.0)


def test_tabnet_mixup_mixes_cells_and_labels_in_training_only():
    torch.manual_seed(0)
    batch = {"X": torch.rand(32, 20), "labels": torch.randint(0, 3, (32, 1))}
    plain = TabNetModule(20, 3, n_d=8, n_a=8, dropout_rate=0.0)
    mix = TabNetModule(20, 3, n_d=8, n_a=8, dropout_rate=0.0, mixup_alpha=0.4)
    mix.load_state_dict(plain.state_dict())
    plain.eval()
    mix.eval()
    torch.testing.assert_close(plain.loss(batch).loss, mix.loss(batch).loss)  # evaluation: no mixing
    plain.train()
    mix.train()
    torch.manual_seed(3)
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    perm = torch.randperm(32)
    x = lam * batch["X"] + (1 - lam) * batch["X"][perm]  # what mixup should feed the network
    y = batch["labels"].long().squeeze(-1)
    logits = plain(x)["logits"]
    ce = torch.nn.functional.cross_entropy
    expected = lam * ce(logits, y) + (1 - lam) * ce(logits, y[perm])
    torch.manual_seed(3)
    got = mix.loss(batch)
    torch.testing.assert_close(got.loss, expected + mix.lambda_sparse * got.metrics["sparsity"])
    with pytest.raises(ValueError, match="mixup_alpha"):
        TabNetModule(10, 2, mixup_alpha=-1.0)


def test_score_module_paired_scores_prefer_the_class_of_the_cell():
    torch.manual_seed(0)
    net = ScoreModule(2, 2, n_timesteps=100, n_hidden=32, n_layers=2)
    x = torch.cat([torch.randn(200, 2) * 0.3 + 2, torch.randn(200, 2) * 0.3 - 2])
    y = torch.cat([torch.zeros(200), torch.ones(200)]).long()
    net.set_standardization(x.mean(0), x.std(0))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(300):
        loss = net.denoising_loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    err = net.class_errors(x, n_eval_timesteps=10, n_noise=2, generator=torch.Generator().manual_seed(0))
    assert (err.argmin(1) == y).float().mean() > 0.95
    again = net.class_errors(x, n_eval_timesteps=10, n_noise=2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(err, again)


def test_score_module_all_class_pass_matches_per_class_forward():
    torch.manual_seed(0)
    net = ScoreModule(6, 4, n_timesteps=100, n_hidden=16, n_layers=2)
    for p in net.parameters():  # the output layers start at zero; make every path matter
        torch.nn.init.normal_(p, std=0.3)
    net.eval()
    x = torch.randn(5, 6)
    eps = net._eps_all_classes(x, 37)
    for c in range(4):
        ref = net(x, torch.full((5,), 37), torch.full((5,), c))
        torch.testing.assert_close(eps[:, c], ref)
    per_t = net.class_errors(x, timesteps=torch.tensor([10, 50]), n_noise=2, per_timestep=True)
    assert per_t.shape == (5, 2, 4)
    mean = net.class_errors(
        x, timesteps=torch.tensor([10, 50]), n_noise=2, generator=torch.Generator().manual_seed(1)
    )
    again = net.class_errors(
        x,
        timesteps=torch.tensor([10, 50]),
        n_noise=2,
        generator=torch.Generator().manual_seed(1),
        per_timestep=True,
    ).mean(1)
    torch.testing.assert_close(mean, again)


def test_linear_fast_prediction_matches_the_network(trained, data):
    model = trained["LinearClassifier"]
    prepared = model._prepare(data[1], keys=model._input_keys())
    fast = model._probabilities(prepared, batch_size=64)
    slow = model._module_outputs(
        prepared, lambda b: torch.softmax(model.module(b["X"])["logits"], dim=-1), batch_size=64
    )
    np.testing.assert_allclose(fast, slow, atol=1e-5)


# ---------------------------------------------------------------- the five classifiers
@pytest.mark.parametrize("name", list(MODELS))
def test_separates_synthetic_cell_types(name, trained, data):
    query = data[1].copy()
    trained[name].predict(query, key_added="pred")
    acc = np.mean(query.obs["pred"].astype(str).to_numpy() == query.obs["cell_type"].astype(str).to_numpy())
    assert acc > 0.9, f"{name}: held-out accuracy {acc:.2f}"
    proba = query.obsm["pred_proba"]
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    assert list(query.uns["pred"]["classes"]) == ["type0", "type1", "type2", "type3"]
    np.testing.assert_allclose(query.obs["pred_confidence"], proba.max(1), rtol=1e-6)


@pytest.mark.parametrize("name", list(MODELS))
def test_save_load_keeps_class_order_and_predictions(name, trained, data, tmp_path):
    model = trained[name]
    model.save(tmp_path / "m")
    assert not any(p.suffix in {".pkl", ".pickle", ".joblib"} for p in (tmp_path / "m").iterdir())
    loaded = type(model).load(tmp_path / "m")
    assert loaded.classes_ == model.classes_
    np.testing.assert_allclose(loaded.get_probabilities(data[1]), model.get_probabilities(data[1]), atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_shuffled_genes_give_the_same_predictions(name, trained, data):
    query = data[1]
    perm = np.random.default_rng(1).permutation(query.n_vars)
    shuffled = query[:, perm].copy()
    np.testing.assert_allclose(
        trained[name].get_probabilities(shuffled), trained[name].get_probabilities(query), atol=1e-5
    )


@pytest.mark.parametrize("name", ["LogisticRegressionClassifier", "TabNetClassifier"])
def test_min_confidence_gives_unknown(name, trained, data):
    query = data[1].copy()
    model = trained[name]
    conf = model.get_probabilities(query).max(1)
    threshold = float(np.median(conf))
    model.predict(query, key_added="p", min_confidence=threshold)
    unknown = query.obs["p"].astype(str).to_numpy() == "unknown"
    np.testing.assert_array_equal(unknown, conf < threshold)
    assert query.uns["p"]["n_unknown"] == int(unknown.sum())


def test_unseen_label_in_query_truth_is_reported(trained, data):
    query = data[1].copy()
    labels = query.obs["cell_type"].astype(str).to_numpy()
    labels[:10] = "never_seen"
    query.obs["cell_type"] = pd.Categorical(labels)
    model = trained["LogisticRegressionClassifier"]
    model.predict(query, key_added="p")  # labels are not read at prediction time
    rep = classification_report(query.obs["cell_type"], query.obs["p"], classes=model.classes_)
    assert rep["unseen_labels"] == ["never_seen"] and rep["n_unseen"] == 10
    assert rep["per_class_f1"]["never_seen"] == 0.0


def test_predict_without_labels_column(trained, data):
    query = data[1].copy()
    del query.obs["cell_type"]
    trained["XGBoostClassifier"].predict(query, key_added="xgb")
    assert query.obs["xgb"].notna().all()


# ---------------------------------------------------------------- bad input
def test_missing_labels_key_errors(data):
    adata = data[0].copy()
    with pytest.raises(KeyError, match="no_such_column"):
        sp.models.LinearClassifier.setup_anndata(adata, labels_key="no_such_column")


def test_nan_input_errors(data):
    adata = data[0].copy()
    x = adata.X.toarray().astype(np.float32)
    x[0, 0] = np.nan
    adata.X = x
    with pytest.raises(InputScaleError, match="NaN"):
        sp.models.TabNetClassifier.setup_anndata(adata, labels_key="cell_type")


def test_log_data_where_counts_are_declared_errors(trained, data):
    adata = data[0].copy()
    with pytest.raises(InputScaleError, match="counts"):
        sp.models.LogisticRegressionClassifier.setup_anndata(adata, labels_key="cell_type", layer="log1p")
    query = data[1].copy()
    query.X = query.layers["log1p"].copy()
    before = query.copy()
    with pytest.raises(InputScaleError, match="not integers"):
        trained["LinearClassifier"].predict(query, key_added="p")
    assert_adata_equal(query, before)  # nothing written by the failed call


def test_missing_embedding_key_at_predict_errors(trained, data):
    query = data[1].copy()
    del query.obsm["X_pca"]
    with pytest.raises(KeyError, match="X_pca"):
        trained["ScoreClassifier"].predict(query, key_added="score")


def test_untrained_model_refuses_to_predict(data):
    adata = data[0].copy()
    sp.models.LogisticRegressionClassifier.setup_anndata(adata, labels_key="cell_type")
    with pytest.raises(RuntimeError, match="not trained"):
        sp.models.LogisticRegressionClassifier(adata).predict(adata)


def test_bad_scale_value_errors(data):
    with pytest.raises(ValueError, match="scale must be"):
        sp.models.LinearClassifier.setup_anndata(data[0].copy(), labels_key="cell_type", scale="zscore")


# ---------------------------------------------------------------- embeddings, SCORE with its own encoder
def test_tabnet_embedding_and_feature_importance(trained, data):
    model = trained["TabNetClassifier"]
    emb = model.get_embedding(data[1])
    assert emb.shape == (data[1].n_obs, 16) and (emb >= 0).all()  # sums of ReLU outputs
    imp = model.get_feature_importance(data[1])
    np.testing.assert_allclose(imp.sum(1), 1.0, atol=1e-5)
    # marker genes of the types get more importance than the other genes
    markers = (data[1].var["marker_of"] != "none").to_numpy()
    assert imp[:, markers].mean() > imp[:, ~markers].mean()


def test_tabnet_pretrainer_hides_features_and_learns_to_reconstruct():
    torch.manual_seed(0)
    # 12 features driven by 2 latent factors: hidden features are predictable from the visible ones
    z = torch.randn(256, 2)
    x = z @ torch.randn(2, 12) + 0.05 * torch.randn(256, 12)
    enc = TabNetModule(12, 2, n_d=8, n_a=8, n_steps=2, mask_type="entmax")
    hidden = torch.zeros(256, 12)
    hidden[:, :3] = 1.0
    enc.eval()
    with torch.no_grad():  # the hidden values cannot reach the encoder's output
        out = enc.encode(x, obfuscation=hidden)
        x2 = x.clone()
        x2[:, :3] = 100.0
        out2 = enc.encode(x2, obfuscation=hidden)
    torch.testing.assert_close(out["embedding"], out2["embedding"])
    assert out["steps"].shape == (2, 256, 8)
    assert not torch.equal(out2["embedding"], enc.encode(x2)["embedding"])  # unlike without hiding
    pre = TabNetPretrainer(enc, x.mean(0), x.var(0), pretraining_ratio=0.3)
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731 - the same masks before and after
    pre.eval()
    with torch.no_grad():
        before = float(pre.reconstruction(x, generator=gen())[0])
        out = pre.loss({"X": x}, generator=gen())  # the training objective adds the sparsity term
    assert float(out.metrics["reconstruction"]) == pytest.approx(before)
    assert float(out.loss) == pytest.approx(before + enc.lambda_sparse * float(out.metrics["sparsity"]))
    opt = torch.optim.Adam(pre.parameters(), lr=1e-2)
    pre.train()
    for _ in range(150):
        loss = pre.loss({"X": x}).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    pre.eval()
    with torch.no_grad():
        after = float(pre.reconstruction(x, generator=gen())[0])
    assert before > 0.8 and after < 0.5 * before
    with pytest.raises(ValueError, match="pretraining_ratio"):
        TabNetPretrainer(enc, x.mean(0), x.var(0), pretraining_ratio=1.0)


def test_tabnet_pretrain_then_fine_tune(data):
    train = data[0].copy()
    sp.models.TabNetClassifier.setup_anndata(train, labels_key="cell_type")
    model = sp.models.TabNetClassifier(train, **MODELS["TabNetClassifier"][0])
    head = model.module.head.weight.detach().clone()
    first = model.module.shared[0].weight.detach().clone()
    from lightning.pytorch.callbacks import Callback

    seen = []

    class Seen(Callback):  # the Lightning loop runs the pretrainer (encoder + decoder)
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(type(pl_module.module).__name__)

    hist = model.pretrain(
        max_epochs=15,
        batch_size=50,
        lr=2e-2,
        indices=np.arange(200),
        validation_indices=np.arange(200, 300),
        callbacks=[Seen()],
        **FAST,
    )
    assert seen and set(seen) == {"TabNetPretrainer"} and len(hist) == len(seen) + 1
    assert list(hist.columns) == ["train_reconstruction", "validation_reconstruction"]
    assert hist.index[0] == 0 and np.isnan(hist["train_reconstruction"].iloc[0])
    val = hist["validation_reconstruction"]
    assert val.min() < 0.9 * val.iloc[0]  # reconstruction of held-out cells improved
    assert hist["train_reconstruction"].iloc[-1] < hist["train_reconstruction"].iloc[1]
    assert not torch.equal(model.module.shared[0].weight, first)  # the encoder changed
    assert torch.equal(model.module.head.weight, head)  # the head is not touched by pretraining
    assert not model.is_trained_ and model.history == {}  # pretraining is not the classifier's training
    pretrained = model.module.shared[0].weight.detach().clone()
    lrs, start = [], []

    class Record(Callback):
        def on_train_start(self, trainer, pl_module):
            start.append(pl_module.module.shared[0].weight.detach().cpu().clone())

        def on_train_epoch_start(self, trainer, pl_module):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    kw = {**MODELS["TabNetClassifier"][1], "lr_decay": 0.5, "callbacks": [Record()]}
    model.train(**kw)
    torch.testing.assert_close(start[0], pretrained)  # fine-tuning starts from the pretrained encoder
    assert lrs[:3] == pytest.approx([2e-2, 1e-2, 5e-3])
    query = data[1].copy()
    model.predict(query, key_added="pred")  # the fine-tuned model still separates the types
    acc = np.mean(query.obs["pred"].astype(str).to_numpy() == query.obs["cell_type"].astype(str).to_numpy())
    assert acc > 0.9, f"pretrained + fine-tuned TabNet: held-out accuracy {acc:.2f}"
    with pytest.raises(ValueError, match="lr_decay"):
        model.train(lr_decay=0.0)
    # without validation cells: every epoch runs, no validation column
    hist = model.pretrain(max_epochs=2, batch_size=100, indices=np.arange(300), early_stopping=True, **FAST)
    assert list(hist.columns) == ["train_reconstruction"] and list(hist.index) == [1, 2]
    assert model.is_trained_  # the classifier's training record is kept
    with pytest.raises(TypeError, match="indices"):
        model.pretrain(train_indices=np.arange(10))


def test_tabnet_cosine_schedule_and_weight_average(data):
    from lightning.pytorch.callbacks import Callback

    train = data[0].copy()
    sp.models.TabNetClassifier.setup_anndata(train, labels_key="cell_type")
    model = sp.models.TabNetClassifier(train, **MODELS["TabNetClassifier"][0])
    lrs = []

    class Record(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    kw = {**MODELS["TabNetClassifier"][1], "max_epochs": 10, "early_stopping": False}
    model.train(**kw, lr_schedule="cosine", ema_decay=0.5, callbacks=[Record()])
    expected = [2e-2 * (1 + np.cos(np.pi * e / 10)) / 2 for e in range(10)]
    assert lrs == pytest.approx(expected)
    query = data[1].copy()
    model.predict(query, key_added="pred")  # the averaged weights classify
    acc = np.mean(query.obs["pred"].astype(str).to_numpy() == query.obs["cell_type"].astype(str).to_numpy())
    assert acc > 0.9, f"TabNet with cosine schedule and weight average: held-out accuracy {acc:.2f}"
    with pytest.raises(ValueError, match="not both"):
        model.train(lr_decay=0.9, lr_schedule="cosine")
    with pytest.raises(ValueError, match="lr_schedule"):
        model.train(lr_schedule="step")
    with pytest.raises(ValueError, match="ema_decay"):
        model.train(ema_decay=1.0)


def test_tabnet_input_norm_option_and_old_saves_load_as_batch(data, tmp_path):
    import json

    train = data[0].copy()
    sp.models.TabNetClassifier.setup_anndata(train, labels_key="cell_type")
    init, train_kw, _ = MODELS["TabNetClassifier"]
    assert sp.models.TabNetClassifier(train, **init).init_params_["input_norm"] == "batch"
    model = sp.models.TabNetClassifier(train, **init, input_norm="none")
    assert not any(k.startswith("input_bn") for k in model.module.state_dict())
    # with "none", scaling one gene of the input is not undone by a per-gene standardisation
    model.module.eval()
    x = torch.rand(8, model.n_vars)
    x2 = x.clone()
    x2[:, 0] *= 100
    assert not torch.allclose(model.module(x)["logits"], model.module(x2)["logits"])
    with pytest.raises(ValueError, match="input_norm"):
        sp.models.TabNetClassifier(train, **init, input_norm="layer")
    # a model saved before the option existed has an input batch norm and no "input_norm" setting
    old = sp.models.TabNetClassifier(train, **init)
    old.train(**{**train_kw, "max_epochs": 2})
    old.save(tmp_path / "old")
    meta_path = next(f for f in (tmp_path / "old").iterdir() if f.suffix == ".json")
    meta = json.loads(meta_path.read_text())
    del meta["init_params"]["input_norm"]
    meta_path.write_text(json.dumps(meta))
    loaded = sp.models.TabNetClassifier.load(tmp_path / "old")
    assert isinstance(loaded.module.input_bn, torch.nn.BatchNorm1d)
    np.testing.assert_allclose(loaded.get_probabilities(data[1]), old.get_probabilities(data[1]), atol=1e-6)


def test_score_classifier_with_internal_encoder_roundtrip(data, tmp_path):
    adata = data[0].copy()
    sp.models.ScoreClassifier.setup_anndata(adata, labels_key="cell_type")
    model = sp.models.ScoreClassifier(
        adata,
        n_hidden=16,
        n_layers=1,
        n_eval_timesteps=4,
        n_noise=1,
        encoder="tabnet",
        encoder_kwargs={"n_d": 8, "n_a": 8},
    )
    model.train(max_epochs=2, encoder_max_epochs=2, **FAST)
    assert "encoder_train_loss" in model.history and "train_loss" in model.history
    assert model.get_embedding(data[1]).shape == (data[1].n_obs, 8)
    assert np.isfinite(model.temperature_) and model.temperature_ > 0
    model.save(tmp_path / "score")
    loaded = sp.models.ScoreClassifier.load(tmp_path / "score")
    assert loaded.temperature_ == pytest.approx(model.temperature_)
    np.testing.assert_allclose(loaded.timestep_weights_, model.timestep_weights_)
    np.testing.assert_allclose(loaded.get_class_scores(data[1]), model.get_class_scores(data[1]), atol=1e-5)


def test_score_timestep_weights_and_window(trained, data):
    model = trained["ScoreClassifier"]
    w = model.timestep_weights_  # uniform, or 1 / spread of class-centred validation errors; mean 1
    assert w.shape == (model.init_params_["n_eval_timesteps"],) and (w > 0).all()
    assert w.mean() == pytest.approx(1.0)
    lo, hi = model.timestep_range_
    assert 0.0 <= lo < hi <= 1.0
    emb = data[1].obsm["X_pca"]
    per_t = model._class_errors(emb, per_timestep=True)
    np.testing.assert_allclose(
        model._class_errors(emb), (per_t * w[None, :, None]).sum(1) / w.sum(), rtol=1e-5, atol=1e-7
    )
    with pytest.raises(ValueError, match="timestep_range"):
        sp.models.ScoreClassifier(data[0].copy(), timestep_range=(0.5, 0.2))
    assert model._scoring_timesteps().max() < model.module.score.n_timesteps


def test_fit_temperature_with_class_prior_recovers_the_scale():
    from scpredict.models._score import fit_temperature

    rng = np.random.default_rng(0)
    prior = np.array([0.7, 0.2, 0.1])
    y = rng.choice(3, size=4000, p=prior)
    x = rng.normal(np.array([-1.0, 0.0, 1.0])[y], 1.0)
    loglik = -0.5 * (x[:, None] - np.array([-1.0, 0.0, 1.0])[None, :]) ** 2  # log p(x | c) + const
    t_bayes = fit_temperature(5.0 * loglik, y, log_prior=np.log(prior))
    assert t_bayes == pytest.approx(5.0, rel=0.15)  # softmax(s / T + log π) is the exact posterior at T = 5
    assert abs(fit_temperature(5.0 * loglik, y) - 5.0) > abs(t_bayes - 5.0)


def test_score_class_prior_is_bayes_rule_with_training_frequencies(data, tmp_path):
    keep = np.flatnonzero((data[0].obs["cell_type"] != data[0].obs["cell_type"].cat.categories[0]).to_numpy())
    adata = data[0][np.concatenate([np.flatnonzero(~np.isin(np.arange(N_TRAIN), keep))[:10], keep])].copy()
    sp.models.ScoreClassifier.setup_anndata(adata, labels_key="cell_type", embedding_key="X_pca")
    with pytest.raises(ValueError, match="class_prior"):
        sp.models.ScoreClassifier(adata, class_prior="bayes")
    init = {**MODELS["ScoreClassifier"][0], "n_eval_timesteps": 4, "n_noise": 1, "timestep_range": (0.1, 0.9)}
    model = sp.models.ScoreClassifier(adata, class_prior="empirical", **init)
    tr, va = np.arange(0, adata.n_obs, 2), np.arange(1, adata.n_obs, 2)
    model.train(max_epochs=3, train_indices=tr, validation_indices=va, **FAST)
    codes = pd.Categorical(adata.obs["cell_type"], categories=model.classes_).codes
    counts = np.bincount(codes[tr], minlength=len(model.classes_))
    expected = np.log((counts + 1) / (counts.sum() + len(counts)))
    assert model.class_prior_ == "empirical" and counts.min() < counts.max() / 5
    np.testing.assert_allclose(model.log_prior_, expected)
    from scpredict.models._score import fit_temperature

    emb = adata.obsm["X_pca"]
    t = fit_temperature(-model._class_errors(emb[va]), codes[va], log_prior=expected)  # fitted with the prior
    assert model.temperature_ == pytest.approx(t, rel=1e-6)
    z = model.get_class_scores(data[1]) / model.temperature_ + expected
    proba = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(
        model.get_probabilities(data[1]), proba / proba.sum(1, keepdims=True), atol=1e-6
    )
    model.save(tmp_path / "prior")
    loaded = sp.models.ScoreClassifier.load(tmp_path / "prior")
    assert loaded.class_prior_ == "empirical"
    np.testing.assert_allclose(loaded.get_probabilities(data[1]), model.get_probabilities(data[1]), atol=1e-6)
    auto = sp.models.ScoreClassifier(adata, class_prior="auto", **init)
    auto.train(max_epochs=3, train_indices=tr, validation_indices=va, **FAST)
    err = auto._class_errors(emb[va])
    f1 = {}
    for name, lp in (("uniform", np.zeros_like(expected)), ("empirical", expected)):
        pred = (-err / fit_temperature(-err, codes[va], log_prior=lp) + lp).argmax(1)
        f1[name] = sp.metrics.macro_f1(codes[va], pred)
    assert auto.class_prior_ == ("empirical" if f1["empirical"] > f1["uniform"] else "uniform")
    assert np.any(auto.log_prior_ != 0) == (auto.class_prior_ == "empirical")


def test_embedding_diffusion_samples_near_their_class(tmp_path):
    rng = np.random.default_rng(0)
    emb = np.concatenate([rng.normal(3, 0.3, (150, 4)), rng.normal(-3, 0.3, (150, 4))]).astype(np.float32)
    adata = sp.datasets.synthetic_celltypes(n_cells=300, n_genes=10)
    adata.obsm["X_emb"] = emb
    adata.obs["group"] = pd.Categorical(["a"] * 150 + ["b"] * 150)
    sp.models.EmbeddingDiffusion.setup_anndata(adata, embedding_key="X_emb", labels_key="group")
    model = sp.models.EmbeddingDiffusion(adata, n_hidden=64, n_layers=2, n_timesteps=200)
    model.train(max_epochs=60, lr=5e-3, early_stopping=False, **FAST)
    out = model.sample({"a": 20, "b": 20}, n_sampling_steps=20)
    z = out.obsm["X_emb"]
    assert out.obs["group"].tolist() == ["a"] * 20 + ["b"] * 20
    assert z[:20].mean() > 1.5 and z[20:].mean() < -1.5
    again = model.sample({"a": 20, "b": 20}, n_sampling_steps=20)
    np.testing.assert_allclose(again.obsm["X_emb"], z)
    aug = model.get_augmented(adata[:160].copy(), min_cells_per_class=50)  # 150 a, 10 b -> 40 synthetic b
    assert int(aug.obs["synthetic"].sum()) == 40
    with pytest.raises(ValueError, match="not seen"):
        model.sample(["zzz"])


# ---------------------------------------------------------------- tl / pl
def test_compare_classifiers_table_and_unseen_label(data):
    adata = sp.datasets.synthetic_celltypes(n_cells=240, n_genes=60, seed=3)
    sp.pp.split_cells(adata, fractions=(0.7, 0.15, 0.15), stratify_key="cell_type", seed=0)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    test_idx = np.flatnonzero(adata.obs["split"].to_numpy() == "test")
    labels[test_idx[:3]] = "novel"
    adata.obs["cell_type"] = pd.Categorical(labels)
    table = sp.tl.compare_classifiers(
        adata,
        {
            "logreg": "LogisticRegressionClassifier",
            "xgb": (sp.models.XGBoostClassifier, {"n_estimators": 20}),
        },
        labels_key="cell_type",
    )
    assert list(table.index) == ["logreg", "xgb"]
    for col in ("accuracy", "macro_f1", "weighted_f1", "ece", "train_s", "predict_cells_per_s", "f1:novel"):
        assert col in table.columns
    assert (table["unseen_labels"] == "novel").all()
    assert (table["f1:novel"] == 0).all()
    assert table.loc["logreg", "accuracy"] > 0.8
    assert adata.obs["classifier_comparison_logreg"].notna().sum() == len(test_idx)
    ax = sp.pl.classifier_comparison(table)
    assert len(ax.patches) == 4  # 2 models x 2 metrics
    ax = sp.pl.confusion_matrix(adata, key="classifier_comparison_logreg", labels_key="cell_type")
    assert "novel" in [t.get_text() for t in ax.get_yticklabels()]


def test_compare_classifiers_per_model_setup_override():
    adata = sp.datasets.synthetic_celltypes(n_cells=200, n_genes=40, seed=2)
    sp.pp.split_cells(adata, fractions=(0.7, 0.15, 0.15), stratify_key="cell_type", seed=0)
    adata.obsm["X_ok"] = np.zeros((adata.n_obs, 3), dtype=np.float32)
    logreg = "LogisticRegressionClassifier"
    table = sp.tl.compare_classifiers(
        adata,
        {"plain": logreg, "with_emb": (logreg, {}, {}, {"embedding_key": "X_ok"})},
        labels_key="cell_type",
        key_added=None,
    )
    assert list(table.index) == ["plain", "with_emb"]
    # the override reaches setup_anndata of that model only: a missing key fails there, naming the key
    # (SCORE reads the embedding; LogReg ignores embedding_key, so "with_emb" above ran on the genes)
    with pytest.raises(KeyError, match="X_missing"):
        sp.tl.compare_classifiers(
            adata,
            {"m": ("ScoreClassifier", {"n_hidden": 16}, {"max_epochs": 1}, {"embedding_key": "X_missing"})},
            labels_key="cell_type",
        )
    with pytest.raises(ValueError, match="setup_kwargs may only override"):
        sp.tl.compare_classifiers(adata, {"m": (logreg, {}, {}, {"labels_key": "x"})}, labels_key="cell_type")
    with pytest.raises(ValueError, match="at most"):
        sp.tl.compare_classifiers(adata, {"m": (logreg, {}, {}, {}, {})}, labels_key="cell_type")


def test_repeated_comparison_mean_and_sd():
    adata = sp.datasets.synthetic_celltypes(n_cells=300, n_genes=40, seed=1)
    summary = sp.tl.repeated_comparison(
        adata, {"logreg": "LogisticRegressionClassifier"}, labels_key="cell_type", n_cells=120, n_repeats=3
    )
    repeats = summary.attrs["repeats"]
    assert len(repeats) == 3
    assert summary.loc["logreg", "macro_f1_mean"] == pytest.approx(repeats["macro_f1"].mean())
    assert summary.loc["logreg", "macro_f1_sd"] == pytest.approx(repeats["macro_f1"].std(ddof=1))
    ax = sp.pl.classifier_comparison(summary)
    assert len(ax.patches) == 2


def test_embedding_plot_two_panels(trained, data):
    query = data[1].copy()
    trained["LogisticRegressionClassifier"].predict(query, key_added="p")
    fig = sp.pl.embedding(query, basis="X_pca", labels_key="cell_type", key="p", method="none")
    assert len(fig.axes) == 2
    assert fig.axes[1].get_title().startswith("prediction")


# ---------------------------------------------------------------- logit-adjusted loss (Menon et al. 2021)
@pytest.mark.parametrize(
    ("name", "init", "kw"),
    [
        ("LinearClassifier", {}, {"max_epochs": 10}),
        (
            "TabNetClassifier",
            {"n_d": 16, "n_a": 16, "n_shared": 1, "n_independent": 1},
            {"max_epochs": 5, "lr": 2e-2},
        ),
    ],
)
def test_logit_adjustment_predicts_the_rare_class_more_often(name, init, kw):
    # overlapping types with 320 / 69 / 11 cells: the plain loss all but ignores the rarest type
    adata = sp.datasets.synthetic_celltypes(
        n_cells=400, n_genes=60, n_types=3, separation=0.6, imbalance=1.5, seed=3
    )
    idx = np.random.default_rng(0).permutation(adata.n_obs)
    cls = getattr(sp.models, name)
    cls.setup_anndata(adata, labels_key="cell_type")
    n_rare = {}
    for tau in (0.0, 1.0):
        model = cls(adata, **init)
        model.train(
            train_indices=idx[:300],
            validation_indices=idx[300:],
            early_stopping=False,
            logit_adjustment=tau,
            **kw,
            **FAST,
        )
        assert model.train_params_["logit_adjustment"] == tau
        pred = np.asarray(model.classes_)[model.get_probabilities(adata).argmax(1)]
        n_rare[tau] = int((pred == "type2").sum())
    assert n_rare[1.0] >= n_rare[0.0] + 10, n_rare


def test_logit_adjustment_zero_offset_is_the_plain_loss_and_offset_enters_the_loss():
    from torch.nn import functional as F

    from scpredict.module._linear_classifier import LinearClassifierModule
    from scpredict.module._tabnet import adjusted_cross_entropy

    torch.manual_seed(0)
    batch = {"X": torch.rand(32, 20), "labels": torch.randint(0, 3, (32, 1))}
    y = batch["labels"].squeeze(-1)
    w = torch.tensor([0.5, 1.0, 3.0])
    zero = torch.zeros(3)
    offset = torch.log(torch.tensor([0.7, 0.25, 0.05]))
    tab = TabNetModule(20, 3, n_d=8, n_a=8, label_smoothing=0.1, mixup_alpha=0.4)
    tab.train()
    for extra in ({}, {"class_weight": w}):  # training mode: smoothing, mixup (seeded), class weights
        torch.manual_seed(1)
        plain = tab.loss(batch, **extra)
        torch.manual_seed(1)
        same = tab.loss(batch, logit_offset=zero, **extra)
        assert torch.equal(plain.loss, same.loss)
        torch.manual_seed(1)
        adjusted = tab.loss(batch, logit_offset=offset, **extra)
        assert not torch.allclose(adjusted.loss, plain.loss)
        torch.testing.assert_close(adjusted.metrics["cross_entropy"], plain.metrics["cross_entropy"])
    lin = LinearClassifierModule(20, 3)
    lin.train()
    assert torch.equal(lin.loss(batch).loss, lin.loss(batch, logit_offset=zero).loss)
    # evaluation: the loss is the cross-entropy of the adjusted logits, accuracy that of the plain ones
    for m in (tab, lin):
        m.eval()
        logits = m(batch["X"])["logits"]
        plain, adjusted = m.loss(batch), m.loss(batch, logit_offset=offset)
        sparsity = m.lambda_sparse * adjusted.metrics["sparsity"] if m is tab else 0.0
        torch.testing.assert_close(adjusted.loss - sparsity, F.cross_entropy(logits + offset, y))
        torch.testing.assert_close(adjusted.metrics["accuracy"], plain.metrics["accuracy"])
    # with an offset, label smoothing goes towards softmax(offset) (uniform without one), weights as in torch
    z = torch.randn(40, 3)
    yy = torch.randint(0, 3, (40,))
    target = 0.9 * F.one_hot(yy, 3) + 0.1 * torch.softmax(offset, -1)
    ref = -(w * target * F.log_softmax(z + offset, -1)).sum() / w[yy].sum()
    got = adjusted_cross_entropy(z, yy, weight=w, label_smoothing=0.1, logit_offset=offset)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(
        adjusted_cross_entropy(z, yy, label_smoothing=0.1, logit_offset=offset),
        F.cross_entropy(z + offset, target),
    )


def test_logit_adjustment_prior_of_the_training_cells():
    from scpredict.models._classifier import logit_adjustment_offset, training_class_counts
    from scpredict.train import split_indices

    np.testing.assert_allclose(
        logit_adjustment_offset(np.array([6.0, 1.0, 0.0]), 0.5), 0.5 * np.log([0.7, 0.2, 0.1])
    )
    adata = sp.datasets.synthetic_celltypes(n_cells=200, n_genes=30, imbalance=1.0, seed=2)
    sp.models.LinearClassifier.setup_anndata(adata, labels_key="cell_type")
    model = sp.models.LinearClassifier(adata)
    y = pd.Index(model.classes_).get_indexer(adata.obs["cell_type"].astype(str))
    np.testing.assert_array_equal(
        training_class_counts(model, {"train_indices": [0, 5, 9]}), np.bincount(y[[0, 5, 9]], minlength=4)
    )
    tr, _ = split_indices(adata.n_obs, train_size=0.8, validation_size=None, seed=sp.settings.seed)
    counts = training_class_counts(model, {"train_size": 0.8})
    np.testing.assert_array_equal(counts, np.bincount(y[tr], minlength=4))
    assert counts.sum() == 160


@pytest.mark.parametrize("name", ["LinearClassifier", "TabNetClassifier"])
@pytest.mark.parametrize("tau", [-0.5, float("nan"), float("inf"), "one"])
def test_logit_adjustment_rejects_bad_values(name, tau):
    adata = sp.datasets.synthetic_celltypes(n_cells=60, n_genes=20)
    cls = getattr(sp.models, name)
    cls.setup_anndata(adata, labels_key="cell_type")
    model = cls(adata)
    with pytest.raises(ValueError, match="logit_adjustment must be a finite number >= 0"):
        model.train(max_epochs=1, logit_adjustment=tau, **FAST)
    assert not model.is_trained_
