"""ContextCycleAE: module structure, cycle training, counterfactuals, contributions, streaming data."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import numpy as np
import pytest
import torch

import scpredict as sp
from scpredict.module._cycle_ae import ContextCycleAEModule

FIELDS = ["cell_type", "assay"]


def _data(n_cells: int = 240, n_genes: int = 30):
    adata = sp.datasets.synthetic_contexts(n_cells=n_cells, n_genes=n_genes, fields=FIELDS, seed=1)
    sp.models.ContextCycleAE.setup_anndata(adata, context_keys=FIELDS)
    return adata


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One model trained for two epochs (CSV + TensorBoard logs) shared by the read-only tests."""
    sp.settings.seed = 0
    old = sp.settings.progress_bar
    sp.settings.progress_bar = "none"
    adata = _data()
    model = sp.models.ContextCycleAE(adata, n_latent=8, n_latent_base=16, n_hidden_ffn=16)
    # one row far below zero, as if an optimiser step had overshot: only the projection can bring it back
    with torch.no_grad():
        model.module.base_weight[0] = -1.0
    root = tmp_path_factory.mktemp("logs")
    model.train(max_epochs=2, lr=1e-2, batch_size=32, default_root_dir=root, enable_checkpointing=False)
    sp.settings.progress_bar = old
    return model, adata, root


# ---------------------------------------------------------------------------------------------- module
def test_base_is_one_tied_bias_free_tensor():
    m = ContextCycleAEModule(20, [3, 2], n_latent_base=5, n_latent=4)
    base_params = [n for n, _ in m.named_parameters() if n.startswith("base")]
    assert base_params == ["base_weight"]
    x = torch.rand(7, 20)
    hidden = m.encode(x)
    np.testing.assert_allclose(hidden["base"].detach(), (x @ m.base_matrix.T).detach(), rtol=1e-6)
    out = m(x, torch.zeros(7, 2, dtype=torch.long))
    np.testing.assert_allclose(out["base"].detach(), (hidden["base"] @ m.base_matrix).detach(), rtol=1e-5)
    assert out["base"].detach().abs().sum() > 0
    # the decoder is the encoder: perturbing the one tensor changes both paths
    with torch.no_grad():
        m.base_weight.mul_(2)
    np.testing.assert_allclose(
        m(x, torch.zeros(7, 2, dtype=torch.long))["base"].detach(), 4 * out["base"].detach(), rtol=1e-5
    )
    assert torch.all(m.base_weight >= 0)
    assert not torch.equal(m.decoders[0].weight, m.encoders[0].weight.T)  # field heads are untied


def test_each_context_ffn_sees_only_its_category():
    torch.manual_seed(0)
    m = ContextCycleAEModule(12, [3], n_latent=4, n_hidden_ffn=6)
    pool = m.ffn_pools[0]
    seen: dict[int, list[torch.Tensor]] = {}
    for k, ffn in enumerate(pool.ffns):
        ffn.register_forward_hook(lambda mod, inp, out, k=k: seen.setdefault(k, []).append(inp[0].detach()))
    z = torch.randn(10, 4)
    codes = torch.tensor([2, 0, 2, 1, 0, 0, 2, 1, 2, 0])
    out = pool(z, codes)
    for k in range(3):
        rows = torch.cat(seen[k])
        expected = z[codes == k]
        assert rows.shape == expected.shape
        torch.testing.assert_close(rows, expected)  # exactly that category's cells, nobody else's
    for i in range(10):  # reassembled in the original order
        torch.testing.assert_close(out[i], pool.ffns[int(codes[i])](z[i : i + 1])[0])
    # absent categories are not run at all
    seen.clear()
    pool(z[:2], torch.tensor([1, 1]))
    assert set(seen) == {1}


def test_head_scale_multiplies_field_decoders():
    torch.manual_seed(0)
    a = ContextCycleAEModule(15, [2], head_scale=1.0)
    b = ContextCycleAEModule(15, [2])
    b.load_state_dict(a.state_dict())
    x, c = torch.rand(4, 15), torch.tensor([[0], [1], [0], [1]])
    assert b.head_scale == pytest.approx(0.0159)
    torch.testing.assert_close(b(x, c)["fields"][0], 0.0159 * a(x, c)["fields"][0])
    out = b(x, c)
    torch.testing.assert_close(out["x_hat"], out["base"] + out["fields"][0])


