"""SCORE's Gaussian base denoiser (``gaussian_base``) and the shared train/validation split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import scpredict as sp
from helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from scpredict.module._score import ScoreModule
from scpredict.train import resolve_split, split_indices


def _two_gaussians(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Two 3-d classes with the same mean and different covariances (a mean-only model cannot tell them apart)."""
    g = torch.Generator().manual_seed(seed)
    covs = [torch.diag(torch.tensor([4.0, 0.25, 1.0])), torch.diag(torch.tensor([0.25, 4.0, 1.0]))]
    xs = [torch.randn(n, 3, generator=g) @ torch.linalg.cholesky(c).T for c in covs]
    return torch.cat(xs), torch.cat([torch.zeros(n), torch.ones(n)]).long(), covs


def test_gaussian_eps_is_the_exact_posterior_mean_of_the_noise():
    x, y, _ = _two_gaussians()
    m = ScoreModule(3, 2, n_hidden=16, n_layers=1, gaussian_base=True)
    m.set_class_gaussians(x, y, shrinkage=0.0)
    xt = torch.randn(5, 3)
    t = torch.tensor([10, 200, 400, 700, 990])
    for k in range(2):
        zk = x[y == k].double()
        mu, cov = zk.mean(0), torch.cov(zk.T, correction=0)
        a = m.schedule.alphas_cumprod[t].double()[:, None]
        rhs = (xt.double() - a.sqrt() * mu).unsqueeze(-1)
        mat = a[:, :, None] * cov + (1 - a)[:, :, None] * torch.eye(3, dtype=torch.float64)
        want = (1 - a).sqrt() * torch.linalg.solve(mat, rhs).squeeze(-1)
        got = m.gaussian_eps(xt, t, torch.full((5,), k))
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    # the untrained network adds zero, and the all-classes path equals one forward per class
    torch.testing.assert_close(
        m(xt, t, torch.zeros(5, dtype=torch.long)), m.gaussian_eps(xt, t, torch.zeros(5))
    )
    both = m._eps_all_classes(xt, 300)
    for k in range(2):
        torch.testing.assert_close(both[:, k], m(xt, torch.full((5,), 300), torch.full((5,), k)))


def test_untrained_gaussian_base_classifies_by_covariance_and_plain_mlp_does_not():
    x, y, _ = _two_gaussians()
    xq, yq, covs = _two_gaussians(seed=1)
    g = torch.Generator().manual_seed(0)
    acc = {}
    for base in (False, True):
        torch.manual_seed(0)
        m = ScoreModule(3, 2, n_hidden=16, n_layers=1, gaussian_base=base).eval()
        if base:
            m.set_class_gaussians(x, y)
        err = m.class_errors(xq, n_eval_timesteps=20, n_noise=4, generator=g)
        acc[base] = float((err.argmin(1) == yq).float().mean())
    # close to the Bayes classifier (the true class likelihoods: 0.845 here) from the start
    lp = torch.stack(
        [torch.distributions.MultivariateNormal(torch.zeros(3), c).log_prob(xq) for c in covs], 1
    )
    bayes = float((lp.argmax(1) == yq).float().mean())
    assert acc[True] > bayes - 0.03
    assert acc[False] < 0.65  # an untrained network outputs zero for every class: no information


def test_rare_class_covariance_is_shrunk_towards_the_pooled_one():
    x, y, _ = _two_gaussians()
    x = torch.cat([x, torch.tensor([[0.5, 0.5, 0.5]])])
    y = torch.cat([y, torch.tensor([2])])  # a class with a single cell: its own covariance is zero
    m = ScoreModule(3, 3, gaussian_base=True)
    m.set_class_gaussians(x, y)
    assert torch.all(m.g_evals[2] > 0.5)  # mostly the pooled covariance (eigenvalues about 2.1, 2.1, 1)
    torch.testing.assert_close(m.g_mean[2], torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="gaussian_base=True"):
        ScoreModule(3, 3).set_class_gaussians(x, y)


def test_score_classifier_with_gaussian_base_trains_saves_and_old_saves_load(tmp_path):
    adata = sp.datasets.synthetic_celltypes(n_cells=300, n_genes=60)
    sp.models.ScoreClassifier.setup_anndata(adata, labels_key="cell_type")
    model = sp.models.ScoreClassifier(adata, n_hidden=32, gaussian_base=True)
    model.train(max_epochs=2, progress_bar="none", logger=None, enable_checkpointing=False)
    proba = model.get_probabilities(adata)
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    assert (np.asarray(model.classes_)[proba.argmax(1)] == truth).mean() > 0.9
    means = model.module.score.g_mean[: len(model.classes_)]
    assert float(means.abs().sum()) > 0  # fitted from the training embeddings, not left at zero
    model.save(tmp_path / "m")
    loaded = sp.models.ScoreClassifier.load(tmp_path / "m", adata=adata)
    np.testing.assert_allclose(loaded.get_probabilities(adata), proba, atol=1e-6)
    # a save from before the option existed (no "gaussian_base" in its init parameters) loads without it
    plain = sp.models.ScoreClassifier(adata, n_hidden=32, gaussian_base=False)
    plain.train(max_epochs=1, progress_bar="none", logger=None, enable_checkpointing=False)
    plain.save(tmp_path / "old")
    meta_path = tmp_path / "old" / "model.json"
    meta = json.loads(meta_path.read_text())
    del meta["init_params"]["gaussian_base"]
    meta_path.write_text(json.dumps(meta))
    old = sp.models.ScoreClassifier.load(tmp_path / "old", adata=adata)
    assert not old.module.score.gaussian_base
    np.testing.assert_allclose(old.get_probabilities(adata), plain.get_probabilities(adata), atol=1e-6)


def test_resolve_split_is_the_one_split_of_train():
    tr, va = resolve_split(20, train_size=0.7, seed=3)
    t2, v2 = split_indices(20, train_size=0.7, validation_size=None, seed=3)
    np.testing.assert_array_equal(tr, t2)
    np.testing.assert_array_equal(va, v2)
    tr, va = resolve_split(6, train_indices=[0, 2], train_size=0.9, seed=0)
    np.testing.assert_array_equal(tr, [0, 2])
    assert va.size == 0  # the rest may be test cells: no validation unless asked for
    tr, va = resolve_split(6, train_indices=[0, 2], validation_indices=[5], train_size=0.9, seed=0)
    np.testing.assert_array_equal(va, [5])


def test_score_without_validation_cells_warns_that_calibration_saw_the_training_cells():
    adata = sp.datasets.synthetic_celltypes(n_cells=200, n_genes=40)
    sp.models.ScoreClassifier.setup_anndata(adata, labels_key="cell_type")
    model = sp.models.ScoreClassifier(adata, n_hidden=16, n_layers=1, n_eval_timesteps=4)
    fast = {"max_epochs": 1, "progress_bar": "none", "logger": None, "enable_checkpointing": False}
    with pytest.warns(UserWarning, match="validation_indices"):
        model.train(train_indices=np.arange(150), **fast)
    assert model.train_params_["n_validation"] == 0
