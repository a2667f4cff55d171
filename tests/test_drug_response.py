"""DrugResponseTransformer: training, unseen drugs via SMILES, retrieval, MuData, save/load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("rdkit")
torch = pytest.importorskip("torch")

import scpredict as sp  # noqa: E402
from scpredict.pp._drugs import _EXAMPLE_DRUGS, _synthetic_drug_screen  # noqa: E402

HELD_OUT = ["naproxen", "nilotinib"]
SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 1, "n_hidden": 32, "n_latent": 16, "n_bits": 256}
FIT = {
    "max_epochs": 2,
    "logger": None,
    "enable_checkpointing": False,
    "early_stopping": False,
    "warmup_epochs": 1,
}


def _data():
    return _synthetic_drug_screen(n_genes=24, cells_per_condition=3, n_controls=10)


def _setup(adata):
    sp.models.DrugResponseTransformer.setup_anndata(
        adata, perturbation_key="drug", smiles_key="smiles", cell_line_key="cell_line", dose_key="dose"
    )


@pytest.fixture(scope="module")
def trained():
    full = _data()
    train = full[~full.obs["drug"].isin(HELD_OUT)].copy()
    train.obs["drug"] = train.obs["drug"].cat.remove_unused_categories()
    _setup(train)
    model = sp.models.DrugResponseTransformer(train, **SMALL)
    model.train(**FIT)
    return model, full


def test_train_and_predict_writes_documented_slots(trained):
    model, full = trained
    adata = model.adata.copy()
    model.predict(adata, key_added="dr")
    assert adata.layers["dr"].shape == adata.shape and np.isfinite(adata.layers["dr"]).all()
    ctrl = (adata.obs["drug"] == "DMSO_TF").to_numpy()
    # control rows are predicted as their line's control mean, and have no applicability score
    line0 = ctrl & (adata.obs["cell_line"] == "line0").to_numpy()
    np.testing.assert_allclose(adata.layers["dr"][line0][0], adata.X[line0].mean(0), rtol=1e-5)
    assert np.isnan(adata.obs["dr"][ctrl]).all()
    np.testing.assert_allclose(adata.obs["dr"][~ctrl], 1.0)  # every training drug is in the domain
    assert adata.uns["dr"]["model"] == "DrugResponseTransformer"
    assert {"train_mse", "validation_mse", "train_info_nce"} <= set(model.history)


def test_unseen_drug_via_smiles(trained):
    model, full = trained
    held = full[full.obs["drug"].isin(HELD_OUT + ["DMSO_TF"])].copy()
    model.predict(held, key_added="dr")
    new = held.obs["drug"].isin(HELD_OUT).to_numpy()
    score = held.obs["dr"][new].to_numpy()
    assert (score < 1).all() and (score > 0).all()  # new drugs are flagged as outside the training set
    delta = model.get_delta(held)[new]
    assert np.isfinite(delta).all() and np.abs(delta).sum() > 0
    # same drug, same dose, same line -> same prediction; different doses differ
    prof = model.get_perturbation_profiles(
        {"naproxen": _EXAMPLE_DRUGS["naproxen"]}, covariates={"cell_line": "line1"}, doses=[0.1, 1.0]
    )
    assert prof.n_obs == 2 and not np.allclose(prof.layers["delta"][0], prof.layers["delta"][1])
    assert prof.obs["applicability"].iloc[0] == pytest.approx(score[0])
    no_smiles = held.copy()
    no_smiles.obs["smiles"] = no_smiles.obs["smiles"].astype(object)
    no_smiles.obs.loc[no_smiles.obs["drug"] == "naproxen", "smiles"] = np.nan
    with pytest.raises(ValueError, match="No SMILES.*naproxen"):
        model.get_delta(no_smiles)


def test_rank_drugs(trained):
    model, _ = trained
    q = pd.Series(
        model.get_perturbation_profiles(["ibuprofen"], covariates={"cell_line": "line0"}).layers["delta"][-1],
        index=model.var_names_,
    )
    top = model.rank_drugs(q, cell_line="line0", k=5, method="profile")
    assert list(top.columns) == ["rank", "drug", "score", "applicability", "seen"]
    assert top["drug"].iloc[0] == "ibuprofen"  # its own predicted profile correlates perfectly
    assert top["score"].iloc[0] == pytest.approx(1.0, abs=1e-5)
    assert (np.diff(top["score"]) <= 0).all() and len(top) == 5
    both = model.rank_drugs(
        q, cell_line="line0", candidates={"aspirin": _EXAMPLE_DRUGS["aspirin"], "new": "CCOC(=O)c1ccccc1"}
    )
    assert set(both["drug"]) == {"aspirin", "new"} and both.set_index("drug").loc["new", "seen"] == np.False_
    lists = model.rank_drugs({"up": ["G1", "G2"], "down": ["G3"]}, cell_line="line1", k=3, method="embedding")
    assert len(lists) == 3
    with pytest.raises(ValueError, match="cell_line"):
        model.rank_drugs(q, k=3)
    with pytest.raises(ValueError, match="not seen in training"):
        model.rank_drugs(q, cell_line="line0", candidates=["naproxen"])


def test_save_load_identical(trained, tmp_path):
    model, full = trained
    model.save(tmp_path / "m")
    loaded = sp.models.DrugResponseTransformer.load(tmp_path / "m")
    held = full[full.obs["drug"].isin(HELD_OUT)].copy()
    np.testing.assert_allclose(loaded.get_delta(held), model.get_delta(held), rtol=1e-5, atol=1e-6)
    q = model.get_delta(held)[:1]
    pd.testing.assert_frame_equal(
        loaded.get_drug_scores(q, cell_line="line1"), model.get_drug_scores(q, cell_line="line1"), atol=1e-5
    )
    shuffled = held[:, held.var_names[::-1]].copy()
    np.testing.assert_allclose(loaded.get_delta(shuffled), model.get_delta(held), rtol=1e-5, atol=1e-6)


def test_mudata_and_gene_subset():
    md = pytest.importorskip("mudata")
    adata = _data()
    fp = sp.pp.drug_features(
        dict(zip(adata.obs["drug"].astype(str), adata.obs["smiles"], strict=False)), n_bits=64
    )
    drug_mod = sp.pp._drugs.AnnData(
        fp.loc[adata.obs["drug"].astype(str)].to_numpy(), obs=pd.DataFrame(index=adata.obs_names)
    )
    mdata = md.MuData({"rna": adata, "drug": drug_mod})
    sp.models.DrugResponseTransformer.setup_mudata(
        mdata, modality="rna", drug_modality="drug", perturbation_key="drug", cell_line_key="cell_line"
    )
    model = sp.models.DrugResponseTransformer(mdata, genes=["G3", "G1", "G7"], **SMALL)
    model.train(**{**FIT, "max_epochs": 1})
    assert model.var_names_ == ["G3", "G1", "G7"]
    assert model.get_delta(mdata).shape == (mdata.n_obs, 3)


def test_setup_errors():
    adata = _data()
    with pytest.raises(ValueError, match="exactly one of"):
        sp.models.DrugResponseTransformer.setup_anndata(adata, perturbation_key="drug")
    with pytest.raises(ValueError, match="control='DMSO'"):
        sp.models.DrugResponseTransformer.setup_anndata(
            adata, perturbation_key="drug", smiles_key="smiles", control="DMSO"
        )
    adata.obs["smiles"] = adata.obs["smiles"].astype(str).where(adata.obs["drug"] != "caffeine", "C1CC")
    _setup(adata)
    with pytest.raises(ValueError, match="caffeine"):
        sp.models.DrugResponseTransformer(adata, **SMALL)


def test_info_nce_and_warmup():
    from scpredict.models._drug_response import DrugResponsePlan
    from scpredict.module._drug_response import DrugResponseModule

    module = DrugResponseModule(4, 8, 1, control_mean=torch.zeros(1, 4), d_model=8, n_heads=2, n_layers=1)
    z = torch.nn.functional.normalize(torch.randn(3, 5), dim=-1)
    ids = torch.tensor([0, 1, 2])
    aligned = module.info_nce(z, z, ids)
    shuffled = module.info_nce(z, z[[1, 2, 0]], ids)
    assert aligned < shuffled
    assert module.info_nce(z, z, torch.tensor([4, 4, 4])) == 0  # one drug: no negatives
    plan = DrugResponsePlan(module, rank_weight=2.0, warmup_epochs=4)
    assert [plan.rank_weight_at(e) for e in (0, 2, 4, 9)] == [0.0, 1.0, 2.0, 2.0]
    assert DrugResponsePlan(module, rank_weight=2.0, warmup_epochs=0).rank_weight_at(0) == 2.0


def test_explicit_indices_follow_the_package_split_rule():
    # train_indices alone: no validation rows (the others may be held-out drugs); validation_indices alone:
    # train on every other treated row
    adata = _data()
    _setup(adata)
    model = sp.models.DrugResponseTransformer(adata, **SMALL)
    treated = np.flatnonzero(~model._is_control(adata))
    assert 0 < len(treated) < adata.n_obs
    model.train(**{**FIT, "max_epochs": 1}, train_indices=treated[:20])
    assert model.train_params_["n_train"] == 20 and model.train_params_["n_validation"] == 0
    model.train(**{**FIT, "max_epochs": 1}, validation_indices=treated[:5])
    assert model.train_params_["n_validation"] == 5
    assert model.train_params_["n_train"] == len(treated) - 5
