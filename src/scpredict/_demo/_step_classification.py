"""Demo step: cell-type classification on pbmc68k_reduced (``bulk_labels``), every classifier side by side."""

from __future__ import annotations

from pathlib import Path

ORDER = 20


def run(out_dir: Path, report: dict) -> None:
    import matplotlib.pyplot as plt
    import numpy as np
    import scanpy as sc
    import torch

    import scpredict as sp

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small networks: one thread is faster than two contended ones
    try:
        adata = sc.datasets.pbmc68k_reduced()
        # raw.X holds log-normalised expression of 765 genes; X is scaled (negative values), so use raw
        adata = sc.AnnData(
            X=adata.raw.X.copy(),
            obs=adata.obs[["bulk_labels"]].copy(),
            var=adata.raw.var[[]].copy(),
            obsm={"X_pca": adata.obsm["X_pca"].copy()},
        )
        sp.pp.split_cells(adata, fractions=(0.7, 0.15, 0.15), stratify_key="bulk_labels", seed=0)
        fast = {"logger": None, "enable_checkpointing": False, "progress_bar": "none"}
        models = {
            "LogReg": ("LogisticRegressionClassifier", {"max_iter": 1000}),
            "XGBoost": (
                "XGBoostClassifier",
                {"n_estimators": 20, "max_depth": 3, "colsample_bytree": 0.3, "n_jobs": 1},
            ),
            "Linear": ("LinearClassifier", {}, {"max_epochs": 20, **fast}),
            "TabNet": ("TabNetClassifier", {"n_d": 32, "n_a": 32}, {"max_epochs": 40, **fast}),
            "SCORE": (
                "ScoreClassifier",
                {"n_hidden": 64, "n_eval_timesteps": 10},
                {"max_epochs": 60, **fast},
            ),
        }
        table = sp.tl.compare_classifiers(
            adata, models, labels_key="bulk_labels", scale="log1p", embedding_key="X_pca", key_added="clf"
        )
        cols = ["macro_f1", "accuracy", "weighted_f1", "ece", "train_s", "predict_cells_per_s"]
        report["table"] = {m: {c: round(float(table.loc[m, c]), 4) for c in cols} for m in table.index}

        ax = sp.pl.classifier_comparison(table, metrics=("macro_f1", "accuracy"))
        ax.set_title("pbmc68k_reduced bulk_labels (test cells)")
        ax.figure.savefig(out_dir / "classification_comparison.png", dpi=110, bbox_inches="tight")
        plt.close(ax.figure)

        best = str(table["macro_f1"].idxmax())
        test = adata[adata.obs["split"] == "test"].copy()
        ax = sp.pl.confusion_matrix(test, key=f"clf_{best}", labels_key="bulk_labels")
        ax.set_title(f"{best} (best macro F1)")
        ax.figure.savefig(out_dir / "classification_confusion.png", dpi=110, bbox_inches="tight")
        plt.close(ax.figure)

        fig = sp.pl.embedding(test, basis="X_pca", labels_key="bulk_labels", key="clf_SCORE", method="tsne")
        fig.savefig(out_dir / "classification_embedding_tsne.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        report["best_model"] = best
        report["n_test"] = int(test.n_obs)
        report["chance_macro_f1"] = float(1 / np.unique(test.obs["bulk_labels"]).size)
    finally:
        torch.set_num_threads(threads)
