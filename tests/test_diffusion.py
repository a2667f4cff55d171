"""Tests for the score-based diffusion stack (noise schedules, samplers, score network, ScoreDiffusion)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from scpredict.nn._diffusion import (
    NoiseSchedule,
    ddim_invert,
    ddim_sample,
    ddpm_sample,
    euler_maruyama_sample,
    sampling_timesteps,
)


# ---------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_tensors_consistent(kind):
    s = NoiseSchedule(200, kind=kind)
    assert s.betas.shape == s.alphas.shape == s.alphas_cumprod.shape == (200,)
    torch.testing.assert_close(s.alphas, 1 - s.betas)
    torch.testing.assert_close(s.alphas_cumprod, torch.cumprod(s.alphas.double(), 0).float())
    assert torch.all(s.betas > 0) and torch.all(s.betas < 1)
    assert torch.all(torch.diff(s.alphas_cumprod) < 0)  # noise increases monotonically
    assert s.alphas_cumprod[-1] < 0.01  # nearly pure noise at T


def test_cosine_schedule_matches_nichol_dhariwal():
    T, off = 1000, 0.008
    s = NoiseSchedule(T, kind="cosine")
    t = torch.arange(1, T + 1, dtype=torch.float64)
    f = lambda u: torch.cos((u / T + off) / (1 + off) * math.pi / 2) ** 2  # noqa: E731
    abar = f(t) / f(torch.zeros(1, dtype=torch.float64))
    # beta clipping at 0.999 only touches the last step
    torch.testing.assert_close(s.alphas_cumprod[:-1], abar[:-1].float(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        NoiseSchedule(10, kind="quadratic")


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_forward_noising_matches_closed_form(kind):
    """Iterating q(x_t | x_{t-1}) step by step gives the closed-form marginal that q_sample draws from."""
    g = torch.Generator().manual_seed(0)
    s = NoiseSchedule(100, kind=kind)
    x0 = torch.tensor([2.0, -1.0, 0.5]).repeat(20000, 1)
    t = 37
    x = x0.clone()
    for i in range(t + 1):
        x = s.alphas[i].sqrt() * x + s.betas[i].sqrt() * torch.randn(x.shape, generator=g)
    closed = s.q_sample(x0, torch.full((x0.shape[0],), t))
    abar = s.alphas_cumprod[t]
    for draws in (x, closed):
        torch.testing.assert_close(draws.mean(0), abar.sqrt() * x0[0], atol=0.03, rtol=0)
        torch.testing.assert_close(draws.var(0), (1 - abar).expand(3), atol=0.03, rtol=0)
    # exact with given noise, and per-sample t broadcast
    noise = torch.randn(4, 3, generator=g)
    tt = torch.tensor([0, 10, 50, 99])
    out = s.q_sample(x0[:4], tt, noise)
    ab = s.alphas_cumprod[tt][:, None]
    torch.testing.assert_close(out, ab.sqrt() * x0[:4] + (1 - ab).sqrt() * noise)
    torch.testing.assert_close(s.predict_x0(out, tt, noise), x0[:4], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s.predict_eps(out, tt, x0[:4]), noise, atol=1e-4, rtol=1e-4)


def test_fractional_alpha_bar_interpolates():
    s = NoiseSchedule(50)
    torch.testing.assert_close(s.alpha_bar(torch.tensor([3.0, 10.0])), s.alphas_cumprod[[3, 10]])
    mid = s.alpha_bar(torch.tensor(3.5))
    assert s.alphas_cumprod[4] < mid < s.alphas_cumprod[3]
    assert s.alpha_bar(torch.tensor(-1.0)).item() == pytest.approx(1.0)


def test_sampling_timesteps():
    s = NoiseSchedule(100)
    steps = sampling_timesteps(s, 10)
    assert steps[0] == s.t_max and steps[-1] == 0 and len(steps) == 10
    assert 90 <= s.t_max < 99  # the last cosine steps (abar ~ 1e-7) are skipped
    assert all(a > b for a, b in zip(steps, steps[1:], strict=False))
    assert sampling_timesteps(s, 50, t_start=9) == list(range(9, -1, -1))


# ---------------------------------------------------------------------------- samplers, exact score
def _gaussian_eps_fn(schedule, mu, sd):
    """Exact noise prediction for data ~ N(mu, sd^2): the samplers must reproduce that distribution."""

    def eps_fn(x, t):
        ab = schedule.alpha_bar(t).reshape(-1, 1)
        var = ab * sd**2 + (1 - ab)
        score = -(x - ab.sqrt() * mu) / var
        return -score * (1 - ab).sqrt()

    return eps_fn


@pytest.mark.parametrize("method", ["ddpm", "ddim", "sde", "ode"])
def test_samplers_with_exact_score_recover_gaussian(method):
    s = NoiseSchedule(200)
    g = torch.Generator().manual_seed(1)
    mu, sd = 3.0, 0.5
    fn = _gaussian_eps_fn(s, mu, sd)
    xT = torch.randn(4000, 1, generator=g)
    if method == "ddpm":
        x = ddpm_sample(fn, s, xT, n_steps=100, generator=g)
    elif method == "ddim":
        x = ddim_sample(fn, s, xT, n_steps=50)
    else:
        x = euler_maruyama_sample(fn, s, xT, n_steps=200, ode=method == "ode", generator=g)
    assert x.mean().item() == pytest.approx(mu, abs=0.08)
    assert x.std().item() == pytest.approx(sd, abs=0.08)


def test_ddim_inversion_roundtrip_exact_score():
    s = NoiseSchedule(200)
    fn = _gaussian_eps_fn(s, 1.0, 0.7)
    x0 = torch.linspace(-1, 3, 50).reshape(-1, 1)
    z = ddim_invert(fn, s, x0, n_steps=100)
    back = ddim_sample(fn, s, z, n_steps=100)
    torch.testing.assert_close(back, x0, atol=0.08, rtol=0)
    # the latent is standardised noise-like (pushed towards N(0, 1))
    assert z.std().item() > 1.0


# ---------------------------------------------------------------------------- score network


def test_score_model_recovers_two_gaussian_mixture():
    from scpredict.module._score_net import ScoreDiffusionModule
    from scpredict.nn._diffusion import sample

    torch.manual_seed(0)
    m = ScoreDiffusionModule(1, [], n_steps=100, schedule="linear", n_hidden=64, n_layers=2, n_emb=32)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    n_it = 300
    lr = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=n_it)
    empty = torch.zeros(512, 0, dtype=torch.long)
    for _ in range(n_it):
        comp = torch.randint(0, 2, (512,))
        x = (comp * 4.0 - 2.0 + 0.3 * torch.randn(512)).reshape(-1, 1)
        loss = m.score_loss(x, empty)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr.step()
    m.eval()
    with torch.no_grad():
        for method in ("ddpm", "ode"):
            x = sample(
                m.guided_eps(None), m.schedule, torch.randn(2000, 1), method=method, clip_x0=5.0
            ).squeeze()
            left, right = x[x < 0], x[x >= 0]
            assert 0.35 < len(left) / len(x) < 0.65, method
            assert left.median().item() == pytest.approx(-2.0, abs=0.2), method
            assert right.median().item() == pytest.approx(2.0, abs=0.2), method


# ---------------------------------------------------------------------------- ScoreDiffusion model
def _data(n_cells=240, n_genes=30):
    import scpredict as sp

    a = sp.datasets.synthetic_perturbation(
        n_cells=n_cells, n_genes=n_genes, n_perturbations=2, n_combinations=0, n_cell_lines=2, seed=1
    )
    sp.models.ScoreDiffusion.setup_anndata(
        a, condition_keys=["cell_line", "perturbation"], perturbation_key="perturbation"
    )
    return a


def _fit(a, **kw):
    import scpredict as sp

    params = {"n_hidden": 64, "n_layers": 2, "n_emb": 16, "n_steps": 100, **kw}
    m = sp.models.ScoreDiffusion(a, **params)
    m.train(max_epochs=40, ae_epochs=20, batch_size=32, lr=2e-3, logger=None, enable_checkpointing=False)
    return m


@pytest.fixture(scope="module")
def trained():
    import scpredict as sp

    old = sp.settings.seed, sp.settings.progress_bar
    sp.settings.seed, sp.settings.progress_bar = 0, "none"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = _data()
        yield a, _fit(a)
    finally:
        sp.settings.seed, sp.settings.progress_bar = old
        torch.set_num_threads(n)


def test_setup_declares_and_checks_log_normalized_input():
    import scpredict as sp

    a = _data()
    counts = a.copy()
    counts.X = counts.layers["counts"].copy()
    with pytest.raises(ValueError, match="log"):
        sp.models.ScoreDiffusion.setup_anndata(counts, condition_keys=["perturbation"])
    with pytest.raises(KeyError, match="nope"):
        sp.models.ScoreDiffusion.setup_anndata(a, condition_keys=["nope"])
    with pytest.raises(ValueError, match="perturbation_key"):
        sp.models.ScoreDiffusion.setup_anndata(
            a, condition_keys=["cell_line"], perturbation_key="perturbation"
        )


def test_generate_conditions_and_unknown_values_rejected(trained):
    import scpredict as sp
    from helpers import assert_adata_equal

    a, m = trained
    g = m.generate(40, conditions={"cell_line": "line0", "perturbation": "P0"}, seed=3)
    assert g.shape == (40, a.n_vars) and list(g.var_names) == list(a.var_names)
    assert (g.obs["perturbation"] == "P0").all() and np.isfinite(g.X).all() and (g.X >= 0).all()
    # same seed -> same cells; other sampler also works
    np.testing.assert_array_equal(
        g.X, m.generate(40, conditions={"cell_line": "line0", "perturbation": "P0"}, seed=3).X
    )
    assert m.generate(5, conditions={"perturbation": "P1"}, method="sde", n_steps=20).shape == (5, a.n_vars)
    with pytest.raises(sp.models._perturbation_base.UnknownPerturbationError, match="P99"):
        m.generate(5, conditions={"perturbation": "P99"})
    with pytest.raises(KeyError, match="dose"):
        m.generate(5, conditions={"dose": "1"})
    before = a.copy()
    with pytest.raises(ValueError, match="P99"):
        m.predict_perturbation(a, target={"perturbation": "P99"}, key_added="bad")
    bad = a.copy()
    bad.obs["perturbation"] = bad.obs["perturbation"].astype(str).replace({"P1": "unseen"})
    with pytest.raises(ValueError, match="unseen"):
        m.predict_perturbation(bad, target={"perturbation": "P0"})
    assert_adata_equal(a, before)


def test_generated_groups_follow_their_condition(trained):
    a, m = trained
    x = np.asarray(a.X)
    means = {
        p: x[(a.obs["perturbation"] == p).to_numpy() & (a.obs["cell_line"] == "line0").to_numpy()].mean(0)
        for p in ("control", "P0", "P1")
    }
    for p in ("P0", "P1"):
        gen = m.generate(150, conditions={"cell_line": "line0", "perturbation": p}, seed=1).X.mean(0)
        own = np.abs(gen - means[p]).mean()
        others = [np.abs(gen - means[q]).mean() for q in means if q != p]
        assert own < min(others), p


def test_ddim_inversion_then_reconstruction_returns_near_source(trained):
    a, m = trained
    sub = a[:60].copy()
    m.predict_perturbation(sub, target={"perturbation": "control"}, key_added="ctrl", n_steps=50)
    ctrl = sub.obs["perturbation"].to_numpy() == "control"
    # control cells "moved" to their own condition: inversion + regeneration is near the identity
    x = np.asarray(sub.X)
    recon = sub.layers["ctrl"]
    err = np.abs(recon[ctrl] - x[ctrl]).mean()
    spread = np.abs(x[ctrl] - x[ctrl].mean(0)).mean()
    assert err < 0.8 * spread, (err, spread)
    # each reconstruction is nearest to its own source cell (cell identity survives the round trip)
    d = ((recon[ctrl][:, None, :] - x[ctrl][None, :, :]) ** 2).sum(-1)
    assert (d.argmin(1) == np.arange(ctrl.sum())).mean() > 0.7
    assert sub.uns["ctrl"]["params"]["target"] == {"perturbation": "control"}
    # moving perturbed cells to control shifts them toward the control mean
    moved = recon[~ctrl]
    cm = np.asarray(a.X)[np.asarray(a.obs["perturbation"]) == "control"].mean(0)
    assert np.abs(moved.mean(0) - cm).mean() < np.abs(x[~ctrl].mean(0) - cm).mean()


def test_stronger_guidance_raises_target_match(trained):
    a, m = trained
    target = {"G0003": "up", "G0007": "down", "G0011": "up"}
    cond = {"cell_line": "line0", "perturbation": "control"}
    scores = [
        m.design(target, n=60, guidance_scale=s, conditions=cond, seed=0).obs["target_match"].mean()
        for s in (0.0, 2.0, 8.0)
    ]
    assert scores[0] < scores[1] < scores[2], scores
    d = m.design(target, n=20, guidance_scale=4.0, conditions=cond)
    assert "design_logfc" in d.var and len(d.uns["design"]["progress"]["objective"]) > 0
    prof = {"G0003": 5.0, "G0007": 0.5}
    p0 = m.design(prof, n=40, guidance_scale=0.0, conditions=cond, seed=0).obs["target_match"].mean()
    p1 = m.design(prof, n=40, guidance_scale=8.0, conditions=cond, seed=0).obs["target_match"].mean()
    assert p1 > p0
    with pytest.raises(KeyError, match="NOTAGENE"):
        m.design({"NOTAGENE": "up"}, n=2)
    with pytest.raises(ValueError, match="up"):
        m.design({"G0003": "sideways"}, n=2)


def test_denoise_profiles_predict_and_save_load(trained, tmp_path):
    import scpredict as sp

    a, m = trained
    sub = a[:50].copy()
    m.denoise(sub, t_start=0.3, key_added="den", n_steps=20)
    assert sub.layers["den"].shape == sub.shape and "den" in sub.uns
    # denoising from a small t stays close to the input
    assert (
        np.abs(sub.layers["den"] - np.asarray(sub.X)).mean()
        < np.abs(np.asarray(sub.X) - np.asarray(sub.X).mean(0)).mean()
    )
    prof = m.get_perturbation_profiles(["P0", "control"], covariates={"cell_line": "line1"})
    assert prof.shape == (2, a.n_vars) and list(prof.obs["perturbation"]) == ["P0", "control"]
    m.save(tmp_path / "m")
    m2 = sp.models.ScoreDiffusion.load(tmp_path / "m", adata=a)
    kw = {"conditions": {"cell_line": "line1", "perturbation": "P1"}, "seed": 5}
    np.testing.assert_allclose(m.generate(10, **kw).X, m2.generate(10, **kw).X, atol=1e-5)
    r1, r2 = sub.copy(), sub[:, ::-1].copy()  # shuffled genes: aligned by name
    m.predict_perturbation(r1, target={"perturbation": "P0"}, key_added="p")
    m2.predict_perturbation(r2, target={"perturbation": "P0"}, key_added="p")
    np.testing.assert_allclose(r1.layers["p"], r2[:, r1.var_names].layers["p"], atol=1e-4)


def test_combine_with_observation_denoises_thinned_counts():
    from scpredict.models._diffusion import combine_with_observation

    rng = np.random.default_rng(0)
    n, g = 300, 200
    cluster = rng.integers(0, 3, n)
    base = rng.gamma(0.6, 1.0, (3, g))
    rate = base[cluster] * rng.gamma(4.0, 1 / 4.0, (n, g))  # cell-specific variation around the cluster
    rate /= rate.sum(1, keepdims=True)
    depth = rng.integers(300, 1500, n)[:, None]
    thin = rng.poisson(rate * depth)
    full = thin + rng.poisson(4 * rate * depth)  # the thinned molecules are a fifth of the full-depth ones

    def lognorm(c):
        return np.log1p(c / np.maximum(c.sum(1, keepdims=True), 1) * 1e4)

    def corr(x, t):
        x, t = x - x.mean(1, keepdims=True), t - t.mean(1, keepdims=True)
        return np.mean((x * t).sum(1) / np.sqrt((x**2).sum(1) * (t**2).sum(1)))

    y, truth, expr = lognorm(thin), lognorm(full), np.log1p(rate * 1e4)
    prior = np.stack([y[cluster == c].mean(0) for c in range(3)])[cluster]  # a smooth prior (cluster means)
    post = combine_with_observation(prior, y)
    pred = combine_with_observation(prior, y, depth_factor=5.0)
    # the posterior mean lies between prior and observation, gene by gene
    assert np.all(np.abs(post - y) <= np.abs(np.maximum(prior, 0) - y) + 1e-9)
    # it estimates the expression better than either source alone
    assert corr(post, expr) > max(corr(prior, expr), corr(y, expr))
    # the predictive at 5x depth matches the full-depth profile better than the observation and the prior
    assert corr(pred, truth) > max(corr(prior, truth), corr(y, truth), corr(post, truth))
    # it keeps more of the observation than the posterior mean (the observed molecules are part of the truth)
    assert np.abs(pred - y).mean() < np.abs(post - y).mean()
    with pytest.raises(ValueError, match="depth_factor"):
        combine_with_observation(prior, y, depth_factor=0.5)


def test_denoise_with_depth_factor_combines_with_the_cells(trained):
    a, m = trained
    sub = a[:80].copy()
    m.denoise(sub, t_start=0.3, key_added="sd", n_steps=20, seed=0)
    m.denoise(sub, t_start=0.3, key_added="eb", n_steps=20, depth_factor=float("inf"), seed=0)
    m.denoise(sub, t_start=0.3, key_added="eb5", n_steps=20, depth_factor=5.0, seed=0)
    x = np.asarray(sub.X)
    sd, eb, eb5 = (np.asarray(sub.layers[k]) for k in ("sd", "eb", "eb5"))
    # same prior (same seed); the EB estimates move from it towards the observed values
    assert np.all(np.abs(eb - x) <= np.abs(sd - x) + 1e-5)
    assert np.abs(eb5 - x).mean() < np.abs(eb - x).mean() <= np.abs(sd - x).mean()
    assert sub.uns["eb5"]["params"]["depth_factor"] == 5.0


def test_latent_space_model_trains_and_generates():
    a = _data(n_cells=160, n_genes=24)
    m = _fit(a, space="latent", n_latent=4, ae_hidden=32)
    assert any(k.startswith("autoencoder_") for k in m.history)
    g = m.generate(10, conditions={"perturbation": "P0"})
    assert g.shape == (10, a.n_vars) and np.isfinite(g.X).all()
    assert float(m.module.autoencoder.latent_std.min()) > 0


# ---------------------------------------------------------------------------- metrics, tl, pl
def test_generation_metrics():
    import scpredict as sp

    rng = np.random.default_rng(0)
    same = sp.metrics.knn_real_vs_generated(rng.normal(size=(150, 10)), rng.normal(size=(150, 10)))
    apart = sp.metrics.knn_real_vs_generated(rng.normal(size=(150, 10)), rng.normal(size=(150, 10)) + 2)
    assert 0.35 < same < 0.65 and apart > 0.95
    real = rng.normal(size=(50, 20)) + np.arange(20)
    assert sp.metrics.pearson_of_means(real, real + rng.normal(scale=0.1, size=real.shape)) > 0.99
    assert sp.metrics.pearson_of_means(real, -real) < -0.99
    with pytest.raises(ValueError, match="same|alike"):
        sp.metrics.pearson_of_means(real, real[:, :5])


def test_rank_regulators_recovers_planted_tf_and_drug():
    import pandas as pd
    from anndata import AnnData

    import scpredict as sp

    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(300)]
    prog = rng.normal(size=300)
    prog[:20] += 3.0  # TF_A targets go up
    prog[20:40] -= 3.0  # TF_B targets go down
    d = AnnData(np.zeros((2, 300), dtype=np.float32), var=pd.DataFrame({"design_logfc": prog}, index=genes))
    tfs = {"TF_A": genes[:20], "TF_B": genes[20:40], "TF_C": genes[100:130]}
    order_like = np.argsort(-prog)  # a drug whose ranked signature follows the program
    sig = pd.concat([
        pd.DataFrame({"drug": "match", "gene": np.array(genes)[order_like], "rank": np.arange(300)}),
        pd.DataFrame({"drug": "random", "gene": np.array(genes)[rng.permutation(300)], "rank": np.arange(300)}),
        pd.DataFrame({"drug": "opposite", "gene": np.array(genes)[order_like[::-1]], "rank": np.arange(300)}),
    ])  # fmt: skip
    sp.tl.rank_regulators(d, tf_targets=tfs, drug_signatures=sig)
    res = d.uns["rank_regulators"]
    assert list(res["tfs"]["tf"]) == ["TF_A", "TF_C", "TF_B"]
    assert res["tfs"].set_index("tf").loc["TF_A", "fdr"] < 0.01
    assert list(res["drugs"]["drug"]) == ["match", "random", "opposite"]
    assert res["drugs"]["spearman"].iloc[0] == pytest.approx(1.0)
    long = pd.DataFrame([(t, g) for t, gs in tfs.items() for g in gs], columns=["source", "target"])
    sp.tl.rank_regulators(d, tf_targets=long, key_added="r2")
    pd.testing.assert_frame_equal(d.uns["r2"]["tfs"], res["tfs"])
    with pytest.raises(ValueError, match="tf_targets"):
        sp.tl.rank_regulators(d)
    with pytest.raises(KeyError, match="nope"):
        sp.tl.rank_regulators(d, tf_targets=tfs, program_key="nope")


def test_plots(trained):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import scpredict as sp

    a, m = trained
    g = m.generate(30, conditions={"cell_line": "line0", "perturbation": "P0"})
    ax = sp.pl.real_vs_generated(a, g, basis="pca")
    assert len(ax.collections) == 2
    ax = sp.pl.real_vs_generated(a, g, basis="pca", color="perturbation")
    assert len(ax.collections) >= 4
    d = m.design({"G0003": "up"}, n=10, guidance_scale=2.0, conditions={"perturbation": "control"})
    fig = sp.pl.design_progress(d)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines[0].get_xdata()) == len(
        d.uns["design"]["progress"]["objective"]
    )
    plt.close("all")


def test_ema_of_weights_is_used_after_training():
    """ema_decay replaces the last weights by the exponential moving average of the per-step weights."""
    import lightning.pytorch as pl

    import scpredict as sp

    a = _data(n_cells=160, n_genes=24)
    m = sp.models.ScoreDiffusion(a, n_hidden=32, n_layers=1, n_emb=8, n_steps=50)
    seen: list[list[torch.Tensor]] = []

    class Record(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            seen.append([p.detach().clone() for p in m.module.net.parameters()])

        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append([p.detach().clone() for p in m.module.net.parameters()])

    m.train(max_epochs=2, batch_size=32, logger=None, enable_checkpointing=False, ema_decay=0.9,
            callbacks=[Record()])  # fmt: skip
    assert len(seen) > 5
    ema = [p.clone() for p in seen[0]]
    for step, params in enumerate(seen[1:], start=1):
        d = min(0.9, (1 + step) / (10 + step))
        ema = [d * e + (1 - d) * p for e, p in zip(ema, params, strict=True)]
    final = list(m.module.net.parameters())
    for e, p in zip(ema, final, strict=True):
        torch.testing.assert_close(p.detach(), e, atol=1e-5, rtol=1e-4)
    assert any(not torch.allclose(p, q) for p, q in zip(final, seen[-1], strict=True))  # not the last weights
    with pytest.raises(ValueError, match="ema_decay"):
        m.train(max_epochs=1, logger=None, enable_checkpointing=False, ema_decay=1.5)


# ---------------------------------------------------------------------------- count (NB) observation model
def test_nb_log_prob_matches_torch_negative_binomial():
    from scpredict.module._score_net import nb_log_prob

    c = torch.tensor([0.0, 1.0, 3.0, 10.0, 0.0])
    mu = torch.tensor([0.5, 2.0, 3.0, 4.0, 20.0])
    theta = torch.tensor([1.0, 0.3, 5.0, 2.0, 0.7])
    ref = torch.distributions.NegativeBinomial(total_count=theta, logits=torch.log(mu / theta)).log_prob(c)
    torch.testing.assert_close(nb_log_prob(c, mu, theta), ref, atol=1e-4, rtol=1e-4)


def _count_data(n_cells=240, n_genes=30):
    """Sparse counts (binomially thinned to 1%) as log1p(counts / library * 1e4), with conditions."""
    import anndata as ad

    import scpredict as sp

    a = sp.datasets.synthetic_perturbation(
        n_cells=n_cells, n_genes=n_genes, n_perturbations=2, n_combinations=0, n_cell_lines=2, seed=1
    )
    c = a.layers["counts"]
    c = np.asarray(c.toarray() if hasattr(c, "toarray") else c).astype(np.int64)
    t = np.random.default_rng(0).binomial(c, 0.01)
    keep = (t == 1).any(1)  # a one-molecule gene in every cell: the scale s is recovered exactly
    t = t[keep]
    x = np.log1p(t / t.sum(1, keepdims=True) * 1e4).astype(np.float32)
    b = ad.AnnData(x, obs=a.obs[keep].copy())
    b.var_names = a.var_names
    sp.models.ScoreDiffusion.setup_anndata(b, condition_keys=["cell_line", "perturbation"])
    return b, t


def test_nb_counts_recovered_and_input_checked():
    import scpredict as sp
    from scpredict.module._score_net import ExpressionAutoencoder

    b, t = _count_data(n_cells=120)
    c, lib, tot = ExpressionAutoencoder.counts_from_lognorm(torch.as_tensor(b.X))
    np.testing.assert_array_equal(c.numpy(), t)
    np.testing.assert_allclose(lib.numpy(), t.sum(1))
    np.testing.assert_allclose(tot.numpy(), np.expm1(b.X.astype(np.float64)).sum(1), rtol=1e-4)
    with pytest.raises(ValueError, match="space='latent'"):
        sp.models.ScoreDiffusion(b, space="expression", ae_likelihood="nb")
    b.X = b.X * 1.3 + 0.05  # not log1p of whole molecules any more
    m = sp.models.ScoreDiffusion(b, space="latent", n_latent=4, ae_hidden=16, n_hidden=16, ae_likelihood="nb")
    before = b.X.copy()
    with pytest.raises(ValueError, match=r"log1p-normalized counts(.|\n)*adata\.X"):
        m.train(max_epochs=1, ae_epochs=1, logger=None, enable_checkpointing=False)
    np.testing.assert_array_equal(b.X, before)  # the user's data are left as they were


def test_nb_decoder_generates_cells_with_measurement_noise(tmp_path):
    """With ae_likelihood='nb', generated cells are log-normalized draws of counts: the fraction of zeros and
    the per-gene variance match the real cells, which the decoder's mean (observation='mean') does not."""
    import scpredict as sp

    b, _ = _count_data()
    m = sp.models.ScoreDiffusion(b, space="latent", n_latent=6, ae_hidden=32, ae_likelihood="nb", n_hidden=64,
                                 n_layers=2, n_emb=16, n_steps=100)  # fmt: skip
    m.train(max_epochs=20, ae_epochs=50, batch_size=32, lr=5e-3, logger=None, enable_checkpointing=False)
    assert "autoencoder_train_nll" in m.history
    # the noise parameters sit at their maximum likelihood given the decoder (not at their initial values)
    from scpredict.module._score_net import nb_log_prob

    ae = m.module.autoencoder.eval()
    xt = torch.as_tensor(b.X)
    with torch.no_grad():
        c, lib, tot = ae.counts_from_lognorm(xt)
        h = ae.encoder(xt)
        r = torch.stack([lib.log(), tot.log()], 1) - ae.depth_head(h)
        chol = ae._chol()
        torch.testing.assert_close(chol @ chol.T, r.T @ r / len(r), atol=1e-4, rtol=1e-3)
        mu = lib[:, None] * torch.softmax(ae.decoder(h), -1)
        ll = lambda f: nb_log_prob(c, mu, (ae.log_theta.exp() * f)[None, :]).sum(0)  # noqa: E731
        # near-Poisson genes have a flat likelihood in theta: within 1 nat (over all cells) of theta x 2 or / 2
        assert (ll(1.0) >= ll(2.0) - 1.0).float().mean() > 0.9
        assert (ll(1.0) >= ll(0.5) - 1.0).float().mean() > 0.9
    real = np.asarray(b.X)
    # the likelihood itself: the cells' own latents, decoded by drawing counts vs by the decoder's mean
    with torch.no_grad():
        y = m.module.to_diffusion(xt)
        drawn = m.module.sample_observation(y, np.random.default_rng(0)).numpy()
        mean = m.module.from_diffusion(y).numpy()
    assert abs((drawn == 0).mean() - (real == 0).mean()) < 0.04
    assert (mean == 0).mean() < 0.01  # the smooth decoder output has no zeros
    ratio = drawn.var(0).mean() / real.var(0).mean()
    assert 0.7 < ratio < 1.4 and mean.var(0).mean() / real.var(0).mean() < 0.7
    # generation draws from it by default
    g = m.generate(600, seed=0)
    assert g.uns["generate"]["observation"] == "sample"
    assert abs((g.X == 0).mean() - (real == 0).mean()) < 0.1
    assert (m.generate(600, seed=0, observation="mean").X == 0).mean() < 0.01
    assert sp.metrics.pearson_of_means(real, g.X) > 0.95
    m.save(tmp_path / "nb", overwrite=True)
    m2 = sp.models.ScoreDiffusion.load(tmp_path / "nb", adata=b)
    np.testing.assert_allclose(m2.generate(50, seed=3).X, m.generate(50, seed=3).X)
    plain = sp.models.ScoreDiffusion(_data(n_cells=80, n_genes=12), space="latent", n_latent=4, ae_hidden=16)
    with pytest.raises(ValueError, match="ae_likelihood='nb'"):
        plain.generate(5, observation="sample")
    with pytest.raises(ValueError, match="observation"):
        m.generate(5, observation="noisy")
