"""Retrieval metrics against hand-computed cases, CMap connectivity, imbalance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import scpredict as sp

M = sp.metrics

# one query, 5 candidates; order by score: c3 (0.9), c0 (0.8), c4 (0.5), c1 (0.3), c2 (0.1)
TRUE = np.array([1, 0, 1, 0, 1])
SCORE = np.array([0.8, 0.3, 0.1, 0.9, 0.5])
# relevance in ranked order: 0, 1, 1, 0, 1


def test_hand_computed_single_query():
    assert M.precision_at_k(TRUE, SCORE, k=1) == 0.0
    assert M.precision_at_k(TRUE, SCORE, k=3) == pytest.approx(2 / 3)
    assert M.recall_at_k(TRUE, SCORE, k=3) == pytest.approx(2 / 3)
    assert M.recall_at_k(TRUE, SCORE, k=5) == 1.0
    assert M.mrr(TRUE, SCORE) == 0.5
    assert M.mrr(TRUE, SCORE, k=1) == 0.0
    # AP@5 = (1/2 + 2/3 + 3/5) / 3
    assert M.map_at_k(TRUE, SCORE, k=5) == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3)
    # AP@3 = (1/2 + 2/3) / min(3, 3)
    assert M.map_at_k(TRUE, SCORE, k=3) == pytest.approx((1 / 2 + 2 / 3) / 3)
    # DCG@3 = 1/log2(3) + 1/log2(4); IDCG@3 = 1 + 1/log2(3) + 1/log2(4)
    dcg = 1 / np.log2(3) + 1 / np.log2(4)
    assert M.ndcg_at_k(TRUE, SCORE, k=3) == pytest.approx(dcg / (1 + dcg))


def test_all_negative_scores_are_ranked():
    """torchmetrics drops candidates scored <= 0; here only the order of the scores matters."""
    neg = SCORE - 10.0
    for f in (M.precision_at_k, M.recall_at_k, M.ndcg_at_k, M.map_at_k):
        assert f(TRUE, neg, k=3) == pytest.approx(f(TRUE, SCORE, k=3))
    assert M.mrr(TRUE, neg) == 0.5
    # relevant item scored -0.1 above -0.5 and -0.3: rank 1
    assert M.mrr([0, 0, 1], [-0.5, -0.3, -0.1]) == 1.0
    assert M.precision_at_k([1, 0], [-2.0, -1.0], k=1) == 0.0


def test_graded_ndcg_matches_sklearn():
    from sklearn.metrics import ndcg_score

    rel = np.array([[3, 2, 0, 1, 0], [0, 1, 2, 0, 0]])
    score = np.array([[-0.1, -0.5, -0.2, -0.9, -0.3], [0.2, -0.4, 0.1, 0.0, -1.0]])
    for k in (1, 3, 5):
        ours = M.ndcg_at_k(rel, score, k=k, reduction="none")
        ref = [ndcg_score(rel[i : i + 1], score[i : i + 1], k=k) for i in range(2)]
        np.testing.assert_allclose(ours, ref)


def test_batch_reduction_and_empty_queries():
    t = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 0]])
    s = np.array([[0.1, 0.9, 0.5], [1.0, 2.0, 3.0], [0.0, 5.0, 1.0]])
    rr = M.mrr(t, s, reduction="none")
    np.testing.assert_allclose(rr, [1 / 3, np.nan, 1.0])
    assert M.mrr(t, s) == pytest.approx((1 / 3 + 1) / 2)  # the query without relevant item is left out
    assert M.precision_at_k(t, s, k=1, reduction="none").tolist() == [0.0, 0.0, 1.0]
    # ties keep input order
    assert M.mrr([0, 1], [1.0, 1.0]) == 0.5


def test_metric_input_errors():
    with pytest.raises(ValueError, match="same 1-D or 2-D shape"):
        M.mrr([1, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        M.ndcg_at_k([1, 0], [np.nan, 0.2])
    with pytest.raises(ValueError, match="positive integer"):
        M.precision_at_k([1, 0], [0.1, 0.2], k=0)


def test_retrieval_summary_per_group():
    t = np.eye(3)
    s = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    out = M.retrieval_summary(t, s, k=1, groups={"cell_line": ["a", "a", "b"]})
    glob = out[out.level == "global"].iloc[0]
    assert glob["mrr"] == pytest.approx((1 + 0.5 + 1) / 3)
    a = out[(out.level == "cell_line") & (out.group == "a")].iloc[0]
    assert a["precision@1"] == 0.5 and a["n_queries"] == 2


# ----------------------------------------------------------------------------- connectivity


def _ks_reference(values: np.ndarray, genes: list[str], tags: list[str], weight: float) -> float:
    """Loop-based GSEA running sum, written independently of the vectorised code."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    n_r = sum(abs(values[i]) ** weight for i in order if genes[i] in tags)
    n_miss = len(values) - len([g for g in genes if g in tags])
    run, best = 0.0, 0.0
    for i in order:
        run += abs(values[i]) ** weight / n_r if genes[i] in tags else -1.0 / n_miss
        if abs(run) > abs(best):
            best = run
    return best


