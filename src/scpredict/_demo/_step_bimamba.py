"""Demo step: BiMambaPredictor on a small synthetic screen, an unseen combination, and its training history."""

from __future__ import annotations

from pathlib import Path

ORDER = 50


def run(out_dir: Path, report: dict) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    import scpredict as sp

    adata = sp.datasets.synthetic_perturbation(
        n_cells=400, n_genes=40, n_perturbations=5, n_combinations=4, interaction_strength=0.2, seed=0
    )
    sp.pp.split_combinations(adata, test_fraction=0.5, seed=0)
    is_test = (adata.obs["split"].astype(str) == "test").to_numpy()
    train = adata[~is_test].copy()
    sp.models.BiMambaPredictor.setup_anndata(train, perturbation_key="perturbation")
    sp.pp.pathway_features(train, n_features=8, max_epochs=20)
    model = sp.models.BiMambaPredictor(
        train, d_model=16, n_layers=1, gene_identity_dim=8, position_dim=8, n_frequencies=4, cond_dim=16
    )
    model.train(
        max_epochs=30, early_stopping=False, progress_bar="none", logger=None, enable_checkpointing=False
    )
    ax = sp.pl.training_history(model)
    fig = ax.figure if hasattr(ax, "figure") else ax
    fig.savefig(out_dir / "bimamba_history.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    held = sorted(set(adata.obs.loc[is_test, "perturbation"].astype(str)))
    x = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X)
    lab = adata.obs["perturbation"].astype(str).to_numpy()
    true = np.stack([x[lab == p].mean(0) for p in held])
    ctrl = x[lab == "control"].mean(0)
    pred = model.get_perturbation_profiles(held).X
    report["bimamba_held_out_combinations"] = held
    report["bimamba_pearson_delta"] = round(float(np.mean(sp.metrics.pearson_delta(pred, true, ctrl))), 4)
    report["bimamba_final_validation_r2"] = round(float(model.history["validation_r2"].iloc[-1, 0]), 4)
