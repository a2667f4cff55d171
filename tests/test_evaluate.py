"""sp.tl.evaluate_perturbations, benchmark_perturbation_models, to_cell_eval and the perturbation plots."""

from __future__ import annotations

import json

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest

import scpredict as sp
from helpers import assert_adata_equal
from scpredict.tl._evaluate import PERTURBATION_METRICS

matplotlib.use("Agg")


@pytest.fixture
def adata():
    a = sp.datasets.synthetic_perturbation(n_cells=500, n_genes=30, n_perturbations=4, n_combinations=3)
    a.uns["log1p"] = {"base": None}
    return a


def _model(cls, adata):
    cls.setup_anndata(adata, perturbation_key="perturbation")
    m = cls(adata)
    m.train()
    return m


def _evaluate(adata, pred, **kw):
    return sp.tl.evaluate_perturbations(adata, pred, perturbation_key="perturbation", **kw)


def test_oracle_prediction_scores_perfectly(adata):
    # predicted cells = the real cells: every error is 0, every correlation 1
    df = _evaluate(
        adata,
        adata.copy(),
        metrics=["mse", "mae", "pearson_delta", "r2_mean", "pds", "des", "energy_distance"],
    )
    perts = sorted(set(adata.obs["perturbation"].astype(str)) - {"control"})
    assert list(df.index) == perts
    assert list(df.columns) == [
        "perturbation",
        "n_cells",
        "mse",
        "mae",
        "pearson_delta",
        "r2_mean",
        "pds",
        "des",
        "energy_distance",
    ]
    np.testing.assert_allclose(df["mse"], 0.0, atol=1e-10)
    np.testing.assert_allclose(df[["pearson_delta", "r2_mean", "pds"]], 1.0)
    np.testing.assert_allclose(df["energy_distance"], 0.0, atol=1e-8)
    assert (df["des"][df["des"] > 0]).eq(1.0).all()


def test_all_metrics_named_as_documented(adata):
    model = _model(sp.models.AdditiveBaseline, adata)
    df = _evaluate(
        adata,
        model.get_perturbation_profiles(
            ["P0", "P1", "P0+P2"] if "P0+P2" in set(adata.obs["perturbation"]) else ["P0", "P1"]
        ),
    )
    assert [c for c in df.columns if c in PERTURBATION_METRICS] == list(PERTURBATION_METRICS)
    assert df["energy_distance"].isna().all()  # single profiles: no distribution
    assert (
        np.isfinite(df[["mse", "pearson_delta_de20", "r2_mean_de", "direction_de20", "pds", "vcc_score"]])
        .all()
        .all()
    )
    assert "vcc_score" in df.attrs and df.attrs["n_genes"] == 30


def test_metrics_match_direct_computation(adata):
    model = _model(sp.models.MeanBaseline, adata)
    pred = model.get_perturbation_profiles(["P1"])
    df = _evaluate(adata, pred, metrics=["mae", "pearson_delta", "l2_top1000"])
    x = np.asarray(adata.X, dtype=np.float64)
    lab = adata.obs["perturbation"].astype(str).to_numpy()
    true, ctrl = x[lab == "P1"].mean(0), x[lab == "control"].mean(0)
    assert df.loc["P1", "mae"] == pytest.approx(sp.metrics.mae(pred.X[0], true), rel=1e-6)
    assert df.loc["P1", "pearson_delta"] == pytest.approx(
        sp.metrics.pearson_delta(pred.X[0], true, ctrl), rel=1e-6
    )