def test_connectivity_matches_loop_reference():
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(40)]
    sigs = pd.DataFrame(rng.normal(size=(4, 40)), columns=genes, index=list("ABCD"))
    up, down = ["g1", "g5", "g7", "g20"], ["g3", "g11", "g30"]
    got = sp.tl.connectivity({"up": up, "down": down}, sigs)
    for name, row in sigs.iterrows():
        es_up = _ks_reference(row.to_numpy(), genes, up, 1.0)
        es_down = _ks_reference(row.to_numpy(), genes, down, 1.0)
        expect = (es_up - es_down) / 2 if np.sign(es_up) != np.sign(es_down) else 0.0
        assert got.loc["query", name] == pytest.approx(expect)


def test_connectivity_self_and_reversal():
    rng = np.random.default_rng(1)
    genes = [f"g{i}" for i in range(200)]
    sigs = pd.DataFrame(rng.normal(size=(6, 200)), columns=genes, index=[f"d{i}" for i in range(6)])
    scores = sp.tl.connectivity(
        sigs,
        AnnData(sigs.to_numpy(), obs=pd.DataFrame(index=sigs.index), var=pd.DataFrame(index=genes)),
        n_genes=20,
    )
    assert scores.shape == (6, 6)
    assert (scores.to_numpy().argmax(1) == np.arange(6)).all()  # each signature finds itself
    assert (np.diag(scores.to_numpy()) > 0.8).all()
    rev = sp.tl.connectivity(-sigs.iloc[0], sigs, n_genes=20)
    assert rev.loc[:, "d0"].item() < -0.8  # reversing the query reverses the score
    # unweighted KS with perfectly placed tags reaches exactly +1
    ranked = pd.DataFrame([np.arange(10, 0, -1.0)], columns=list("abcdefghij"), index=["r"])
    assert sp.tl.connectivity({"up": ["a", "b"], "down": ["i", "j"]}, ranked, weight=0).iloc[
        0, 0
    ] == pytest.approx(1.0)
    # up and down both enriched at the top -> same sign -> 0
    assert sp.tl.connectivity({"up": ["a"], "down": ["b"]}, ranked).iloc[0, 0] == 0.0


def test_connectivity_errors():
    sigs = pd.DataFrame([[1.0, 2.0]], columns=["a", "b"])
    with pytest.raises(ValueError, match="None of the tags"):
        sp.tl.connectivity({"up": ["zzz"]}, sigs)
    with pytest.raises(TypeError, match="signatures must be"):
        sp.tl.connectivity({"up": ["a"]}, [[1.0, 2.0]])
    with pytest.raises(ValueError, match="both up and down"):
        sp.tl.connectivity({"up": ["a"], "down": ["a"]}, sigs)


# ----------------------------------------------------------------------------- imbalance


def _screen():
    drugs = ["DMSO_TF"] * 5 + ["A"] * 12 + ["B"] * 3 + ["A"] * 2 + ["C (DMSO_TF solvate)"] * 4
    lines = ["L1"] * 5 + ["L1"] * 12 + ["L1"] * 3 + ["L2"] * 2 + ["L2"] * 4
    obs = pd.DataFrame({"drug": drugs, "line": lines}, index=[f"c{i}" for i in range(len(drugs))])
    return AnnData(np.ones((len(drugs), 3), dtype=np.float32), obs=obs)


def test_imbalance_tables():
    adata = _screen()
    sp.tl.imbalance(adata, drug_key="drug", cell_line_key="line", thresholds=(5,))
    res = adata.uns["imbalance"]
    pair = res["pair"]
    assert pair.iloc[0].tolist() == ["A", "L1", 12]
    assert set(pair["drug"]) == {"A", "B", "C (DMSO_TF solvate)"}  # the solvate drug is not a control
    assert res["drug"].set_index("drug").loc["A", "n_cell_lines"] == 2
    assert res["summary"]["pairs_below_5"] == 3  # B/L1 (3), A/L2 (2), C/L2 (4)
    assert res["summary"]["n_pairs_possible"] == 6
    assert res["cell_line"].set_index("cell_line").loc["L1", "n_cells"] == 20  # includes the controls
    assert 0 < res["summary"]["gini_pair"] < 1


def test_imbalance_plot_returns_axes():
    import matplotlib

    matplotlib.use("Agg")
    adata = _screen()
    sp.tl.imbalance(adata, drug_key="drug", cell_line_key="line")
    ax = sp.pl.imbalance(adata, min_cells=5)
    assert len(ax.get_lines()) >= 3
    assert ax.get_yscale() == "log"
