"""Demo step: ContextCycleAE counterfactuals and per-field contributions on synthetic contexts."""

from __future__ import annotations

from pathlib import Path

ORDER = 40


def run(out_dir: Path, report: dict) -> None:
    """Train a small ContextCycleAE streamed from a chunk directory, move cells to another assay, plot."""
    import tempfile
    import time

    import matplotlib.pyplot as plt
    import numpy as np

    import scpredict as sp

    t0 = time.perf_counter()
    adata = sp.datasets.synthetic_contexts(n_cells=600, n_genes=60, fields=("cell_type", "assay"), seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        sp.data.write_chunks(adata, Path(tmp) / "chunks", chunk_size=200, obs_keys=["cell_type", "assay"])
        ds = sp.data.ChunkedDataset(Path(tmp) / "chunks", batch_size=64)
        template = ds.obs_adata()
        sp.models.ContextCycleAE.setup_anndata(template, context_keys=["cell_type", "assay"])
        model = sp.models.ContextCycleAE(template, n_latent=8, n_latent_base=16, n_hidden_ffn=16)
        model.train(data=ds, max_epochs=8, lr=5e-3, logger=None, enable_checkpointing=False)

    src = adata[adata.obs["assay"] == "assay0"].copy()
    real = adata[adata.obs["assay"] == "assay1"]
    model.counterfactual(src, target={"assay": "assay1"}, key_added="to_assay1")
    x_real = np.asarray(real.X.toarray() if hasattr(real.X, "toarray") else real.X)
    x_src = np.asarray(src.X.toarray() if hasattr(src.X, "toarray") else src.X)

    def r2(pred: np.ndarray, truth: np.ndarray) -> float:
        return float(1 - ((truth - pred) ** 2).sum() / ((truth - truth.mean()) ** 2).sum())

    truth = x_real.mean(0)
    report["counterfactual"] = {
        "n_source_cells": int(src.n_obs),
        "r2_means_counterfactual": r2(src.layers["to_assay1"].mean(0), truth),
        "r2_means_no_change": r2(x_src.mean(0), truth),
        "final_train_loss": float(model.history["train_loss"].iloc[-1, 0]),
    }
    model.contributions(adata, key_added="contributions")
    report["counterfactual"]["l2_per_head"] = {
        k: float(v) for k, v in adata.uns["contributions"]["l2_field"].items()
    }
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].scatter(truth, src.layers["to_assay1"].mean(0), s=8, label="counterfactual")
    axes[0].scatter(truth, x_src.mean(0), s=8, alpha=0.5, label="no change")
    axes[0].plot([truth.min(), truth.max()], [truth.min(), truth.max()], "k--", lw=0.8)
    axes[0].set_xlabel("real assay1 mean")
    axes[0].set_ylabel("predicted mean")
    axes[0].legend(frameon=False, fontsize=8)
    sp.pl.context_contributions(adata, key="contributions", by="category", ax=axes[1])
    sp.pl.context_contributions(adata, key="contributions", by="epoch", ax=axes[2])
    fig.tight_layout()
    fig.savefig(out_dir / "counterfactual.png", dpi=110)
    plt.close(fig)
    report["counterfactual"]["seconds"] = round(time.perf_counter() - t0, 1)