# ---------------------------------------------------------------------------------------------- model
def test_weights_stay_non_negative_after_training(trained):
    model, _, _ = trained
    w = model.module.base_weight.detach()
    assert torch.all(w >= 0)  # 14 Adam steps of lr 1e-2 cannot lift -1 to >= 0; the projection must


def test_history_logs_each_loss_and_head(trained):
    model, _, root = trained
    for name in [
        "train_loss",
        "train_loss_recon",
        "train_loss_cycle",
        "train_loss_integration",
        "train_loss_target",
        "train_loss_match",
        "train_loss_change",
        "train_loss_classifier",
        "train_l2_base",
        "train_l2_cell_type",
        "train_l2_assay",
        "train_l2_assay=assay0",
        "validation_loss",
    ]:
        assert name in model.history, name
        assert len(model.history[name]) == 2
    csv = next(root.rglob("metrics.csv"))
    header = csv.read_text().splitlines()[0].split(",")
    assert {"train_loss_target", "train_l2_cell_type", "train_loss_integration"} <= set(header)
    assert any(root.rglob("events.out.tfevents*"))


def test_counterfactual_to_source_reproduces_reconstruction(trained):
    model, adata, _ = trained
    sub = adata[adata.obs["assay"] == "assay0"].copy()
    model.predict(sub, key_added="rec")
    model.counterfactual(sub, target={"assay": "assay0"}, key_added="cf_same")
    np.testing.assert_allclose(sub.layers["cf_same"], sub.layers["rec"], rtol=1e-5, atol=1e-6)
    model.counterfactual(sub, target={"assay": "assay1"}, key_added="cf_other")
    assert np.abs(sub.layers["cf_other"] - sub.layers["rec"]).max() > 1e-4
    assert sub.uns["cf_other"]["params"]["target"] == {"assay": "assay1"}
    # a combination of fields; unnamed fields keep their own value
    both = model.get_counterfactual(sub, target={"assay": "assay1", "cell_type": "cell_type0"})
    assert both.shape == sub.shape and np.isfinite(both).all()


def test_residual_counterfactual_adds_the_heads_change_to_the_input(trained):
    model, adata, _ = trained
    view = adata[adata.obs["assay"] == "assay0"]  # a view is accepted as input
    sub = view.copy()
    x = np.asarray(sub.X, dtype=np.float32)
    np.testing.assert_allclose(model.get_counterfactual(view, target={}, residual=True), x, atol=1e-5)
    change = model.get_counterfactual(sub, target={"assay": "assay1"}) - model.get_counterfactual(
        sub, target={}
    )
    res = model.get_counterfactual(sub, target={"assay": "assay1"}, residual=True)
    np.testing.assert_allclose(res, x + change, rtol=1e-4, atol=1e-4)
    assert np.abs(change).max() > 1e-4
    model.counterfactual(sub, target={"assay": "assay1"}, residual=True, key_added="cf_res")
    assert sub.uns["cf_res"]["params"]["residual"] is True


def test_match_loss_compares_generated_and_real_means_per_combination():
    x_t = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 10.0], [7.0, 7.0]])
    means = torch.tensor([[2.0, 3.0], [0.0, 0.0]])
    rows = torch.tensor([0, 0, -1, 1])  # cell 2 targets a combination with no real cells
    loss = ContextCycleAEModule.match_loss(x_t, means, rows)
    # combo 0: generated mean (2, 3) = real mean; combo 1: (7, 7) vs (0, 0) -> 49, weight 1 of 3 cells
    assert loss.item() == pytest.approx(49.0 / 3)
    assert ContextCycleAEModule.match_loss(x_t, None, None).item() == 0.0


