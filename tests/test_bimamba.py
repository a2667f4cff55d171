"""BiMambaPredictor / TransformerPredictor: the perturbation-model contract on small synthetic data."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from tests.helpers import assert_adata_equal

import scpredict as sp
from scpredict.models._perturbation_base import PERTURBATION_REGISTRY_KEY, UnknownPerturbationError

SMALL = {
    "d_model": 16,
    "n_layers": 1,
    "gene_identity_dim": 8,
    "position_dim": 8,
    "n_frequencies": 4,
    "cond_dim": 16,
}


def _gene_labelled(kind="log1p", n_cells=240, n_genes=30, seed=0):
    """Synthetic screen whose perturbation labels are the target genes (P3 targets gene G0003)."""
    adata = sp.datasets.synthetic_perturbation(
        n_cells=n_cells, n_genes=n_genes, n_perturbations=6, n_combinations=3, kind=kind, seed=seed
    )
    rename = lambda lab: "+".join(f"G{int(t[1:]):04d}" for t in lab.split("+")) if lab != "control" else lab  # noqa: E731
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str).map(rename).astype("category")
    return adata


@pytest.fixture(scope="module")
def trained():
    import scpredict as sp_

    sp_.settings.seed = 0
    adata = _gene_labelled()
    sp.models.BiMambaPredictor.setup_anndata(adata, perturbation_key="perturbation")
    model = sp.models.BiMambaPredictor(adata, **SMALL)
    model.train(max_epochs=2, progress_bar="none", logger=None, enable_checkpointing=False)
    return adata, model


def test_trains_and_predicts_with_history(trained):
    adata, model = trained
    for key in ("train_loss", "validation_loss", "validation_r2", "train_r2"):
        assert key in model.history and len(model.history[key]) == 2
    ad = adata.copy()
    model.predict(ad, key_added="bm")
    assert ad.layers["bm"].shape == ad.shape and np.isfinite(ad.layers["bm"]).all()
    assert ad.uns["bm"]["model"] == "BiMambaPredictor"
    # cells of one condition share one profile; different conditions differ
    lab = ad.obs["perturbation"].astype(str).to_numpy()
    ctrl = ad.layers["bm"][lab == "control"]
    np.testing.assert_allclose(ctrl, np.broadcast_to(ctrl[0], ctrl.shape), rtol=1e-5)


def test_unseen_combination_and_gene_target_predicted(trained):
    _, model = trained
    seen = set(model.perturbations_)
    singles = sorted(p for p in seen if "+" not in p and p != "control")
    combo = f"{singles[0]}+{singles[-1]}"
    assert combo not in seen
    unseen_gene = next(g for g in model.var_names_ if g not in seen and g not in model.target_vocab_)
    prof = model.get_perturbation_profiles([combo, unseen_gene, "control"])
    assert prof.shape == (3, model.n_vars) and np.isfinite(prof.X).all()
    assert not np.allclose(prof.X[0], prof.X[2])


def test_unseen_target_outside_gene_vocabulary_is_an_actionable_error(trained):
    adata, model = trained
    ad = adata.copy()
    ad.obs["perturbation"] = ad.obs["perturbation"].cat.add_categories(["NOTAGENE+G0001"])
    ad.obs.iloc[0, ad.obs.columns.get_loc("perturbation")] = "NOTAGENE+G0001"
    before = ad.copy()
    with pytest.raises(UnknownPerturbationError, match=re.escape("NOTAGENE+G0001")) as err:
        model.predict(ad, key_added="bm")
    assert "genes of the model" in str(err.value)
    assert_adata_equal(ad, before)


def test_save_load_roundtrip_and_shuffled_genes(trained, tmp_path):
    adata, model = trained
    model.save(tmp_path / "bm")
    loaded = sp.models.BiMambaPredictor.load(tmp_path / "bm")
    perts = ["control", *sorted(set(model.perturbations_) - {"control"})[:3]]
    np.testing.assert_allclose(
        loaded.get_perturbation_profiles(perts).X,
        model.get_perturbation_profiles(perts).X,
        rtol=1e-5,
        atol=1e-6,
    )
    ad = adata.copy()
    model.predict(ad, key_added="ref")
    perm = np.random.default_rng(0).permutation(ad.n_vars)
    shuffled = ad[:, perm].copy()
    loaded.predict(shuffled, key_added="bm")
    np.testing.assert_allclose(shuffled.layers["bm"], ad.layers["ref"][:, perm], rtol=1e-5, atol=1e-6)


def test_gene_order_follows_genomic_positions():
    adata = _gene_labelled(n_cells=120)
    names = list(adata.var_names)
    table = pd.DataFrame(
        {
            "symbol": names[::-1],
            "chromosome": ["chr2"] * 10 + ["chr1"] * (len(names) - 10),
            "start": np.arange(len(names)) * 100,
            "end": np.arange(len(names)) * 100 + 50,
        }
    )
    sp.pp.annotate_gene_positions(adata, table.iloc[:-2])  # two genes without a position
    sp.models.BiMambaPredictor.setup_anndata(adata, perturbation_key="perturbation")
    model = sp.models.BiMambaPredictor(adata, **SMALL)
    order = [model.var_names_[i] for i in model.extra_arrays_["order"]]
    chrom = adata.var["chromosome"].astype(str)
    assert list(chrom[order]) == sorted(chrom[order], key=["chr1", "chr2", "unknown"].index)
    starts = adata.var.loc[order, "start"].to_numpy()
    on_chr1 = (chrom[order] == "chr1").to_numpy()
    assert np.all(np.diff(starts[on_chr1]) > 0)


def test_seeded_runs_are_identical():
    outs = []
    for _ in range(2):
        sp.settings.seed = 3
        adata = _gene_labelled(n_cells=120)
        sp.models.BiMambaPredictor.setup_anndata(adata, perturbation_key="perturbation")
        model = sp.models.BiMambaPredictor(adata, **SMALL)
        model.train(max_epochs=1, progress_bar="none", logger=None, enable_checkpointing=False)
        outs.append(model.get_perturbation_profiles(["control", "G0001"]).X)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_probabilistic_head_rejects_log_data():
    adata = _gene_labelled(n_cells=120)  # X is log1p; counts live in layers['counts']
    sp.models.BiMambaPredictor.setup_anndata(adata, perturbation_key="perturbation", counts_layer="X")
    before = adata.copy()
    with pytest.raises(ValueError, match="not integers"):
        sp.models.BiMambaPredictor(adata, head="probabilistic", **SMALL)
    assert_adata_equal(adata, before)


def test_linear_head_warns_on_raw_counts():
    adata = _gene_labelled(kind="counts", n_cells=120)
    sp.models.BiMambaPredictor.setup_anndata(adata, perturbation_key="perturbation")
    with pytest.warns(UserWarning, match="head='probabilistic'"):
        sp.models.BiMambaPredictor(adata, **SMALL)


def test_probabilistic_head_trains_on_found_counts_and_writes_nb_mean():
    adata = _gene_labelled(n_cells=160)  # counts found automatically in layers['counts']
    sp.models.BiMambaPredictor.setup_anndata(adata, perturbation_key="perturbation")
    model = sp.models.BiMambaPredictor(adata, head="probabilistic", **SMALL)
    model.train(max_epochs=1, progress_bar="none", logger=None, enable_checkpointing=False)
    assert "train_nll" in model.history
    model.predict(adata, key_added="nb")
    lib = np.asarray(adata.layers["counts"].sum(1)).ravel()
    pred_lib = adata.layers["nb"].sum(1)
    assert np.corrcoef(lib, pred_lib)[0, 1] > 0.9  # the NB mean scales with each cell's library size
    prof = model.get_perturbation_profiles(["control"])
    assert {"nb_mean", "dispersion"} <= set(prof.layers) and (prof.layers["dispersion"] > 0).all()


def test_transformer_predictor_same_contract():
    adata = _gene_labelled(n_cells=120)
    sp.models.TransformerPredictor.setup_anndata(adata, perturbation_key="perturbation")
    model = sp.models.TransformerPredictor(adata, n_heads=2, **SMALL)
    assert any("self_attn" in k for k in model.module.state_dict())
    model.train(max_epochs=1, progress_bar="none", logger=None, enable_checkpointing=False)
    model.predict(adata, key_added="tf")
    assert adata.layers["tf"].shape == adata.shape and adata.uns["tf"]["model"] == "TransformerPredictor"


def test_backbone_runs_once_per_condition():
    import torch

    adata = _gene_labelled(n_cells=120)
    sp.models.BiMambaPredictor.setup_anndata(adata, perturbation_key="perturbation")
    model = sp.models.BiMambaPredictor(adata, **SMALL)
    seen = []
    hook = model.module.layers[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    codes = pd.Index(model.perturbations_).get_indexer(adata.obs["perturbation"].astype(str))
    batch = {
        "X": torch.as_tensor(
            np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X), dtype=torch.float32
        ),
        "perturbation": torch.as_tensor(codes[:, None], dtype=torch.float32),
    }
    model.module.loss(batch)
    model.module.loss(batch, per_cell=True)
    hook.remove()
    assert seen == [len(set(codes)), len(codes)]


def test_linear_head_predictions_are_clipped_at_zero(trained):
    import copy

    import torch

    adata, model = trained
    clipped = copy.deepcopy(model)
    with torch.no_grad():
        clipped.module.gene_offset[:5] = -10.0  # the unbounded head now says "negative log-expression"
    perts = ["control", *sorted(set(model.perturbations_) - {"control"})[:2]]
    prof = clipped.get_perturbation_profiles(perts).X
    assert (prof >= 0).all() and np.all(prof[:, :5] == 0)
    np.testing.assert_allclose(prof[:, 5:], model.get_perturbation_profiles(perts).X[:, 5:], rtol=1e-6)
    ad = adata[:40].copy()
    clipped.predict(ad, key_added="bm")
    assert ad.layers["bm"].min() >= 0 and np.all(ad.layers["bm"][:, :5] == 0)


def test_additive_composition_sums_single_condition_vectors(trained):
    import torch

    _, model = trained
    singles = sorted(p for p in model.perturbations_ if "+" not in p and p != "control")
    combo = f"{singles[0]}+{singles[-1]}"
    assert combo not in model.perturbations_
    labels = [singles[0], singles[-1], combo]
    pert = torch.tensor(pd.Index(model.perturbations_).get_indexer(labels), dtype=torch.long)
    module = model.module.eval()
    with torch.no_grad():
        v = module.condition_vector(pert, model._encode_targets(labels))
        torch.testing.assert_close(v[2], v[0] + v[1])
        # the pooled encoder is not additive (an MLP of the summed targets)
        module.composition = "pooled"
        p = module.condition_vector(pert, model._encode_targets(labels))
        module.composition = "additive"
    assert not torch.allclose(p[2], p[0] + p[1], atol=1e-3)


def test_ema_weights_are_the_moving_average_of_the_steps():
    import lightning.pytorch as pl
    import torch

    sp.settings.seed = 0
    adata = _gene_labelled(n_cells=120)
    sp.models.BiMambaPredictor.setup_anndata(adata, perturbation_key="perturbation")
    model = sp.models.BiMambaPredictor(adata, **SMALL)
    snaps = []

    class Snap(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            snaps.append(pl_module.module.head.weight.detach().clone())

    with pytest.raises(ValueError, match="ema_decay"):
        model.train(max_epochs=1, ema_decay=1.5)
    model.train(
        max_epochs=2,
        batch_size=32,
        ema_decay=0.5,
        validation_indices=np.array([], dtype=int),
        train_indices=np.arange(adata.n_obs),
        callbacks=[Snap()],
        progress_bar="none",
        logger=None,
        enable_checkpointing=False,
    )
    assert len(snaps) > 3
    expected = snaps[0]
    for w in snaps[1:]:
        expected = 0.5 * expected + 0.5 * w
    torch.testing.assert_close(model.module.head.weight, expected)
    assert not torch.allclose(model.module.head.weight, snaps[-1])


def test_unseen_combination_rules(trained):
    _, model = trained
    singles = sorted(p for p in model.perturbations_ if "+" not in p and p != "control")
    combo = f"{singles[0]}+{singles[-1]}"
    labels = [combo, "control", singles[0], singles[-1]]
    table = pd.DataFrame({PERTURBATION_REGISTRY_KEY: labels})
    assert model.unseen_combination == "additive"
    out = model._module_profiles(table)["mean"]
    # additive rule: Δ(A+B) = Δ(A) + Δ(B), each single predicted by the backbone
    np.testing.assert_allclose(out[0], out[1] + (out[2] - out[1]) + (out[3] - out[1]), rtol=1e-5, atol=1e-6)
    joint = model._joint_profiles(table)["mean"]
    np.testing.assert_allclose(joint[1:], out[1:], rtol=1e-6)  # seen labels are predicted directly
    assert not np.allclose(joint[0], out[0], atol=1e-4)  # one backbone pass on the composed condition
    with pytest.raises(ValueError, match="unseen_combination"):
        sp.models.BiMambaPredictor(model.adata, unseen_combination="bogus", **SMALL)
