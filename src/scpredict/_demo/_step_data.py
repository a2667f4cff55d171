"""Demo step: data contract and preprocessing on pbmc68k_reduced and a synthetic screen."""

from __future__ import annotations

from pathlib import Path

ORDER = 0


def run(out_dir: Path, report: dict) -> None:
    import matplotlib.pyplot as plt
    import scanpy as sc

    import scpredict as sp

    pbmc = sc.datasets.pbmc68k_reduced()
    summary = sp.pp.check_input(pbmc, scale="any")
    report["pbmc68k_reduced"] = {"n_obs": pbmc.n_obs, "n_vars": pbmc.n_vars, "max": summary["max"]}
    fig, ax = plt.subplots(figsize=(4.5, 4))
    sc.pl.umap(pbmc, color="bulk_labels", ax=ax, show=False, legend_loc="on data", legend_fontsize=6)
    fig.savefig(out_dir / "pbmc68k_umap.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    screen = sp.datasets.synthetic_perturbation(n_cells=1500, n_genes=200, n_cell_lines=2, seed=0)
    sp.pp.check_input(screen, scale="log1p")
    sp.pp.perturbation_index(screen)
    sp.pp.split_combinations(screen)
    delta = sp.pp.delta_to_control(screen, covariate_key="cell_line")
    report["synthetic_screen"] = {
        "n_obs": screen.n_obs,
        "n_conditions": int(screen.obs["perturbation"].nunique()),
        "held_out_combinations": list(screen.uns["split"]["test"]),
        "n_delta_profiles": int(delta.n_obs),
    }
    screen.write_h5ad(out_dir / "synthetic_screen.h5ad")