def test_plan_keeps_the_exact_real_mean_of_each_combination():
    from scpredict.train._cycle_plan import CycleTrainingPlan

    m = ContextCycleAEModule(3, [2, 3])
    plan = CycleTrainingPlan(m, field_keys=["a", "b"])
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3, generator=gen)
    codes = torch.stack(
        [torch.randint(0, 2, (40,), generator=gen), torch.randint(0, 3, (40,), generator=gen)], 1
    )
    codes[(codes == torch.tensor([1, 2])).all(1), 1] = 1  # no real cell of combination (1, 2)
    for part in torch.arange(40).split(13):  # batches of 13, 13, 13, 1
        plan._update_means(x[part], codes[part])
    means, rows = plan._match_targets(codes)
    for i in range(40):
        same = (codes == codes[i]).all(1)
        torch.testing.assert_close(means[rows[i]], x[same].mean(0))
    assert plan._match_targets(torch.tensor([[1, 2]]))[1].item() == -1  # (1, 2) has no real cell


def test_shuffled_genes_give_the_same_counterfactual(trained):
    model, adata, _ = trained
    perm = np.random.default_rng(0).permutation(adata.n_vars)
    shuffled = adata[:, perm].copy()
    a = model.get_counterfactual(adata, target={"assay": "assay1"})
    b = model.get_counterfactual(shuffled, target={"assay": "assay1"})
    np.testing.assert_allclose(b, a[:, perm], rtol=1e-5, atol=1e-6)


def test_unknown_category_is_rejected_naming_field_and_value(trained):
    model, adata, _ = trained
    before = adata.copy()
    with pytest.raises(ValueError, match=r"assay.*'assay9'"):
        model.counterfactual(adata, target={"assay": "assay9"}, key_added="bad")
    with pytest.raises(KeyError, match="sex"):
        model.counterfactual(adata, target={"sex": "F"}, key_added="bad")
    new = adata.copy()
    new.obs["cell_type"] = new.obs["cell_type"].astype(str)
    new.obs.iloc[0, new.obs.columns.get_loc("cell_type")] = "mystery"
    with pytest.raises(ValueError, match=r"cell_type.*mystery"):
        model.counterfactual(new, target={"assay": "assay0"}, key_added="bad")
    assert "bad" not in adata.layers and "bad" not in new.layers
    assert set(adata.layers) == set(before.layers) and set(adata.uns) == set(before.uns)


