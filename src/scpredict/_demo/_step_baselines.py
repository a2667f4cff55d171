"""Demo step: the four perturbation baselines on held-out combinations, scored by the evaluation harness."""

from __future__ import annotations

from pathlib import Path

ORDER = 40


def run(out_dir: Path, report: dict) -> None:
    import matplotlib.pyplot as plt

    import scpredict as sp

    adata = sp.datasets.synthetic_perturbation(
        n_cells=800, n_genes=40, n_perturbations=5, n_combinations=5, interaction_strength=0.3, seed=0
    )
    sp.pp.split_combinations(adata, test_fraction=0.5, seed=0)
    models = {
        "control": sp.models.ControlBaseline,
        "mean": sp.models.MeanBaseline,
        "additive": sp.models.AdditiveBaseline,
        "linear": (sp.models.LinearBaseline, {"n_components": 5}),
    }
    metrics = ["mae", "pearson_delta", "pearson_delta_de20", "direction_de20", "pds", "vcc_score"]
    results = sp.tl.benchmark_perturbation_models(
        adata, models, split_key="split", perturbation_key="perturbation", metrics=metrics, scale="log1p"
    )
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    sp.pl.metric_comparison(results, metric="pearson_delta", ax=axes[0])
    sp.pl.metric_comparison(results, metric="mae", ax=axes[1])
    fig.tight_layout()
    fig.savefig(out_dir / "baselines_comparison.png", dpi=110)
    plt.close(fig)

    test = results.attrs["split"]["test"]
    train = adata[adata.obs["split"].astype(str) != "test"].copy()
    sp.models.AdditiveBaseline.setup_anndata(train, perturbation_key="perturbation")
    model = sp.models.AdditiveBaseline(train)
    model.train()
    model.predict(adata, key_added="additive")
    ax = sp.pl.perturbation_scatter(adata, key="additive", perturbation=test[0])
    ax.figure.savefig(out_dir / "baselines_scatter.png", dpi=110, bbox_inches="tight")
    plt.close(ax.figure)

    summary = results.groupby(["model", "metric"])["value"].mean().unstack()
    report["held_out_combinations"] = test
    report["mean_over_held_out"] = {
        m: {k: round(float(v), 4) for k, v in row.items()} for m, row in summary.iterrows()
    }
    report["vcc_score"] = {k: round(float(v), 4) for k, v in results.attrs["vcc_score"].items()}
    report["figures"] = ["baselines_comparison.png", "baselines_scatter.png"]
