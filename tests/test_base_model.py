"""Foundation: the model base on a small model (tests/toy_model.py)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp_sparse

import scpredict as sp
from helpers import assert_adata_equal
from toy_model import ToyModel, toy_data


@pytest.fixture
def adata():
    a = toy_data()
    ToyModel.setup_anndata(a, condition_key="perturbation")
    return a


@pytest.fixture
def trained(adata):
    model = ToyModel(adata)
    model.train(max_epochs=2, batch_size=64)
    return model


def test_setup_records_json(adata):
    rec = json.loads(adata.uns["_scpredict"]["ToyModel"])
    assert rec["categorical"] == {"condition": "perturbation"}
    assert rec["scale"] == "counts"


def test_model_requires_setup():
    a = toy_data()
    with pytest.raises(ValueError, match="setup_anndata"):
        ToyModel(a)


def test_train_history_and_provenance(adata, trained):
    assert trained.is_trained_
    assert {"train_loss", "validation_loss"} <= set(trained.history)
    assert len(trained.history["train_loss"]) == 2
    trained.predict(adata, key_added="rec")
    assert adata.layers["rec"].shape == adata.shape
    assert adata.uns["rec"]["model"] == "ToyModel"
    assert list(adata.uns["rec"]["var_names"]) == list(adata.var_names)


def test_training_reduces_loss(adata):
    model = ToyModel(adata)
    model.train(max_epochs=15, batch_size=32, lr=1e-2, early_stopping=False)
    h = model.history["train_loss"].iloc[:, 0].to_numpy()
    assert h[-1] < h[0]


def test_second_train_runs_in_training_mode(adata, trained):
    """A module left in eval mode by predict()/train() must be put back in training mode by the next train()."""
    import lightning.pytorch as pl

    class RecordMode(pl.Callback):
        modes: list = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.modes.append(all(m.training for m in trained.module.modules()))

    trained.predict(adata, key_added="rec")
    assert not trained.module.training
    rec = RecordMode()
    trained.train(max_epochs=1, batch_size=64, callbacks=[rec])
    assert rec.modes and all(rec.modes)
    assert not trained.module.training  # left in eval mode for inference


def test_save_load_identical(tmp_path, adata, trained):
    before = trained.get_reconstruction(adata)
    trained.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "weights.safetensors"]
    loaded = ToyModel.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.get_reconstruction(adata), before)
    assert loaded.vocab_ == trained.vocab_
    assert loaded.history["train_loss"].shape == trained.history["train_loss"].shape
    with pytest.raises(FileExistsError):
        trained.save(tmp_path / "m")


def test_load_with_adata_attaches_and_aligns(tmp_path, adata, trained):
    trained.save(tmp_path / "m")
    other = toy_data()
    other = other[:, ::-1].copy()
    loaded = ToyModel.load(tmp_path / "m", adata=other)
    assert loaded.adata is other
    np.testing.assert_allclose(loaded.get_reconstruction(other), trained.get_reconstruction(adata), rtol=1e-6)


class _Payload:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['SP_PWNED'], 'w').write('ran')",))


def test_pickled_payload_never_runs(tmp_path, adata, trained, monkeypatch):
    target = tmp_path / "pwned"
    monkeypatch.setenv("SP_PWNED", str(target))
    trained.save(tmp_path / "m")
    (tmp_path / "m" / "weights.safetensors").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(ValueError, match="safetensors"):
        ToyModel.load(tmp_path / "m")
    assert not target.exists()
    # a torch.save'd pickle in place of the weights is refused too
    import torch

    torch.save({"x": _Payload()}, tmp_path / "m" / "weights.safetensors")
    with pytest.raises(ValueError):
        ToyModel.load(tmp_path / "m")
    assert not target.exists()


def test_load_refuses_other_class(tmp_path, trained):
    trained.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["model"] = "SomethingElse"
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(TypeError, match="SomethingElse"):
        ToyModel.load(tmp_path / "m")


def test_shuffled_var_order_identical(adata, trained):
    ref = trained.get_reconstruction(adata)
    perm = np.random.default_rng(1).permutation(adata.n_vars)
    shuffled = adata[:, perm].copy()
    np.testing.assert_array_equal(trained.get_reconstruction(shuffled), ref)
    trained.predict(shuffled, key_added="rec")
    np.testing.assert_array_equal(shuffled.layers["rec"], ref[:, perm])


def test_dense_view_gives_the_rows_of_the_full_result(adata, trained):
    dense = adata.copy()
    dense.X = np.asarray(dense.X.toarray() if sp_sparse.issparse(dense.X) else dense.X)
    ref = trained.get_reconstruction(dense)
    view = dense[10:40]  # an AnnData view: its dense X is an ArrayView, not an ndarray
    assert view.is_view
    np.testing.assert_allclose(trained.get_reconstruction(view), ref[10:40], rtol=1e-6)


def test_few_missing_genes_zero_filled_with_warning(adata, trained):
    sub = adata[:, 2:].copy()  # 2 of 40 genes missing (5%)
    with pytest.warns(UserWarning, match="missing"):
        out = trained.get_reconstruction(sub)
    assert out.shape == (adata.n_obs, adata.n_vars)


def test_too_many_missing_genes_error_lists_examples(adata, trained):
    sub = adata[:, 10:].copy()
    before = sub.copy()
    with pytest.raises(ValueError, match="G0000") as e:
        trained.predict(sub, key_added="rec")
    assert "max_missing" in str(e.value)
    assert_adata_equal(sub, before)


def test_no_gene_overlap_error(adata, trained):
    other = adata.copy()
    other.var_names = [f"X{i}" for i in range(other.n_vars)]
    with pytest.raises(ValueError, match="None of the"):
        trained.get_reconstruction(other)


def test_non_integer_counts_error_leaves_adata_unchanged(adata, trained):
    bad = adata.copy()
    bad.X = sp_sparse.csr_matrix(np.log1p(bad.X.toarray()))
    before = bad.copy()
    with pytest.raises(sp.pp.InputScaleError, match="not integers"):
        trained.predict(bad, key_added="rec")
    assert_adata_equal(bad, before)
    fresh = bad.copy()
    del fresh.uns["_scpredict"]
    before = fresh.copy()
    with pytest.raises(sp.pp.InputScaleError, match="layer='counts'"):
        ToyModel.setup_anndata(fresh, condition_key="perturbation")
    assert_adata_equal(fresh, before)


def test_unseen_category_error_names_key_and_value(adata, trained):
    new = adata.copy()
    new.obs["perturbation"] = new.obs["perturbation"].cat.add_categories(["NEWPERT"])
    new.obs.iloc[0, new.obs.columns.get_loc("perturbation")] = "NEWPERT"
    before = new.copy()
    with pytest.raises(ValueError, match=r"perturbation.*NEWPERT"):
        trained.predict(new, key_added="rec")
    assert_adata_equal(new, before)


def test_missing_key_and_layer_errors():
    a = toy_data()
    before = a.copy()
    with pytest.raises(KeyError, match="nope"):
        ToyModel.setup_anndata(a, condition_key="nope")
    with pytest.raises(KeyError, match="layers"):
        ToyModel.setup_anndata(a, condition_key="perturbation", layer="missing_layer")
    assert_adata_equal(a, before)


def test_nan_rejected():
    a = toy_data()
    x = a.X.toarray()
    x[0, 0] = np.nan
    a.X = x
    before = a.copy()
    with pytest.raises(sp.pp.InputScaleError, match="NaN"):
        ToyModel.setup_anndata(a, condition_key="perturbation")
    assert_adata_equal(a, before)


def test_two_seeded_runs_identical():
    outs = []
    for _ in range(2):
        a = toy_data()
        ToyModel.setup_anndata(a, condition_key="perturbation")
        m = ToyModel(a)
        m.train(max_epochs=2, batch_size=32)
        outs.append(m.get_reconstruction(a))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_different_seed_differs(monkeypatch):
    outs = []
    for seed in (0, 1):
        monkeypatch.setattr(sp.settings, "seed", seed)
        a = toy_data()
        ToyModel.setup_anndata(a, condition_key="perturbation")
        m = ToyModel(a)
        m.train(max_epochs=1, batch_size=32)
        outs.append(m.get_reconstruction(a))
    assert not np.array_equal(outs[0], outs[1])


def test_import_does_not_load_torch():
    code = "import scpredict, sys; assert 'torch' not in sys.modules and 'scvi' not in sys.modules and 'lightning' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_models_namespace_lazy_and_errors():
    assert "BaseModel" in dir(sp.models)
    with pytest.raises(AttributeError):
        sp.models.DoesNotExist  # noqa: B018


def test_loggers_write_files(adata):
    import scpredict as sp

    model = ToyModel(adata)
    model.train(max_epochs=2, batch_size=64, logger=["csv", "tensorboard"], progress_bar="epoch")
    root = sp.settings.log_dir / "ToyModel"
    csvs = list(root.rglob("metrics.csv"))
    events = list(root.rglob("events.out.tfevents*"))
    assert csvs and events
    text = csvs[0].read_text()
    assert "train_loss" in text and "validation_loss" in text
    assert list(root.rglob("last.ckpt"))


def test_training_history_plot(trained):
    import matplotlib

    matplotlib.use("Agg")
    fig = sp.pl.training_history(trained)
    assert len(fig.axes) == 2  # loss and mse panels
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert sorted(labels) == ["train", "validation"]
    import matplotlib.pyplot as plt

    _, ax = plt.subplots()
    assert sp.pl.training_history(trained, metrics=["loss"], ax=ax) is ax
    with pytest.raises(KeyError, match="nope"):
        sp.pl.training_history(trained, metrics=["nope"])


def test_setup_mudata_uses_rna_modality():
    import mudata as md

    rna = toy_data()
    other = sp.datasets.synthetic_celltypes(n_cells=rna.n_obs, n_genes=5)
    other.obs_names = rna.obs_names
    mdata = md.MuData({"rna": rna, "prot": other})
    ToyModel.setup_mudata(mdata, modality="rna", condition_key="perturbation")
    model = ToyModel(mdata)
    assert model.n_vars == rna.n_vars
    model.train(max_epochs=1, batch_size=64)
    out = model.get_reconstruction(mdata)
    assert out.shape == rna.shape


def test_explicit_train_indices(adata):
    model = ToyModel(adata)
    idx = np.arange(100)
    model.train(max_epochs=1, train_indices=idx, validation_indices=np.arange(100, 150))
    assert model.train_params_["n_train"] == 100 and model.train_params_["n_validation"] == 50


def test_train_indices_alone_never_validate_on_the_other_cells(adata):
    # the cells left out may be the user's test cells: they must not steer early stopping or the kept epoch
    model = ToyModel(adata)
    model.train(max_epochs=2, train_indices=np.arange(100))
    assert model.train_params_["n_train"] == 100 and model.train_params_["n_validation"] == 0
    assert not any(k.startswith("validation") for k in model.history)
    model.train(max_epochs=1, validation_indices=np.arange(100, 150))  # validation alone: train on the rest
    assert model.train_params_["n_validation"] == 50
    assert model.train_params_["n_train"] == adata.n_obs - 50


def test_plateau_scheduler_without_validation_cells_watches_the_training_loss(adata):
    model = ToyModel(adata)
    model.train(max_epochs=2, train_indices=np.arange(100), plan_kwargs={"lr_scheduler": "plateau"})
    sched = model.trainer_.lr_scheduler_configs[0]
    assert sched.monitor == "train_loss"
    model.train(max_epochs=1, plan_kwargs={"lr_scheduler": "plateau"})
    assert model.trainer_.lr_scheduler_configs[0].monitor == "validation_loss"