def test_contributions_are_additive_and_summarised(trained):
    model, adata, _ = trained
    sub = adata[:60].copy()
    model.contributions(sub, key_added="contrib")
    model.predict(sub, key_added="rec")
    parts = model.get_contributions(sub)
    np.testing.assert_allclose(
        parts["base"] + parts["cell_type"] + parts["assay"], sub.layers["rec"], rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(sub.obsm["contrib_assay"], parts["assay"])
    norms = sub.obsm["contrib"]
    assert list(norms.columns) == ["base", "cell_type", "assay"]
    np.testing.assert_allclose(norms["assay"], np.linalg.norm(parts["assay"], axis=1), rtol=1e-5)
    entry = sub.uns["contrib"]
    assert set(entry["l2_category"]["cell_type"]) == set(sub.obs["cell_type"].astype(str))
    assert len(entry["history"]["base"]) == 2 and len(entry["history"]["fields"]["assay"]) == 2
    for by in ["field", "category", "epoch"]:
        ax = sp.pl.context_contributions(sub, key="contrib", by=by)
        assert len(ax.patches) + len(ax.lines) > 0
    ax = sp.pl.context_contributions(sub, key="contrib", by="epoch", field="assay")
    assert len(ax.lines) == 2


def test_save_load_round_trip(trained, tmp_path):
    model, adata, _ = trained
    model.save(tmp_path / "m")
    loaded = sp.models.ContextCycleAE.load(tmp_path / "m", adata=adata)
    np.testing.assert_allclose(
        loaded.get_counterfactual(adata, target={"assay": "assay1"}),
        model.get_counterfactual(adata, target={"assay": "assay1"}),
        rtol=1e-6,
    )
    assert loaded.vocab_ == model.vocab_


def test_setup_errors():
    adata = sp.datasets.synthetic_contexts(n_cells=50, n_genes=10, fields=FIELDS)
    with pytest.raises(KeyError, match="sex"):
        sp.models.ContextCycleAE.setup_anndata(adata, context_keys=["sex"])
    with pytest.raises(ValueError, match="duplicates"):
        sp.models.ContextCycleAE.setup_anndata(adata, context_keys=["assay", "assay"])
    with pytest.raises(sp.pp.InputScaleError if hasattr(sp.pp, "InputScaleError") else ValueError):
        sp.models.ContextCycleAE.setup_anndata(adata, context_keys=["assay"], layer="counts")


def test_trains_from_chunk_directory_and_backed_h5ad(tmp_path):
    adata = _data(n_cells=150, n_genes=20)
    sp.data.write_chunks(adata, tmp_path / "chunks", chunk_size=64, obs_keys=FIELDS)
    ds = sp.data.ChunkedDataset(tmp_path / "chunks", batch_size=32)
    template = ds.obs_adata()
    sp.models.ContextCycleAE.setup_anndata(template, context_keys=FIELDS)
    model = sp.models.ContextCycleAE(template, n_latent=4, n_latent_base=8)
    model.train(data=ds, max_epochs=2, logger=None, enable_checkpointing=False)
    assert len(model.history["train_loss"]) == 2 and model.is_trained_
    assert model.get_counterfactual(adata, target={"assay": "assay0"}).shape == adata.shape
    # backed AnnData streams through the same two-level loader
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    model_b = sp.models.ContextCycleAE(backed, n_latent=4, n_latent_base=8)
    model_b.train(max_epochs=1, batch_size=32, chunk_size=50, logger=None, enable_checkpointing=False)
    assert len(model_b.history["train_loss"]) == 1
    assert np.isfinite(model_b.get_counterfactual(backed, target={"assay": "assay1"})).all()


def test_lazy_chunk_directory_reads_real_expression(tmp_path):
    """A lazy AnnData over a chunk directory gives the model the same cells as the in-memory AnnData, in
    training (every cell once per epoch, same values) and in inference (same outputs)."""
    from lightning.pytorch.callbacks import Callback

    adata = _data(n_cells=150, n_genes=20)
    sp.data.write_chunks(adata, tmp_path / "chunks", chunk_size=64, obs_keys=FIELDS)
    lazy = sp.data.read_lazy(tmp_path / "chunks")
    assert sp.data.source_of(lazy) is not None  # the expression is on disk, not in lazy.X

    class Seen(Callback):
        def __init__(self):
            self.rows = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 0:
                self.rows.append(batch["X"].detach().cpu().numpy().copy())

    sp.models.ContextCycleAE.setup_anndata(lazy, context_keys=FIELDS)
    model = sp.models.ContextCycleAE(lazy, n_latent=4, n_latent_base=8)
    seen = Seen()
    model.train(
        max_epochs=1,
        batch_size=50,  # divides 150: no partial batch is dropped
        train_size=1.0,
        logger=None,
        enable_checkpointing=False,
        callbacks=[seen],
    )
    got = np.concatenate(seen.rows)
    want = np.asarray(adata.X, dtype=np.float32)
    assert got.shape == want.shape and np.abs(got).sum() > 0
    order = lambda m: m[np.lexsort(m.T[::-1])]  # noqa: E731
    np.testing.assert_allclose(order(got), order(want), rtol=1e-6)
    # inference through the store equals inference on the in-memory copy (and is not the all-zero input)
    target = {"assay": "assay1"}
    from_disk = model.get_counterfactual(lazy, target=target)
    in_memory = model.get_counterfactual(adata, target=target)
    np.testing.assert_allclose(from_disk, in_memory, rtol=1e-5, atol=1e-6)
    zeros = adata.copy()
    zeros.X = np.zeros(adata.shape, dtype=np.float32)
    assert not np.allclose(from_disk, model.get_counterfactual(zeros, target=target), atol=1e-4)
    parts = model.get_contributions(lazy)
    np.testing.assert_allclose(parts["assay"], model.get_contributions(adata)["assay"], rtol=1e-5, atol=1e-6)


def _train_tiny(callback, **train_kwargs):
    """A small model trained 3 epochs (lr 0.01, 2 batches per epoch) with ``callback`` watching."""
    adata = _data(n_cells=60, n_genes=10)
    model = sp.models.ContextCycleAE(adata, n_latent=4, n_latent_base=4, n_hidden_ffn=4)
    model.train(
        max_epochs=3,
        lr=1e-2,
        batch_size=30,
        logger=None,
        enable_checkpointing=False,
        callbacks=[callback],
        **train_kwargs,
    )
    return model


def test_cosine_schedule_decays_both_learning_rates():
    from lightning.pytorch.callbacks import Callback

    class Rates(Callback):
        def __init__(self):
            self.lrs = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.lrs.append([o.param_groups[0]["lr"] for o in trainer.optimizers])

    rates = Rates()
    model = _train_tiny(rates, plan_kwargs={"lr_schedule": "cosine"})
    np.testing.assert_allclose(np.array(rates.lrs)[:, 0], [1e-2, 0.75e-2, 0.25e-2], rtol=1e-6)
    np.testing.assert_allclose(np.array(rates.lrs)[:, 1], [1e-2, 0.75e-2, 0.25e-2], rtol=1e-6)
    with pytest.raises(ValueError, match="lr_schedule"):
        model.train(max_epochs=1, logger=None, plan_kwargs={"lr_schedule": "linear"})


def test_change_loss_is_the_mean_squared_change_of_moved_cells():
    torch.manual_seed(0)
    m = ContextCycleAEModule(6, [3, 2], n_latent=4)
    own = [torch.randn(5, 6), torch.randn(5, 6)]
    tgt = [own[0].clone(), torch.randn(5, 6)]
    source = torch.tensor([[0, 0], [1, 1], [2, 0], [0, 1], [1, 0]])
    target = source.clone()
    assert m.change_loss(own, tgt, source=source, target=target).item() == 0.0  # nobody moved
    target[:, 1] = 1 - source[:, 1]  # every cell changes field 1; field 0 stays
    tgt[0] = own[0] + 5.0  # a field-0 change of cells that did not move field 0 does not count
    expected = ((tgt[1] - own[1]) ** 2).mean()
    torch.testing.assert_close(m.change_loss(own, tgt, source=source, target=target), expected)
    target[1, 0] = 2  # cell 1 also moves field 0: the mean over fields of each field's moved cells
    expected2 = (expected + ((tgt[0][1] - own[0][1]) ** 2).mean()) / 2
    torch.testing.assert_close(m.change_loss(own, tgt, source=source, target=target), expected2)
    # in the generator loss with its weight, 0 by default
    m.eval()  # no classifier dropout: the two calls see the same target loss
    x = torch.rand(8, 6)
    src = torch.stack([torch.randint(0, 3, (8,)), torch.randint(0, 2, (8,))], 1)
    tg = src.clone()
    tg[:, 1] = 1 - src[:, 1]
    base, _ = m.cycle_losses(x, src, tg)
    weighted, _ = m.cycle_losses(x, src, tg, weights={"change": 1e4})
    assert base.change.item() == 0.0 and weighted.change.item() > 0
    torch.testing.assert_close(weighted.total, base.total + 1e4 * weighted.change)


def test_average_last_keeps_the_mean_of_the_last_epochs_weights():
    from lightning.pytorch.callbacks import Callback

    class Weights(Callback):
        def __init__(self):
            self.states = []

        def on_train_epoch_end(self, trainer, pl_module):
            self.states.append({k: v.detach().clone() for k, v in pl_module.module.state_dict().items()})

    seen = Weights()
    model = _train_tiny(seen, average_last=2)
    state = model.module.state_dict()
    for k, v in state.items():
        torch.testing.assert_close(v, (seen.states[1][k] + seen.states[2][k]) / 2)
        torch.testing.assert_close(model.final_state_[k], seen.states[2][k])
    assert not torch.equal(state["decoders.0.weight"], seen.states[2]["decoders.0.weight"])
    assert torch.all(model.module.base_weight >= 0)
    assert model.train_params_["average_last"] == 2
    with pytest.raises(ValueError, match="average_last"):
        model.train(max_epochs=1, logger=None, average_last=-1)
