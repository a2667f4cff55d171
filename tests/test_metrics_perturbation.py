"""Every perturbation metric against a small example computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

import scpredict as sp
from scpredict.metrics import DEResult

M = sp.metrics


def test_mse_mae_hand_and_vectorised():
    assert M.mse([1.0, 2.0], [1.0, 4.0]) == 2.0  # (0 + 4) / 2
    assert M.mae([1.0, 2.0], [2.0, 4.0]) == 1.5  # (1 + 2) / 2
    np.testing.assert_allclose(M.mse([[1.0, 2.0], [0.0, 0.0]], [[1.0, 4.0], [1.0, 1.0]]), [2.0, 1.0])
    np.testing.assert_allclose(M.mae([[1.0, 2.0], [0.0, 0.0]], [[1.0, 4.0], [1.0, 3.0]]), [1.0, 2.0])
    with pytest.raises(ValueError, match="same shape"):
        M.mse([1.0, 2.0], [1.0])


def test_mse_de20_uses_only_top_de_genes():
    # DE genes 1, 2: errors 2 and 0 -> (4 + 0) / 2; gene 0 (error 100) is ignored
    assert M.mse_de20([100.0, 1.0, 5.0], [0.0, 3.0, 5.0], de_genes=[1, 2], n_genes=2) == 2.0
    # n_genes truncates the ranking: only gene 1 -> 4
    assert M.mse_de20([100.0, 1.0, 5.0], [0.0, 3.0, 5.0], de_genes=[1, 2], n_genes=1) == 4.0
    out = M.mse_de20([[0.0, 1.0], [2.0, 2.0]], [[1.0, 1.0], [2.0, 0.0]], de_genes=[[0], [1]], n_genes=1)
    np.testing.assert_allclose(out, [1.0, 4.0])


def test_pearson_and_r2_scgen_hand():
    # x = [1,2,3], y = [1,3,2]: centred [-1,0,1], [-1,1,0] -> r = 1 / (sqrt2 * sqrt2) = 0.5
    assert M.pearson([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(0.5)
    assert M.r2_scgen([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(0.25)
    assert math.isnan(M.pearson([1.0, 1.0, 1.0], [1.0, 3.0, 2.0]))


def test_pearson_delta_hand():
    # Δpred = [1,2,0], Δtrue = [0,2,1]; centred [0,1,-1], [-1,1,0] -> 1 / 2
    assert M.pearson_delta([2.0, 3.0, 1.0], [1.0, 3.0, 2.0], [1.0, 1.0, 1.0]) == pytest.approx(0.5)
    # same values but control per row
    out = M.pearson_delta([[2.0, 3.0, 1.0]] * 2, [[1.0, 3.0, 2.0]] * 2, [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    assert out[0] == pytest.approx(0.5)
    # with control 0: Δ = the profiles: r([2,3,1],[1,3,2]) = centred [0,1,-1],[-1,1,0] -> 0.5
    assert out[1] == pytest.approx(0.5)


def test_pearson_delta_is_nan_for_a_rounding_level_delta():
    # the control baseline: prediction = control up to float32 rounding -> no change -> undefined, not noise
    ctrl = np.array([5.0, 3.0, 1.0, 0.5])
    pred = ctrl.astype(np.float32).astype(np.float64) + np.array([1e-7, -2e-7, 0.0, 1e-7])
    assert math.isnan(M.pearson_delta(pred, [6.0, 2.0, 1.0, 0.5], ctrl))
    # a real (small) change is still correlated
    assert M.pearson_delta(ctrl + [1e-3, -1e-3, 0, 0], [6.0, 2.0, 1.0, 0.5], ctrl) == pytest.approx(1.0)


def test_pearson_delta_de20_restricts_genes():
    # on genes 1,2: Δpred = [1,2], Δtrue = [1,2] -> 1, although gene 0 is badly wrong
    assert (
        M.pearson_delta_de20([9.0, 2.0, 3.0], [0.0, 2.0, 3.0], [1.0, 1.0, 1.0], de_genes=[1, 2], n_genes=2)
        == 1.0
    )
    assert (
        M.pearson_delta_de20([9.0, 3.0, 2.0], [0.0, 2.0, 3.0], [1.0, 1.0, 1.0], de_genes=[1, 2], n_genes=2)
        == -1.0
    )


def test_r2_mean_and_de_hand():
    # ss_res = 1, ss_tot = 2 -> 0.5
    assert M.r2_mean([1.0, 2.0, 4.0], [1.0, 2.0, 3.0]) == 0.5
    assert M.r2_mean([2.0, 2.0], [2.0, 2.0]) == 1.0  # constant truth, perfect (sklearn's convention)
    assert M.r2_mean([2.0, 3.0], [2.0, 2.0]) == 0.0
    # k = 3 DE genes [1,2,3]: same as above; gene 0 excluded
    assert M.r2_mean_de([7.0, 1.0, 2.0, 4.0], [0.0, 1.0, 2.0, 3.0], de_genes=[1, 2, 3], k=3) == 0.5
    # k = 2 DE genes [1, 2]: perfect
    assert M.r2_mean_de([7.0, 1.0, 2.0, 4.0], [0.0, 1.0, 2.0, 3.0], de_genes=[1, 2, 3], k=2) == 1.0


def test_l2_top1000_uses_most_expressed_control_genes():
    # control top-2 genes: 0 and 1 -> sqrt(3^2 + 4^2) = 5 (gene 2 ignored)
    assert M.l2_top1000([3.0, 0.0, 9.0], [0.0, 4.0, 0.0], [5.0, 4.0, 0.0], n_top=2) == 5.0
    # more genes requested than exist: all genes
    assert M.l2_top1000([3.0, 0.0, 0.0], [0.0, 4.0, 0.0], [5.0, 4.0, 0.0]) == 5.0


def test_direction_de20_hand():
    # Δpred = [1,-1,2], Δtrue = [2,1,-1] -> only gene 0 agrees -> 1/3
    assert (
        M.direction_de20([2.0, 0.0, 3.0], [3.0, 2.0, 0.0], [1.0, 1.0, 1.0], de_genes=[0, 1, 2], n_genes=3)
        == 1 / 3
    )
    assert (
        M.direction_de20([2.0, 0.0, 3.0], [3.0, 2.0, 0.0], [1.0, 1.0, 1.0], de_genes=[0, 1, 2], n_genes=1)
        == 1.0
    )


def test_de_genes_validation():
    with pytest.raises(ValueError, match="indices"):
        M.mse_de20([1.0, 2.0], [1.0, 2.0], de_genes=[5], n_genes=1)
    with pytest.raises(ValueError, match="rows"):
        M.mse_de20([[1.0, 2.0]] * 2, [[1.0, 2.0]] * 2, de_genes=[[0]], n_genes=1)


def test_wilcoxon_de_hand():
    x = np.array([[3.0], [4.0], [5.0]])
    y = np.array([[0.0], [1.0], [2.0]])
    res = M.wilcoxon_de(x, y)
    # U = 9, mu = 4.5, sigma^2 = 3*3/12 * 7 = 5.25, z = (9 - 4.5 - 0.5) / sqrt(5.25)
    z = 4.0 / math.sqrt(5.25)
    p = math.erfc(z / math.sqrt(2))
    assert res.pvalue[0] == pytest.approx(p, rel=1e-12)
    assert res.fdr[0] == pytest.approx(p, rel=1e-12)  # one gene: BH = p
    # geometric means in count space: expm1(4), expm1(1)
    assert res.log2fc[0] == pytest.approx(math.log2(math.expm1(4.0) / math.expm1(1.0)))


def test_wilcoxon_de_constant_gene_and_bh():
    x = np.array([[1.0, 0.0, 5.0], [1.0, 0.0, 6.0], [1.0, 0.0, 7.0]])
    y = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0], [1.0, 0.0, 2.0]])
    res = M.wilcoxon_de(x, y)
    assert res.pvalue[0] == 1.0 and res.pvalue[1] == 1.0  # constant genes
    assert res.log2fc[1] == 0.0  # 0 / 0 defined as no change
    # BH with m = 3: the smallest p (gene 2) is multiplied by 3
    assert res.fdr[2] == pytest.approx(min(1.0, res.pvalue[2] * 3))


def test_des_hand():
    true = DEResult(np.array([3.0, -2.0, 1.0, 0.1]), np.zeros(4), np.array([0.01, 0.01, 0.01, 0.5]))
    pred = DEResult(np.array([0.5, 4.0, 0.0, 3.0]), np.zeros(4), np.array([0.01, 0.01, 0.5, 0.01]))
    # true significant: {0,1,2}, k = 3; predicted significant by |lfc|: 1, 3, 0 -> overlap {0, 1} -> 2/3
    assert M.des(true, pred) == pytest.approx(2 / 3)
    # predicted list is cut at k: with k = 1 (only gene 0 significant in truth) the prediction's top gene is 1
    true1 = DEResult(np.array([3.0, 0.0, 0.0, 0.0]), np.zeros(4), np.array([0.01, 0.5, 0.5, 0.5]))
    assert M.des(true1, pred) == 0.0
    # no real significant gene -> 0
    none = DEResult(np.zeros(4), np.ones(4), np.ones(4))
    assert M.des(none, pred) == 0.0


def test_pds_hand():
    # each prediction is closest to the *other* perturbation: rank 1 of 2 -> 1 - 1/2
    assert M.pds([[0.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]).tolist() == [0.5, 0.5]
    assert M.pds([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]).tolist() == [1.0, 1.0]
    # three perturbations; row 0 predicted [0, 0, 5]: L1 to true rows = 6, 5, 0 -> rank 2 -> 1 - 2/3
    true = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    pred = np.array([[0.0, 0.0, 5.0], [0.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    np.testing.assert_allclose(M.pds(pred, true), [1 / 3, 1.0, 1.0])
    # excluding gene 2 from row 0's distances: distances 1, 0, 0 -> rank 2 still; exclude gene 0 too -> all 0 -> 1
    excl = np.zeros((3, 3), bool)
    excl[0, [0, 2]] = True
    np.testing.assert_allclose(M.pds(pred, true, exclude=excl), [1.0, 1.0, 1.0])


def test_vcc_score_hand_and_clipping():
    # s_des = 0.5, s_pds = (1 - .5) / .5 = 1, s_mae = 1 - .1/.2 = .5 -> 2/3
    assert M.vcc_score(
        des=0.5, pds=1.0, mae=0.1, des_baseline=0.0, pds_baseline=0.5, mae_baseline=0.2
    ) == pytest.approx(2 / 3)
    # worse than baseline everywhere -> 0 (clipped); per-perturbation arrays are averaged first
    assert (
        M.vcc_score(
            des=[0.0, 0.2],
            pds=[0.5, 0.5],
            mae=[0.3, 0.5],
            des_baseline=0.5,
            pds_baseline=0.6,
            mae_baseline=0.2,
        )
        == 0.0
    )
    # pds baseline of 1 makes the scaled pds NaN -> counted as 0
    assert M.vcc_score(
        des=1.0, pds=1.0, mae=0.0, des_baseline=0.0, pds_baseline=1.0, mae_baseline=1.0
    ) == pytest.approx(2 / 3)


def test_energy_distance_hand():
    # E|X-Y| = 1, E|X-X'| = (0+2+2+0)/4 = 1, E|Y-Y'| = 0 -> 2 - 1 - 0
    assert M.energy_distance([0.0, 2.0], [1.0]) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 3))
    assert M.energy_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    assert M.energy_distance(a, a + 3.0) > M.energy_distance(a, a + 1.0) > 0


def test_mmd_hand():
    # k(0,0) = k(1,1) = 1, k(0,1) = exp(-1/2) -> 2 - 2 exp(-1/2)
    assert M.mmd([0.0], [1.0], bandwidths=[1.0]) == pytest.approx(2 - 2 * math.exp(-0.5))
    # mixture of two widths averages the kernels
    expect = 2 - 2 * (math.exp(-0.5) + math.exp(-1 / 8)) / 2
    assert M.mmd([0.0], [1.0], bandwidths=[1.0, 2.0]) == pytest.approx(expect)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 2))
    assert M.mmd(a, a) == pytest.approx(0.0, abs=1e-12)
    assert M.mmd(a, a + 2.0) > 0.1
    with pytest.raises(ValueError, match="positive"):
        M.mmd(a, a, bandwidths=[0.0])