def test_de_ranking_is_cached_and_reused(adata, monkeypatch):
    model = _model(sp.models.MeanBaseline, adata)
    pred = model.get_perturbation_profiles(["P0", "P1"])
    _evaluate(adata, pred, metrics=["mse_de20"])
    cache = adata.uns["_scpredict_de_genes"]
    ranking = json.loads(cache["ranking"])
    assert set(ranking) == {"P0|", "P1|"} and len(ranking["P0|"]) == 30

    def boom(*a, **k):
        raise AssertionError("DE ranking recomputed")

    monkeypatch.setattr("scpredict.tl._evaluate._rank_de_genes", boom)
    _evaluate(adata, pred, metrics=["mse_de20"])  # served from the cache


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        ("disjoint", ValueError, "share no gene names"),
        ("absent", ValueError, "no real cells"),
        ("no_control", ValueError, "control label"),
        ("undeclared", ValueError, "not declared"),
        ("counts", ValueError, "raw counts"),
        ("nan", ValueError, "NaN"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(adata, mutate, error, match):
    model = _model(sp.models.MeanBaseline, adata)
    pred = model.get_perturbation_profiles(["P0", "P1"])
    truth = adata
    if mutate == "disjoint":
        pred.var_names = [f"other{i}" for i in range(pred.n_vars)]
    elif mutate == "absent":
        pred.obs["perturbation"] = pd.Categorical(["P0", "P77"])
    elif mutate == "no_control":
        truth = adata[(adata.obs["perturbation"] != "control").to_numpy()].copy()
    elif mutate == "undeclared":
        del truth.uns["log1p"]
        pred.uns.pop("scale")
    elif mutate == "counts":
        truth = adata.copy()
        truth.X = truth.layers["counts"].toarray().astype(np.float32)
    elif mutate == "nan":
        pred.X[0, 3] = np.nan
    before = truth.copy()
    with pytest.raises(error, match=match):
        _evaluate(truth, pred, metrics=["mae", "mse_de20"])
    assert_adata_equal(truth, before)


def test_benchmark_tidy_table_unsupported_and_saved_split(adata, tmp_path):
    sp.pp.split_perturbations(adata, test_perturbations=["P3"], val_fraction=0.0, seed=0)
    df = sp.tl.benchmark_perturbation_models(
        adata,
        {"mean": sp.models.MeanBaseline, "additive": sp.models.AdditiveBaseline},
        split_key="split",
        perturbation_key="perturbation",
        metrics=["mae", "pearson_delta"],
        save_dir=tmp_path,
    )
    assert list(df.columns) == ["model", "perturbation", "metric", "value"]
    # P3 is an unseen single: the additive model cannot predict it
    assert df.attrs["unsupported"]["additive"] == ["P3"]
    assert df.loc[df["model"] == "additive", "value"].isna().all()
    assert df.loc[df["model"] == "mean", "value"].notna().all()
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["test"] == ["P3"] and "P3" not in split["train"]
    assert (tmp_path / "results.csv").exists()


def test_to_cell_eval_layout(adata, tmp_path):
    model = _model(sp.models.ControlBaseline, adata)
    files = sp.tl.to_cell_eval(
        adata,
        model.get_perturbation_profiles(["P0", "P1"]),
        directory=tmp_path,
        perturbation_key="perturbation",
    )
    real, pred = ad.read_h5ad(files["real"]), ad.read_h5ad(files["pred"])
    assert set(real.obs["target"]) == set(pred.obs["target"]) == {"P0", "P1", "control"}
    assert list(real.var_names) == list(pred.var_names)
    n_real = (adata.obs["perturbation"] == "P0").sum()
    assert (pred.obs["target"] == "P0").sum() == n_real  # profile repeated to the real cell count
    assert "log1p" in pred.uns and "cell-eval run" in files["command"]
    with pytest.raises(FileExistsError):
        sp.tl.to_cell_eval(
            adata,
            model.get_perturbation_profiles(["P0"]),
            directory=tmp_path,
            perturbation_key="perturbation",
        )


def test_plots_return_axes(adata):
    from matplotlib.axes import Axes

    model = _model(sp.models.AdditiveBaseline, adata)
    model.predict(adata, key_added="additive")
    ax = sp.pl.perturbation_scatter(adata, key="additive", perturbation="P1")
    assert isinstance(ax, Axes) and ax.get_title().startswith("P1")
    results = pd.DataFrame(
        {
            "model": ["a", "a", "b", "b"],
            "perturbation": ["P1", "P2"] * 2,
            "metric": "mae",
            "value": [0.1, 0.2, 0.3, 0.2],
        }
    )
    ax = sp.pl.metric_comparison(results, metric="mae")
    assert isinstance(ax, Axes) and [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    with pytest.raises(ValueError, match="not in results"):
        sp.pl.metric_comparison(results, metric="pds")


def test_covariates_are_matched_to_their_controls():
    adata = sp.datasets.synthetic_perturbation(n_cells=700, n_genes=20, n_perturbations=3, n_cell_lines=2)
    sp.models.AdditiveBaseline.setup_anndata(
        adata, perturbation_key="perturbation", covariate_keys=["cell_line"]
    )
    model = sp.models.AdditiveBaseline(adata)
    model.train()
    pred = model.get_perturbation_profiles(["P0", "P0"], covariates={"cell_line": ["line0", "line1"]})
    df = sp.tl.evaluate_perturbations(
        adata,
        pred,
        perturbation_key="perturbation",
        covariate_key="cell_line",
        metrics=["mae", "pds"],
        scale="log1p",
    )
    assert list(df.index) == ["P0|line0", "P0|line1"]
    assert list(df["cell_line"]) == ["line0", "line1"]
    # the training means of each line are predicted: mae is 0 up to float32 rounding; pds ranks within a line
    np.testing.assert_allclose(df["mae"], 0.0, atol=1e-5)
    np.testing.assert_allclose(df["pds"], 1.0)


# cell-eval 0.8.2 (MetricsEvaluator, profile="vcc") on the Norman oracle half/half split below: per perturbation
# (mae, discrimination_score_l1, overlap_at_N), from benchmarks/celleval_agreement.py setting (a)
CELL_EVAL_ORACLE = {
    "BPGM+SAMD1": (0.0066014129, 1.0, 0.5),
    "CEBPE+RUNX1T1": (0.0059882304, 1.0, 1.0),
    "CNN1+MAPK1": (0.0078007173, 0.969697, 1.0),
    "HK2": (0.0064032827, 0.878788, 0.0),
    "KLF1+MAP2K6": (0.0075310872, 0.939394, 1.0),
    "MAPK1": (0.0068325237, 1.0, 0.75),
    "SAMD1+PTPN12": (0.0068270819, 0.969697, 0.5),
    "SET+KLF1": (0.0079249605, 0.909091, 1.0),
    "TMSB4X": (0.0057029218, 1.0, 1.0),
    "ZBTB10+PTPN12": (0.0061267296, 1.0, 0.0),
}


def test_agrees_with_cell_eval_on_norman_oracle_split(shared_data):
    full = ad.read_h5ad(shared_data / "norman19_mcfaline23_devel.h5ad")
    full = full[full.obs["dataset"] == "norman19"].copy()
    full.X = full.X.toarray()
    full.obs = full.obs[["perturbation"]].astype(str)
    rng = np.random.default_rng(0)
    a, b = [], []
    for _, idx in full.obs.groupby("perturbation").indices.items():
        perm = rng.permutation(idx)
        h = len(perm) // 2
        a.append(perm[:h])
        b.append(perm[h : 2 * h])
    real, pred = full[np.concatenate(a)].copy(), full[np.concatenate(b)].copy()
    df = sp.tl.evaluate_perturbations(
        real, pred, perturbation_key="perturbation", metrics=["mae", "pds", "des"], scale="log1p"
    )
    assert len(df) == 33
    ref = pd.DataFrame(CELL_EVAL_ORACLE, index=["mae", "pds", "des"]).T
    np.testing.assert_allclose(df.loc[ref.index, "mae"], ref["mae"], atol=1e-6)
    np.testing.assert_allclose(df.loc[ref.index, "pds"], ref["pds"], atol=1e-3)
    np.testing.assert_allclose(df.loc[ref.index, "des"], ref["des"], atol=1e-3)
